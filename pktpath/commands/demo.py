"""`run.py demo`: the embedded default. Lab up -> trace -> traffic with faults -> report -> lab down.

The traffic runs as the traced COMMAND (`python -m pktpath.commands.demo --traffic`), exactly as a user's
`run.py -c configs/lab.yaml -- COMMAND` would, so the demo exercises the real main path.
"""
import argparse
import os
import sys

from pktpath.lab import overlay
from pktpath.lab import sender
from pktpath.commands import trace
from pktpath.config import cmdline_number
from pktpath.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_CONFIG = os.path.join(ROOT, "configs", "lab.yaml")

# (fault or None, first ID, count): what each phase of the demo traffic does
PHASES = (
    (None, 1, 4),                 # healthy overlay: delivered
    ("iptables-drop", 5, 4),      # odd IDs dropped by nftables in the receiving container
    ("no-listener", 9, 2),        # nobody listens on the port: NO_SOCKET
    ("vni-mismatch", 11, 2),      # receiving host has another VNI: dropped at VXLAN decap
)


def add_arguments(p):
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--json", metavar="FILE", help="also write per-packet verdicts as JSON Lines")
    p.add_argument("--record", metavar="FILE", help="also write the raw events")
    p.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    p.add_argument("--timeline", type=cmdline_number("timeline", lo=0, integer=True), default=1, metavar="N",
                   help="show the timeline of the first N packets (default 1)")
    p.add_argument("--traffic", action="store_true", help=argparse.SUPPRESS)
    overlay.add_shape_arguments(p)


def traffic():
    """Send the demo batches, one fault at a time (runs inside the trace)."""
    try:
        for fault, start, count in PHASES:
            overlay.clear_faults()
            if fault:
                overlay.apply_fault(fault)
            print("pktpath demo: IDs %d-%d %s" % (start, start + count - 1,
                                                  "with fault " + fault if fault else "healthy"),
                  file=sys.stderr)
            sender.send(overlay.addresses()["dip"], overlay.PORT, count=count, start_id=start,
                        rate=200, netns=overlay.SENDER_NS)
    finally:
        overlay.clear_faults()
    return 0


def run(args):
    if args.traffic:
        return traffic()
    if os.geteuid() != 0:
        raise UserError("the demo builds network namespaces and loads BPF: run it as root "
                        "(sudo make demo)")
    sh = {"underlay": args.underlay, "overlay": args.overlay, "tunnel": args.tunnel}
    print("pktpath demo: building the two-host %s lab, %s over %s (%s)"
          % ("Geneve" if args.tunnel == "geneve" else "VXLAN", args.overlay, args.underlay,
             ", ".join(overlay.LAB_NS)), file=sys.stderr)
    overlay.up(**sh)
    try:
        parser = argparse.ArgumentParser()
        trace.add_arguments(parser)
        targv = ["-c", LAB_CONFIG, "--timeline", str(args.timeline)] + overlay.trace_args(sh)
        targv += ["--json", args.json] if args.json else []
        targv += ["--record", args.record] if args.record else []
        targv += ["--html", args.html] if args.html else []
        targs = parser.parse_args(targv)
        targs.command = [sys.executable, "-m", "pktpath.commands.demo", "--traffic"]
        os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        return trace.run(targs)
    finally:
        if args.keep:
            print("pktpath demo: lab kept; remove it with `./run.py lab down`", file=sys.stderr)
        else:
            overlay.down()


if __name__ == "__main__":
    from pktpath.commands.cli import main
    sys.exit(main(["demo"] + sys.argv[1:]))
