#!/usr/bin/env python3
"""Cost per hook, measured with bpf_stats: ns per run of each pktpath program and ns per sent
datagram, this checkout's tracer against another commit's (--baseline), alternated.

    sudo /usr/bin/python3 bench/hookcost.py --baseline DIR [--baseline DIR2] [--pairs 3] [--seconds 3]
                                            [--rate 20000] [--configs c,b,floor] [--json]
                                            [--alt-args '--id-from headers']

(root, builds the lab; on the shared development machines under the lab lock:
/work/tools/roottest.sh /usr/bin/python3 bench/hookcost.py --baseline /work/base-f93)

Throughput ratios (bench/bench.py) on a shared 2-CPU machine move by several percent between
runs; the time the kernel spends in each BPF program does not depend on what else runs. With
kernel.bpf_stats_enabled=1 the kernel keeps each program's run count and run time; this bench
sends the same traffic (one sender at a fixed --rate, so every configuration sees the same
packets) under each tracer and reads pktpath's per-hook programs (pp_h<i>) before and after.
Configurations:
  c      every packet matching (configs/lab.yaml, default hooks)
  b      the tracer attached, traffic not matching its filter (other UDP port)
  floor  an empty program on each default hook (no tracer): the bpf_stats floor
--alt-args ARGS also measures this checkout's tracer with ARGS added ("alt": e.g. header keys
against payload IDs in one run). Each program's size (bpftool's bytes_xlated / 8) is in the
JSON (`insns`). Order per round: each baseline's c then this checkout's c, the same for b, then floor, so drift
hits all alike. Each figure is the median over the rounds. bpf_stats itself adds two clock
reads per run (~20-40 ns: the floor's ns/run), to every configuration alike. The tracer's
user-space CPU per datagram is shown too ("user ns/pkt": the Python consumer's share, which
competes with the lab for the same 2 CPUs and is not in bpf_stats). Between runs on the shared
machine a configuration's total moves by ~5-15%: compare columns of one run.
"""
import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

from common import B, ROOT, med, prog_ids, runs_ns, set_stats
from pktpath.lab import overlay, sender
from pktpath.kernel import netns


def _send(args):
    start_id, count, rate = args
    netns.enter(overlay.SENDER_NS)
    return sender.send(overlay.DST_IP, overlay.PORT, count=count, start_id=start_id, rate=rate)


def send_fixed(seconds, rate, base):
    """One sender process at `rate` datagrams/s for `seconds`: (sent, elapsed)."""
    t0 = time.monotonic()
    with multiprocessing.Pool(1) as pool:
        n = pool.apply(_send, ((base, int(seconds * rate), rate),))
    return n, time.monotonic() - t0


def hook_names(checkout):
    """The default hook list of `checkout` (its tracer's pp_h<i> runs on the i-th)."""
    code = ("try:\n from pktpath.collect import hooks\nexcept ImportError:\n"
            " from pktpath import hooks\n"
            "print(' '.join(e['name'] for e in hooks.select(None, hooks.load_catalog())))")
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def measure(start, stop, names, seconds, rate, base, pid=None):
    """Per hook {runs, ns} of the programs `start()` loads, the datagrams sent, and the CPU
    time of process `pid(handle)` (the tracer's user space) meanwhile."""
    before = set(prog_ids())
    handle = start()
    try:
        time.sleep(0.2)
        snap0 = {i: p for i, p in prog_ids().items() if i not in before}
        cpu0 = B.cpu_s(pid(handle)) if pid else 0
        sent, elapsed = send_fixed(seconds, rate, base)
        time.sleep(0.3)   # the last datagrams' delivery
        cpu = B.cpu_s(pid(handle)) - cpu0 if pid else 0
        snap1 = {i: p for i, p in prog_ids().items() if i in snap0}
    finally:
        stop(handle)
    per = {}
    empties = sorted(i for i, p in snap1.items() if p.get("name") == "pp_empty")
    for i, p in snap1.items():
        name = p.get("name", "")
        m = re.match(r"pp_h(\d+)$", name)
        if m:
            hook = names[int(m.group(1))]
        elif name == "pp_empty":
            hook = names[empties.index(i)]
        else:
            continue
        d = per.setdefault(hook, {"runs": 0, "ns": 0, "insns": p.get("bytes_xlated", 0) // 8})
        runs, ns = runs_ns(p, snap0[i])
        d["runs"] += runs
        d["ns"] += ns
    return {"sent": sent, "pps": sent / elapsed, "hooks": per, "user_ns": cpu * 1e9 / sent}


def summarize(ms, names):
    """Median over measurements: per hook ns/run, runs/pkt, ns/pkt; and the total ns/pkt."""
    out = {"hooks": {}, "pps": round(med([m["pps"] for m in ms]))}
    for h in names:
        xs = [m for m in ms if h in m["hooks"] and m["hooks"][h]["runs"]]
        if not xs:
            continue
        out["hooks"][h] = {
            "ns_per_run": round(med([m["hooks"][h]["ns"] / m["hooks"][h]["runs"] for m in xs]), 1),
            "runs_per_pkt": round(med([m["hooks"][h]["runs"] / m["sent"] for m in xs]), 2),
            "ns_per_pkt": round(med([m["hooks"][h]["ns"] / m["sent"] for m in xs]), 1),
            "insns": xs[0]["hooks"][h].get("insns", 0)}   # the program's size (xlated)
    out["ns_per_pkt"] = round(med([sum(d["ns"] for d in m["hooks"].values()) / m["sent"]
                                   for m in ms]), 1)
    out["user_ns_per_pkt"] = round(med([m["user_ns"] for m in ms]))
    out["ns_per_pkt_all"] = [round(sum(d["ns"] for d in m["hooks"].values()) / m["sent"], 1)
                             for m in ms]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="DIR", action="append", default=[],
                    help="a checkout of another commit (repeatable: each is measured, labelled "
                         "by its directory's name, in the order given, before this checkout)")
    ap.add_argument("--pairs", type=int, default=3, help="rounds of (old, new) per config")
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic per measurement")
    ap.add_argument("--rate", type=int, default=20000, help="datagrams per second (one sender)")
    ap.add_argument("--configs", default="c,b,floor", help="of c, b, floor")
    ap.add_argument("--tracer-args", default="", help="extra tracer arguments (both tracers)")
    ap.add_argument("--alt-args", metavar="ARGS", default="",
                    help="also measure this checkout's tracer with ARGS added (labelled alt), "
                         "alternated with it: e.g. '--id-from headers' against payload IDs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("hookcost: run as root")
    configs = [c for c in args.configs.split(",") if c]
    extra = args.tracer_args.split()
    sides = [(os.path.basename(os.path.abspath(d)), os.path.abspath(d), extra)
             for d in args.baseline]
    sides.append(("new", ROOT, extra))
    if args.alt_args:
        sides.append(("alt", ROOT, extra + args.alt_args.split()))

    def flags(c, more):
        return more if c == "c" else ["--udp-port", str(overlay.PORT + 999)] + more
    names = {label: hook_names(d) for label, d, _ in sides}
    runs = {}
    base = 1
    overlay.up()
    set_stats(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def tracer(checkout, fl):
                return lambda: B.start_tracer(fl, tmp, checkout)

            def stop_tracer(h):
                proc, _startup, stats = h
                B.stop_tracer(proc, stats)

            # one unmeasured start each: the first start compiles
            for label, d, more in sides:
                for c in configs:
                    if c != "floor":
                        stop_tracer(tracer(d, flags(c, more))())
            for _ in range(args.pairs):
                for c in configs:
                    if c == "floor":
                        m = measure(lambda: B.attach_empty(None),
                                    lambda fds: [os.close(fd) for fd in fds],
                                    names["new"], args.seconds, args.rate, base)
                        runs.setdefault(("floor", "-"), []).append(m)
                        base = B.next_base(base, 1)
                        continue
                    for label, d, more in sides:
                        m = measure(tracer(d, flags(c, more)), stop_tracer, names[label],
                                    args.seconds, args.rate, base, lambda h: h[0].pid)
                        runs.setdefault((c, label), []).append(m)
                        base = B.next_base(base, 1)
    finally:
        set_stats(0)
        if not args.keep_lab:
            overlay.down()
    allnames = names["new"]
    out = {"rate": args.rate, "seconds": args.seconds, "pairs": args.pairs,
           "baselines": {label: d for label, d, _ in sides if label not in ("new", "alt")},
           "alt_args": args.alt_args,
           "results": {"%s/%s" % k: summarize(v, allnames) for k, v in runs.items()}}
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out, allnames)
    return 0


def print_table(out, names):
    print("hookcost: %d pairs x %.0f s at %d pps, bpf_stats (median over pairs)" % (
        out["pairs"], out["seconds"], out["rate"]))
    print("%-12s %8s %6s %6s  %s" % ("CONFIG", "ns/pkt", "runs", "user", "  ".join(
        "%-22s" % h for h in names)))
    print("%-12s %8s %6s %6s  %s" % ("", "(BPF)", "/pkt", "ns/pkt", "  ".join(
        "%-22s" % "ns/run runs/pkt ns/pkt" for _ in names)))
    for k, r in out["results"].items():
        runs = sum(h["runs_per_pkt"] for h in r["hooks"].values())
        print("%-12s %8.1f %6.2f %6d  %s   all %s" % (k, r["ns_per_pkt"], runs,
                                                  r["user_ns_per_pkt"], "  ".join(
            "%-22s" % ("%6.1f %4.2f %7.1f" % (r["hooks"][h]["ns_per_run"],
                                               r["hooks"][h]["runs_per_pkt"],
                                               r["hooks"][h]["ns_per_pkt"])
                       if h in r["hooks"] else "-") for h in names), r["ns_per_pkt_all"]))


if __name__ == "__main__":
    sys.exit(main())
