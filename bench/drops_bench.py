#!/usr/bin/env python3
"""Cost of `run.py drops` under a flood of drops, against no tracer and against a hand-written
bpftrace counter on skb:kfree_skb (`@[args->location, args->reason] = count()`).

The lab with the no-listener fault: every datagram the senders push from pp-ctrA is dropped in
pp-ctrB (NO_SOCKET). Configurations, alternated in one run as a, d, a, t, a, t, a, d, a, ...
(the order of d and t swaps every round; each monitored measurement is paired with the untraced
ones just before and after it, as bench/bench.py does, so that the load other processes put on
a shared machine drifts out of the ratio as far as it can):
  a) nothing attached
  d) `run.py drops` (every drop counted by location/reason/netns and by flow, details limited)
  t) bpftrace counting drops by location and reason
Reports pps and the paired ratios d/a, t/a and d/t (d/a over t/a of the same round): medians over
the rounds with a 90% bootstrap interval of the median (bench.median_ci), and every round's.

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
            # warm-up, not counted: the first load after the lab is built runs slow (measured:
            # 32k pps, then 100-180k)
            bench.load(1.0, args.senders, base)
            base = bench.next_base(base, args.senders)
            untraced()
            for i in range(args.rounds):
                for key in (("d", "t") if i % 2 == 0 else ("t", "d")):
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
    med = statistics.median
    ratios["dt"] = [d / t for d, t in zip(ratios["d"], ratios["t"])]
    res = {"untraced_pps": med(a),
           "drops_pps": med(pps["d"]),
           "bpftrace_pps": med(pps["t"]),
           "rounds": args.rounds, "seconds": args.seconds, "senders": args.senders,
           "untraced_all_pps": [round(x) for x in a]}
    for key, name in (("d", "drops_vs_untraced"), ("t", "bpftrace_vs_untraced"),
                      ("dt", "drops_vs_bpftrace")):
        res[name] = med(ratios[key])
        res[name + "_ci90"] = [round(x, 3) for x in bench.median_ci(ratios[key], med)]
        res[name + "_all"] = [round(x, 3) for x in ratios[key]]
    if args.json:
        print(json.dumps(res))
        return
    print("all-dropped flood, %d senders, %d rounds of %gs (paired ratios: median [90%% interval "
          "of the median] and each round's)" % (args.senders, args.rounds, args.seconds))
    print("  untraced          %10.0f pps  (rounds: %s)" % (
        res["untraced_pps"], " ".join(str(x) for x in res["untraced_all_pps"])))
    for label, pkey, name in (("run.py drops", "drops_pps", "drops_vs_untraced"),
                              ("bpftrace counter", "bpftrace_pps", "bpftrace_vs_untraced")):
        print("  %-16s  %10.0f pps  %.3fx of untraced [%.3f, %.3f]  (rounds: %s)" % (
            label, res[pkey], res[name], res[name + "_ci90"][0], res[name + "_ci90"][1],
            " ".join("%.3f" % x for x in res[name + "_all"])))
    print("  drops / bpftrace  %.3f [%.3f, %.3f]  (rounds: %s)" % (
        res["drops_vs_bpftrace"], res["drops_vs_bpftrace_ci90"][0],
        res["drops_vs_bpftrace_ci90"][1], " ".join("%.3f" % x for x in res["drops_vs_bpftrace_all"])))


if __name__ == "__main__":
    main()
