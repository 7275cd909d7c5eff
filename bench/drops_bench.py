#!/usr/bin/env python3
"""Cost of `run.py drops` under a flood of drops, against no tracer and against a hand-written
bpftrace counter on skb:kfree_skb (`@[args->location, args->reason] = count()`).

The lab with the no-listener fault: every datagram the senders push from pp-ctrA is dropped in
pp-ctrB (NO_SOCKET). Configurations, alternated in one run as a, d, a, t, a, d, a, t, ..., a
(each monitored measurement is compared with the untraced ones just before and after it, as
bench/bench.py does):
  a) nothing attached
  d) `run.py drops` (every drop counted by location/reason/netns and by flow, details limited)
  t) bpftrace counting drops by location and reason
Reports pps and the paired ratios d/a, t/a (medians over the rounds), and d/t.

Usage: sudo python3 bench/drops_bench.py [--seconds S] [--rounds N] [--senders K] [--json]
(run it through /work/tools/roottest.sh on shared machines: it uses the lab)
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench  # noqa: E402  (the lab load generator)
from pktpath.lab import overlay  # noqa: E402

RUN = [sys.executable, os.path.join(ROOT, "run.py")]
BPFTRACE = "tracepoint:skb:kfree_skb { @[args->location, args->reason] = count(); }"


def ensure_bpftrace():
    if shutil.which("bpftrace"):
        return
    subprocess.run(["apt-get", "install", "-y", "-q", "bpftrace"], check=True,
                   stdout=subprocess.DEVNULL)


def start_drops(tmp):
    ready = os.path.join(tmp, "ready")
    if os.path.exists(ready):
        os.unlink(ready)
    proc = subprocess.Popen(RUN + ["drops", "-q", "--interval", "3600", "--ready-file", ready],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not os.path.exists(ready):
        if proc.poll() is not None:
            raise SystemExit("drops failed: %s" % proc.stderr.read().strip())
        time.sleep(0.01)
    return proc


def start_bpftrace(_tmp):
    proc = subprocess.Popen(["bpftrace", "-e", BPFTRACE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()      # "Attaching 1 probe..."
    if "Attaching" not in line:
        raise SystemExit("bpftrace failed: %s %s" % (line, proc.stderr.read()))
    time.sleep(0.5)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ensure_bpftrace()
    overlay.up()
    overlay.apply_fault("no-listener")
    base = 1
    a, ratios = [], {"d": [], "t": []}
    pps = {"d": [], "t": []}
    starts = {"d": start_drops, "t": start_bpftrace}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def untraced():
                nonlocal base
                a.append(bench.load(args.seconds, args.senders, base))
                base = bench.next_base(base, args.senders)
            untraced()
            for i in range(args.rounds):
                for key in ("d", "t"):
                    proc = starts[key](tmp)
                    try:
                        v = bench.load(args.seconds, args.senders, base)
                        base = bench.next_base(base, args.senders)
                    finally:
                        stop(proc)
                    before = a[-1]
                    untraced()
                    pps[key].append(v)
                    ratios[key].append(v / ((before + a[-1]) / 2))
    finally:
        overlay.clear_faults()
    res = {"untraced_pps": statistics.median(a),
           "drops_pps": statistics.median(pps["d"]),
           "bpftrace_pps": statistics.median(pps["t"]),
           "drops_vs_untraced": statistics.median(ratios["d"]),
           "bpftrace_vs_untraced": statistics.median(ratios["t"]),
           "rounds": args.rounds, "seconds": args.seconds, "senders": args.senders}
    res["drops_vs_bpftrace"] = res["drops_vs_untraced"] / res["bpftrace_vs_untraced"]
    if args.json:
        print(json.dumps(res))
        return
    print("all-dropped flood, %d senders, %d rounds of %gs (paired medians)"
          % (args.senders, args.rounds, args.seconds))
    print("  untraced          %10.0f pps" % res["untraced_pps"])
    print("  run.py drops      %10.0f pps  %.3fx of untraced" % (res["drops_pps"],
                                                               res["drops_vs_untraced"]))
    print("  bpftrace counter  %10.0f pps  %.3fx of untraced" % (res["bpftrace_pps"],
                                                               res["bpftrace_vs_untraced"]))
    print("  drops / bpftrace  %.3f" % res["drops_vs_bpftrace"])


if __name__ == "__main__":
    main()
