#!/usr/bin/env python3
"""Cost against the tools users write by hand: pktpath vs Debian's bpftrace and perf, one run.

    sudo /usr/bin/python3 bench/tools.py [--rounds 5] [--seconds 3] [--only c,bt_count] [--json]

(~10 min with the defaults: 9 configurations x 5 rounds x 3 s, each paired with untraced runs,
plus the tools' start-ups and a bpf_stats pass. On the shared development machines run it under
the lab lock: /work/tools/roottest.sh /usr/bin/python3 bench/tools.py)

(root, builds the lab; installs Debian `bpftrace` and `linux-perf` with apt-get if `bpftrace` or
`perf` is missing, running `apt-get update` once first if the package lists are missing.)

Every configuration is a throughput measurement through the lab, paired with the untraced
measurements (a) right before and after it, as in bench/bench.py: a, X, a, Y, a, ...; each
figure is the median of the paired ratios X/a over the rounds with a 90% bootstrap interval.

Healthy lab (every datagram delivered):
  c         pktpath following every packet (configs/lab.yaml, default hooks)
  bt_count  bpftrace count() on the same tracepoints (the default hook set)
  perf_rec  perf record -a of the same five tracepoints
  b         pktpath attached, traffic not matching its filter (other UDP port)
  floor     an empty program on each of the same hooks (no tracer)
Fault `no-listener` (every datagram dropped, NO_SOCKET; the a runs of this phase too):
  d         pktpath --drops all (following every packet, and counting every drop)
  dk        pktpath --hooks kfree_skb --drops all (counts every drop, and follows each dropped
            datagram at kfree_skb: they match its filter)
  dm        pktpath --hooks kfree_skb --drops all --udp-port <other>: the drop monitor alone
            (counts every drop; no dropped datagram matches its filter)
  bt_drop   bpftrace @[args->location, args->reason] = count() on skb:kfree_skb

Experiment copies of the tracer (bench/costsplit.py): `--also NAME=DIR` measures c with the
tracer of checkout DIR (compared with bt_count), `--also-b NAME=DIR` measures b with it
(compared with the floor), alternated with the others in each round.

Targets: c >= bt_count, d >= bt_drop (costs no more than bpftrace), b >= floor - 0.01.
Then a short pass with kernel.bpf_stats_enabled=1 (not during the ratio rounds: the stats cost
two clock reads per run) measures each tool's BPF programs: runs, ns per run, BPF ns per sent
datagram, and the tool's user-space CPU.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from common import B, ROOT, med, prog_ids, runs_ns, set_stats
from pktpath.collect import hooks
from pktpath.lab import overlay

# the tracepoints of pktpath's default (UDP) hook set: bpftrace and perf count on the same hooks
TRACEPOINTS = [e["target"] for e in hooks.select(None, hooks.load_catalog())]
BT_COUNT = ", ".join("tracepoint:" + t for t in TRACEPOINTS) + " { @[probe] = count(); }"
BT_DROP = "tracepoint:skb:kfree_skb { @[args->location, args->reason] = count(); }"
TRACEFS = "/sys/kernel/tracing"


# -- the tools ------------------------------------------------------------------------------

def ensure_tools():
    """Install Debian's bpftrace and linux-perf if missing (idempotent). Returns versions."""
    missing = [p for p, exe in (("bpftrace", "bpftrace"), ("linux-perf", "perf"))
               if not shutil.which(exe)]
    if missing:
        lists = "/var/lib/apt/lists"
        if not any(f.endswith("_Packages") or "_Packages." in f for f in os.listdir(lists)):
            subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y"] + missing, check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ,
                                                           DEBIAN_FRONTEND="noninteractive"))
    if not os.path.exists(os.path.join(TRACEFS, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=False)
    for tp in TRACEPOINTS:
        if not os.path.exists(os.path.join(TRACEFS, "events", *tp.split(":"))):
            raise SystemExit("tools: tracepoint %s not found on this kernel" % tp)
    ver = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip()  # noqa
    return {"bpftrace": ver(["bpftrace", "--version"]), "perf": ver(["perf", "--version"])}


class Tool:
    """A running tool: `stop()` returns a small dict of what it saw."""

    def __init__(self, proc, stop, pids=()):
        self.proc, self._stop, self.pids = proc, stop, pids

    def stop(self):
        return self._stop()


def start_pktpath(extra, tmp, checkout=ROOT):
    proc, startup, stats = B.start_tracer(extra, tmp, checkout)

    def stop():
        st = B.stop_tracer(proc, stats)
        return {"startup_s": round(startup, 2), "events": st.get("events"), "lost": st.get("lost")}
    return Tool(proc, stop, [proc.pid])


def start_bpftrace(prog, tmp):
    out = os.path.join(tmp, "bpftrace.out")
    t0 = time.monotonic()
    f = open(out, "w")
    proc = subprocess.Popen(["bpftrace", "-e", prog], stdout=f, stderr=subprocess.STDOUT,
                            text=True)
    # bpftrace 0.17 prints a harmless RLIMIT_MEMLOCK error first, then "Attaching N probes..."
    # before attaching, and nothing once attached: wait for the line, then for its perf/link fds
    while True:
        with open(out) as g:
            text = g.read()
        if "Attaching" in text:
            break
        if proc.poll() is not None or time.monotonic() - t0 > 60:
            raise SystemExit("bpftrace failed: %s" % text.strip())
        time.sleep(0.02)
    n = int(re.search(r"Attaching (\d+) probe", text).group(1))
    _wait_fds(proc, n, ("perf_event", "bpf_link"), 30)
    time.sleep(0.2)
    startup = time.monotonic() - t0

    def stop():
        text = _interrupt(proc, f, 60)
        counts = [int(x) for x in re.findall(r"^@\[.*\]: (\d+)$", text, re.M)]
        return {"startup_s": round(startup, 2), "events": sum(counts)}
    return Tool(proc, stop, [proc.pid])


def _interrupt(proc, out, timeout):
    """Stop tool `proc` with SIGINT, close the file `out` it writes to and return its text."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=timeout)
    out.close()
    with open(out.name) as g:
        return g.read()


def _wait_fds(proc, n, kinds, timeout):
    """Wait until process `proc` holds at least `n` fds whose link names one of `kinds`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("tool exited early (status %s)" % proc.returncode)
        have = 0
        try:
            for fd in os.listdir("/proc/%d/fd" % proc.pid):
                try:
                    if any(k in os.readlink("/proc/%d/fd/%s" % (proc.pid, fd)) for k in kinds):
                        have += 1
                except OSError:
                    pass
        except OSError:
            pass
        if have >= n:
            return
        time.sleep(0.02)
    raise SystemExit("tool did not attach within %d s" % timeout)


def start_perf(tmp):
    data = os.path.join(tmp, "perf.data")
    err = open(os.path.join(tmp, "perf.err"), "w")
    t0 = time.monotonic()
    cmd = ["perf", "record", "-a", "-o", data]
    for tp in TRACEPOINTS:
        cmd += ["-e", tp]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    # one perf_event fd per event per CPU, then the ring buffers: wait for the fds, then a bit
    _wait_fds(proc, len(TRACEPOINTS) * os.cpu_count(), ("perf_event",), 60)
    time.sleep(0.3)
    startup = time.monotonic() - t0

    def stop():
        # perf 6.1 exits with "Thread and evlist pollfd index mismatch" if its control pipe is
        # closed while it records: stop it with SIGINT
        text = _interrupt(proc, err, 120)
        m = re.search(r"\((\d+) samples\)", text)
        lost = re.search(r"lost (\d+) chunks|Lost (\d+) events", text)
        try:
            os.unlink(data)
        except OSError:
            pass
        return {"startup_s": round(startup, 2), "events": int(m.group(1)) if m else None,
                "lost_note": lost.group(0) if lost else None, "status": proc.returncode}
    return Tool(proc, stop, [proc.pid])


def start_floor():
    fds = B.attach_empty(None)

    def stop():
        for fd in fds:
            os.close(fd)
        return {}
    return Tool(None, stop, [])


# -- bpf_stats ------------------------------------------------------------------------------

def hook_names(specs):
    """The hooks of the tracer's plan, in order: pktpath's program pp_h<i> runs on the i-th."""
    return [e["name"] for e in B.hooks.select(specs, B.hooks.load_catalog())]


def label(p, order, names):
    """Which hook a program ran on: pktpath's pp_h<i> by index, the empty programs by load
    order, bpftrace's by name (its program is named after the tracepoint, cut to 15 chars)."""
    name = p.get("name", "?")
    m = re.match(r"pp_h(\d+)$", name)
    if m and int(m.group(1)) < len(names):
        return names[int(m.group(1))]
    if name == "pp_empty" and order < len(names):
        return names[order]
    # program names are cut at 15 characters (BPF_OBJ_NAME_LEN)
    return next((h for h in names if h == name or len(name) >= 15 and h.startswith(name)), name)


def measure_stats(name, start, seconds, senders, base, specs=None):
    """One measurement with the tool `start()` attached: its new BPF programs' run counts and
    times (kernel.bpf_stats_enabled must be on) and its user-space CPU share."""
    before = set(prog_ids())
    tool = start()
    try:
        snap0 = {i: p for i, p in prog_ids().items() if i not in before}
        cpu0 = sum(B.cpu_s(pid) for pid in tool.pids)
        t0 = time.monotonic()
        pps = B.load(seconds, senders, base)
        elapsed = time.monotonic() - t0
        cpu = (sum(B.cpu_s(pid) for pid in tool.pids) - cpu0) / elapsed
        snap1 = {i: p for i, p in prog_ids().items() if i in snap0}
    finally:
        tool.stop()
    sent = pps * elapsed
    progs = []
    names = hook_names(specs)
    for order, (i, p) in enumerate(sorted(snap1.items())):
        runs, ns = runs_ns(p, snap0[i])
        if runs:
            progs.append({"id": i, "name": p.get("name", "?"), "type": p.get("type"),
                          "hook": label(p, order, names),
                          "runs": runs, "ns_per_run": round(ns / runs, 1),
                          "runs_per_pkt": round(runs / sent, 2),
                          "ns_per_pkt": round(ns / sent, 1)})
    progs.sort(key=lambda p: -p["ns_per_pkt"])
    return {"config": name, "pps": round(pps), "tool_cpu": round(cpu, 3),
            "bpf_ns_per_pkt": round(sum(p["ns_per_pkt"] for p in progs), 1),
            "bpf_runs_per_pkt": round(sum(p["runs_per_pkt"] for p in progs), 2),
            "programs": progs}


# -- the run --------------------------------------------------------------------------------

def diff_ci(xs, ys, level=0.90, resamples=2000, seed=2):
    """Bootstrap interval of median(xs) - median(ys)."""
    import random
    rnd = random.Random(seed)
    d = sorted(med([rnd.choice(xs) for _ in xs]) - med([rnd.choice(ys) for _ in ys])
               for _ in range(resamples))
    return d[int((1 - level) / 2 * resamples)], d[min(resamples - 1,
                                                      int((1 + level) / 2 * resamples))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each configuration")
    ap.add_argument("--senders", type=int, default=2, help="sender processes")
    ap.add_argument("--only", default="", help="comma-separated configurations (default all)")
    ap.add_argument("--no-stats", action="store_true", help="skip the bpf_stats pass")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--save", metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--keep-lab", action="store_true")
    ap.add_argument("--also", metavar="NAME=DIR", action="append", default=[],
                    help="also measure c with the tracer of checkout DIR, as configuration NAME "
                         "(repeatable; e.g. an experiment's copy, alternated with the others)")
    ap.add_argument("--also-b", metavar="NAME=DIR", action="append", default=[],
                    help="also measure b (traffic the filter does not match) with the tracer of "
                         "checkout DIR, as configuration NAME, compared with the floor "
                         "(repeatable)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("tools: run as root")
    also = [a.split("=", 1) for a in args.also]
    also_b = [a.split("=", 1) for a in args.also_b]
    if any(len(a) != 2 or not os.path.isdir(a[1]) for a in also + also_b):
        raise SystemExit("tools: --also/--also-b NAME=DIR, DIR a checkout")
    nomatch = ["--udp-port", str(overlay.PORT + 999)]
    t_start = time.monotonic()
    versions = ensure_tools()
    only = set(args.only.split(",")) - {""}
    pick = lambda cs: [c for c in cs if not only or c[0] in only]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        healthy = pick([
            ("c", lambda: start_pktpath([], tmp))] + [
            (name, lambda d=os.path.abspath(d): start_pktpath([], tmp, d)) for name, d in also] + [
            ("bt_count", lambda: start_bpftrace(BT_COUNT, tmp)),
            ("perf_rec", lambda: start_perf(tmp)),
            ("b", lambda: start_pktpath(nomatch, tmp))] + [
            (name, lambda d=os.path.abspath(d): start_pktpath(nomatch, tmp, d))
            for name, d in also_b] + [
            ("floor", start_floor)])
        faulty = pick([
            ("d", lambda: start_pktpath(["--drops", "all"], tmp)),
            ("dk", lambda: start_pktpath(["--hooks", "kfree_skb", "--drops", "all"], tmp)),
            ("dm", lambda: start_pktpath(["--hooks", "kfree_skb", "--drops", "all",
                                          "--udp-port", str(overlay.PORT + 999)], tmp)),
            ("bt_drop", lambda: start_bpftrace(BT_DROP, tmp))])
        paired, pps, seen, a_pps = {}, {}, {}, {"healthy": [], "no-listener": []}
        stats = []
        base = 1
        overlay.up()
        try:
            # start and stop each tool once, unmeasured: pktpath's first start may compile and
            # later ones load the compile from the cache; and a tool that fails, fails now
            for name, start in healthy + faulty:
                start().stop()
            for phase, configs in (("healthy", healthy), ("no-listener", faulty)):
                if not configs:
                    continue
                if phase != "healthy":
                    overlay.apply_fault(phase)

                def untraced():
                    nonlocal base
                    a_pps[phase].append(B.load(args.seconds, args.senders, base))
                    base = B.next_base(base, args.senders)
                untraced()
                for _ in range(args.rounds):
                    for name, start in configs:
                        tool = start()
                        try:
                            cpu0 = sum(B.cpu_s(p) for p in tool.pids)
                            t0 = time.monotonic()
                            pps.setdefault(name, []).append(
                                B.load(args.seconds, args.senders, base))
                            cpu = (sum(B.cpu_s(p) for p in tool.pids) - cpu0) / \
                                (time.monotonic() - t0)
                        finally:
                            info = tool.stop()
                        base = B.next_base(base, args.senders)
                        info["tool_cpu"] = round(cpu, 3)
                        seen.setdefault(name, []).append(info)
                        untraced()
                        before, after = a_pps[phase][-2:]
                        paired.setdefault(name, []).append(pps[name][-1] / ((before + after) / 2))
                if not args.no_stats:
                    set_stats(1)
                    try:
                        for name, start in configs:
                            specs = ["kfree_skb"] if name in ("dk", "dm", "bt_drop") else None
                            stats.append(measure_stats(name, start, args.seconds, args.senders,
                                                       base, specs))
                            base = B.next_base(base, args.senders)
                    finally:
                        set_stats(0)
                if phase != "healthy":
                    overlay.clear_faults()
        finally:
            if not args.keep_lab:
                overlay.down()
    out = {"rounds": args.rounds, "seconds": args.seconds, "senders": args.senders,
           "versions": versions, "a_pps": {k: round(med(v)) for k, v in a_pps.items() if v},
           "ratios": {}, "targets": {}, "bpf_stats": stats}
    for name, xs in paired.items():
        lo, hi = B.median_ci(xs, med)
        out["ratios"][name] = {"median": round(med(xs), 3), "ci90": [round(lo, 3), round(hi, 3)],
                               "all": [round(x, 3) for x in xs],
                               "pps": round(med(pps[name])),
                               "tool_cpu": med([s["tool_cpu"] for s in seen[name]]),
                               "runs": seen[name]}

    def target(key, x, y, margin, text):
        if x in paired and y in paired:
            lo, hi = diff_ci(paired[x], paired[y])
            d = med(paired[x]) - med(paired[y]) + margin
            out["targets"][key] = {"what": text, "diff": round(d, 3),
                                   "diff_ci90": [round(lo + margin, 3), round(hi + margin, 3)],
                                   "met": d >= 0,
                                   "clear": (lo + margin >= 0) if d >= 0 else (hi + margin < 0)}
    target("c_vs_bt_count", "c", "bt_count", 0, "following every packet costs no more than a "
           "bpftrace count() on the same hooks: c - bt_count >= 0")
    target("d_vs_bt_drop", "d", "bt_drop", 0, "--drops all costs no more than a bpftrace "
           "counter on skb:kfree_skb: d - bt_drop >= 0")
    target("dk_vs_bt_drop", "dk", "bt_drop", 0, "--hooks kfree_skb --drops all, dropped "
           "datagrams traced, vs the same bpftrace counter: dk - bt_drop >= 0")
    target("dm_vs_bt_drop", "dm", "bt_drop", 0, "the drop monitor alone (--hooks kfree_skb "
           "--drops all, filter not matching) vs the same counter: dm - bt_drop >= 0")
    target("b_vs_floor", "b", "floor", 0.01, "untraced traffic within 0.01 of the empty-program "
           "floor: b - floor + 0.01 >= 0")
    for name, _d in also_b:
        target(name + "_vs_floor", name, "floor", 0.01, "%s (b with another tracer) within 0.01 "
               "of the empty-program floor: %s - floor + 0.01 >= 0" % (name, name))
    out["extra_cost"] = extra_cost(stats, [name for name, _d in also_b])
    out["elapsed_s"] = round(time.monotonic() - t_start)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(out, f, indent=1)
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    return 0


def extra_cost(stats, b_alsos=()):
    """Per target pair, measured with bpf_stats: BPF ns per sent datagram on each hook, pktpath
    minus the reference, and the tools' user-space CPU (share of one CPU). `b_alsos`: the
    --also-b configurations (compared with the floor; other extra ones with bt_count)."""
    by = {s["config"]: s for s in stats}
    per_hook = lambda s: {p["hook"]: p["ns_per_pkt"] for p in s["programs"]}  # noqa: E731
    out = {}
    alsos = [k for k in by if k not in ("c", "bt_count", "perf_rec", "b", "floor", "d", "dk",
                                        "dm", "bt_drop") and k not in b_alsos]
    for x, y in [("c", "bt_count")] + [(k, "bt_count") for k in alsos] + [("d", "bt_drop"), ("dk", "bt_drop"), ("dm", "bt_drop"),
                 ("b", "floor")] + [(k, "floor") for k in b_alsos]:
        if x in by and y in by:
            hx, hy = per_hook(by[x]), per_hook(by[y])
            out["%s-%s" % (x, y)] = {
                "bpf_ns_per_pkt": round(by[x]["bpf_ns_per_pkt"] - by[y]["bpf_ns_per_pkt"], 1),
                "per_hook_ns_per_pkt": {h: round(hx.get(h, 0) - hy.get(h, 0), 1)
                                        for h in sorted(set(hx) | set(hy), key=lambda h: -abs(
                                            hx.get(h, 0) - hy.get(h, 0)))},
                "tool_cpu": round(by[x]["tool_cpu"] - by[y]["tool_cpu"], 3)}
    return out


def print_table(out):
    print("tools: %d rounds x %.0f s, %d senders, %d s in all; untraced a: %s pps" % (
        out["rounds"], out["seconds"], out["senders"], out["elapsed_s"], out["a_pps"]))
    print("%-9s %7s  %-15s %10s %8s  %s" % ("CONFIG", "X/a", "90% CI", "pps", "tool_cpu",
                                            "paired ratios"))
    for name, r in out["ratios"].items():
        print("%-9s %7.3f  [%.3f, %.3f]  %10d %8.2f  %s" % (
            name, r["median"], r["ci90"][0], r["ci90"][1], r["pps"], r["tool_cpu"],
            " ".join("%.3f" % x for x in r["all"])))
    print()
    for key, t in out["targets"].items():
        print("%-14s %-6s diff %+.3f [%+.3f, %+.3f]%s  %s" % (
            key, "MET" if t["met"] else "MISSED", t["diff"], t["diff_ci90"][0],
            t["diff_ci90"][1], "" if t["clear"] else " (within the interval)", t["what"]))
    if out["bpf_stats"]:
        print("\nbpf_stats (one %.0f s measurement each, kernel.bpf_stats_enabled=1):"
              % out["seconds"])
        for s in out["bpf_stats"]:
            print("  %-9s %8d pps  BPF %7.1f ns/pkt (%.2f runs/pkt)  tool cpu %.2f" % (
                s["config"], s["pps"], s["bpf_ns_per_pkt"], s["bpf_runs_per_pkt"],
                s["tool_cpu"]))
            for p in s["programs"]:
                print("      %-18s %-10s %-11s %6.2f runs/pkt %7.1f ns/run %7.1f ns/pkt" % (
                    p["hook"], p["name"], p["type"], p["runs_per_pkt"], p["ns_per_run"],
                    p["ns_per_pkt"]))

    if out.get("extra_cost"):
        print("\nextra cost, measured (BPF ns per sent datagram, pktpath minus reference; "
              "user-space CPU share):")
        for k, e in out["extra_cost"].items():
            print("  %-12s BPF %+7.1f ns/pkt (%s)  tool cpu %+.2f" % (
                k, e["bpf_ns_per_pkt"], ", ".join("%s %+.0f" % kv for kv in
                                                  e["per_hook_ns_per_pkt"].items()),
                e["tool_cpu"]))


if __name__ == "__main__":
    sys.exit(main())
