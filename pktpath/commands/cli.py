"""Command line: `run.py [-c CONFIG] [options] [-- COMMAND ...]` traces; subcommands do the rest.

Every UserError (and every other expected failure) becomes one line on stderr and exit status 2.
"""
import argparse
import importlib
import signal
import sys

from pktpath.errors import UserError

# subcommand -> module; each module has add_arguments(parser) and run(args) -> int, or is a
# PASSTHROUGH module whose run(args) gets every argument as args.args
SUBCOMMANDS = {
    "report": ("pktpath.commands.report", "rebuild the report from a recording (no root needed)"),
    "drops": ("pktpath.commands.drops", "machine-wide drop monitor: every drop's flow, reason "
              "and location, exact counts"),
    "send": ("pktpath.lab.sender", "send UDP datagrams stamped with packet IDs"),
    "lab": ("pktpath.lab.overlay", "build/remove the built-in two-host VXLAN lab"),
    "demo": ("pktpath.commands.demo", "lab up -> trace -> send with a fault -> report -> lab down"),
    "probes": ("pktpath.commands.probes", "show which hooks attach on this kernel and why"),
    "bench": ("pktpath.commands.bench", "overhead benchmark on the lab"),
}

EPILOG = """examples:
  sudo ./run.py demo                          # lab + trace + a real drop, in one minute
  sudo ./run.py -c configs/vxlan.yaml         # trace until Ctrl-C, then report
  sudo ./run.py -c configs/lab.yaml --duration 10 --json out.jsonl
  sudo ./run.py -c configs/lab.yaml -- ./run.py send --netns pp-ctrA --dst 198.51.100.2 --port 5000
  ./run.py report rec.jsonl                   # re-analyze a recording without root
  sudo ./run.py drops --proto tcp             # every drop: its flow, reason and location
subcommands: """ + ", ".join(SUBCOMMANDS)


def _fail(msg):
    print("pktpath: error: %s" % msg, file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and exit 2 (argparse's default is 2 too)."""

    def error(self, message):
        self.exit(2, "pktpath: error: %s (see --help)\n" % message)


def _terminated(signum, _frame):
    raise KeyboardInterrupt  # SIGTERM before tracing starts: the same clean exit as Ctrl-C


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            modname, helptext = SUBCOMMANDS[argv[0]]
            mod = importlib.import_module(modname)
            if getattr(mod, "PASSTHROUGH", False):
                # it hands every argument (--help too) to a script of its own
                return mod.run(argparse.Namespace(args=argv[1:]))
            parser = _Parser(prog="pktpath %s" % argv[0], description=helptext)
            mod.add_arguments(parser)
            args = parser.parse_args(argv[1:])
            return mod.run(args)
        from pktpath.commands import trace
        parser = _Parser(prog="pktpath", description="Per-packet path tracer for UDP/VXLAN overlays.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        command = []
        if "--" in argv:
            i = argv.index("--")
            argv, command = argv[:i], argv[i + 1:]
        trace.add_arguments(parser)
        args = parser.parse_args(argv)
        args.command = command
        if not argv and not command:
            parser.print_help()
            return 0
        return trace.run(args)
    except UserError as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("pktpath: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
