#!/usr/bin/env python3
"""The floor under pktpath's overhead: what attaching BPF programs to the default hooks costs
before they do any work, measured like bench.py (lab, alternating, ratios in one run).

Configurations, alternated round by round:
  a) no program attached
  e) an empty program on each default tracepoint hook
  r) a program doing one bpf_probe_read_kernel of the skb (pktpath's non-matching path does
     two: the skb's header offsets, then the packet's header bytes)
So e/a is the best any raw-tracepoint tracer on these hooks can do here, and r/a the best one
that reads anything from each skb. The machine drifts by a few percent between rounds: run
several rounds and compare with bench.py's figures from the same session.

Usage: sudo python3 bench/floor.py [--seconds S] [--rounds N] [--senders K] [--json]
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402
from pktpath import hooks, lab, tracer  # noqa: E402

BODIES = {
    "e": "return 0;",
    "r": "u64 x = 0; bpf_probe_read_kernel(&x, sizeof(x), (void *)ctx->args[0]); "
         "return x == 1;",
}


def program(tps, body):
    return "#include <uapi/linux/ptrace.h>\n" + "".join(
        "int f%d(struct bpf_raw_tracepoint_args *ctx) { %s }\n" % (i, body)
        for i in range(len(tps)))


def default_tracepoints():
    return [e["target"].split(":", 1)[1] for e in hooks.select(None, hooks.load_catalog())
            if e["method"] == "raw_tracepoint"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--hooks", help="comma-separated tracepoints (default: pktpath's default "
                                    "tracepoint hooks)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("floor: run as root")
    bcc = tracer.import_bcc()
    hdr = tracer.kernel_headers()
    if hdr:
        os.environ["BCC_KERNEL_SOURCE"] = hdr
    tps = args.hooks.split(",") if args.hooks else default_tracepoints()
    lab.up()
    res = {"a": [], "e": [], "r": []}
    try:
        for r in range(args.rounds):
            res["a"].append(bench.load(args.seconds, args.senders, 1))
            for key, body in BODIES.items():
                b = bcc.BPF(text=program(tps, body))
                try:
                    for i, tp in enumerate(tps):
                        b.attach_raw_tracepoint(tp=tp, fn_name="f%d" % i)
                    res[key].append(bench.load(args.seconds, args.senders, 1))
                finally:
                    b.cleanup()
    finally:
        lab.down()
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    out = {"hooks": tps, "a_pps": med["a"], "e_pps": med["e"], "r_pps": med["r"],
           "e_over_a": med["e"] / med["a"], "r_over_a": med["r"] / med["a"],
           "rounds": args.rounds, "seconds": args.seconds, "senders": args.senders}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print("%-10s %s" % (k, "%.3f" % v if isinstance(v, float) else v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
