#!/usr/bin/env python3
"""Overhead benchmark: traced vs untraced throughput through the lab, measured side by side.

Configurations, alternated in one run as a, b, a, c, a, b, a, c, ..., a (each traced measurement
is compared with the untraced ones just before and after it: the "paired" ratios):
  a) no tracer
  b) tracer attached, traffic not matching its filter (other UDP port in the filter)
  c) tracer attached, every packet matching at the default hooks
  e) (--floor) no tracer, an empty program on each default hook: what any tracer attached there
     costs at least
Reports pps, the ratios b/a and c/a, events consumed and lost, start-up time (command start to
all hooks attached), stop time (SIGTERM to the report printed and the tracer gone), and `report` time + peak memory on a 1,000,000-event recording.

With --baseline DIR (a checkout of another commit, e.g. `git worktree add /tmp/base HEAD~3`),
b and c are also measured with that checkout's tracer (B, C) in the same run, alternated with the
others: the side-by-side comparison of two commits that a change to the hot path needs.
With --alt-args ARGS instead, B and C are this checkout's tracer with ARGS added (e.g.
`--alt-args '--id-from headers'`: header keys against payload IDs in one run).

Usage: sudo python3 bench/bench.py [--seconds S] [--rounds N] [--senders K] [--json]
                                   [--baseline DIR]
       python3 bench/bench.py --report-only [--json]    # only the report test: no root, no lab
"""
import argparse
import ctypes
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pktpath.collect import hooks
from pktpath.config import cmdline_number as num
from pktpath.errors import UserError
from pktpath.lab import overlay
from pktpath.kernel import netns
from pktpath.lab import sender  # noqa: E402

RUN = [sys.executable, os.path.join(ROOT, "run.py")]
LAB_CFG = os.path.join(ROOT, "configs", "lab.yaml")


def _blast(args):
    """One sender process: as many datagrams as it can in `seconds`; returns the count."""
    start_id, seconds = args
    netns.enter(overlay.SENDER_NS)      # once per process, not per chunk
    n, chunk, deadline = 0, 2000, time.monotonic() + seconds
    while time.monotonic() < deadline:
        n += sender.send(overlay.DST_IP, overlay.PORT, count=chunk, start_id=start_id + n)
    return n


def load(seconds, senders, base_id):
    """Send from `senders` processes for `seconds`; return packets per second."""
    t0 = time.monotonic()
    with multiprocessing.Pool(senders) as pool:
        counts = pool.map(_blast, [(base_id + i * 50_000_000, seconds) for i in range(senders)])
    return sum(counts) / (time.monotonic() - t0)


def next_base(base, senders):
    """The first packet ID of the next measurement: far from the last one's, wrapping before
    the senders' IDs (50M apart) would leave 32 bits."""
    base += 100_000_000
    return 1 if base + senders * 50_000_000 >= 1 << 32 else base


def start_tracer(extra, tmp, checkout=ROOT):
    ready = os.path.join(tmp, "ready")
    stats = os.path.join(tmp, "stats.json")
    for f in (ready, stats):
        if os.path.exists(f):
            os.unlink(f)
    t0 = time.monotonic()
    run = [sys.executable, os.path.join(checkout, "run.py")]
    proc = subprocess.Popen(run + ["-c", os.path.join(checkout, "configs", "lab.yaml"), "--ready-file", ready, "--stats-file", stats,
                                   "--timeline", "0", "-q"] + extra,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PKTPATH_TIMES="1"))
    while not os.path.exists(ready):
        if proc.poll() is not None:
            raise SystemExit("tracer failed: %s" % proc.stderr.read().strip())
        time.sleep(0.01)
    return proc, time.monotonic() - t0, stats


def cpu_s(pid):
    """User + system CPU seconds used so far by process `pid`."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_tracer(proc, stats):
    """SIGTERM the tracer; its stats, with `stop_s`: seconds from the signal to its exit (the
    report printed, the JSON written, the probes detached), and `report_s`: from the signal
    (caught) to the report printed, as the tracer measures it (PKTPATH_TIMES; None from a
    tracer that does not say), and `phases`: its line."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=600)
    stop_s = time.monotonic() - t0
    line = ([ln for ln in (err or "").splitlines() if ln.startswith("pktpath: stop ")] or [""])[-1]
    m = re.search(r"signal to report ([\d.]+)s", line)
    with open(stats) as f:
        return dict(json.load(f), stop_s=stop_s, report_s=float(m.group(1)) if m else None,
                    phases=line[len("pktpath: stop "):])


def hook_specs(tracer_args):
    """The hook list a tracer run with `tracer_args` uses (None: the default set)."""
    for i, a in enumerate(tracer_args):
        if a == "--hooks" and i + 1 < len(tracer_args):
            return tracer_args[i + 1].split(",")
        if a.startswith("--hooks="):
            return a.split("=", 1)[1].split(",")
    return None


def attach_empty(specs=None):
    """The floor: an empty tp_btf program (r0 = 0; exit) on each tracepoint of the hook list
    `specs` (None: the default set), attached the way pktpath attaches its own. Returns the fds
    (close = detach)."""
    from pktpath.collect import bpfsys
    from pktpath.kernel.btf import kernel_btf
    btf = kernel_btf()
    prog = ctypes.create_string_buffer(bpfsys.RETURN_0)
    fds = []
    for e in hooks.select(specs, hooks.load_catalog()):
        if ":" in e["target"]:
            fd = bpfsys.load_tp_btf(ctypes.addressof(prog), 2, "pp_empty",
                                    btf.trace_type_id(e["target"].split(":", 1)[1]), log_size=0)
            fds += [fd, bpfsys.attach_tp_btf(fd)]
    return fds


def bench_report(tmp, n_events=1_000_000):
    """Time and peak RSS of `run.py report` on a synthetic recording of n_events."""
    path = os.path.join(tmp, "big.jsonl")
    hooks = ["net_dev_queue", "net_dev_start_xmit", "netif_rx", "netif_receive_skb"]
    with open(path, "w") as f:
        f.write(json.dumps({"type": "meta", "version": 1, "host": "bench", "hooks": hooks}) + "\n")
        per = 20
        for i in range(n_events):
            pid, hop = divmod(i, per)
            kind = "deliver" if hop == per - 1 else "pass"
            f.write(json.dumps({
                "type": "event", "t_ns": 1_000_000 + i * 1000, "hook": hooks[hop % 4], "kind": kind,
                "id": pid, "skb": 0xffff888000000000 + pid * 256, "cpu": 0, "dev": "pp-vA",
                "ifindex": 3, "netns": 4026532000 + hop % 4, "encap": hop % 2 == 1,
                "vni": 42 if hop % 2 else None, "src": "198.51.100.1:40000",
                "dst": "198.51.100.2:5000", "outer_src": None, "outer_dst": None,
                "reason": None, "reason_code": None, "location": None,
                "port": 5000 if kind == "deliver" else None, "from_map": False}) + "\n")
        f.write(json.dumps({"type": "end", "lost": 0, "netns_names": {}}) + "\n")
    t0 = time.monotonic()
    proc = subprocess.Popen(RUN + ["report", path, "--timeline", "0", "--json", os.devnull],
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the tracers'
    elapsed = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit("report failed with status %d" % proc.returncode)
    return elapsed, usage.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=num("seconds", above=0), default=3.0, help="traffic per measurement")
    ap.add_argument("--rounds", type=num("rounds", lo=1, integer=True), default=4, help="rounds of (b, a, c, a)")
    ap.add_argument("--senders", type=num("senders", lo=1, integer=True), default=2, help="sender processes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--skip-report", action="store_true", help="skip the 1M-event report test")
    ap.add_argument("--report-only", action="store_true",
                    help="only the 1M-event report test (no root, no lab)")
    ap.add_argument("--keep-lab", action="store_true")
    ap.add_argument("--floor", action="store_true",
                    help="also measure (e): an empty program on each hook the tracer uses (the "
                         "default set, or --hooks in --tracer-args), no tracer (what any tracer "
                         "attached there costs at least)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="a checkout of another commit: its tracer is measured too (B, C)")
    ap.add_argument("--tracer-args", default="", help="extra tracer arguments, e.g. "
                    "'--hooks net_dev_queue,netif_receive_skb,sk_data_ready,kfree_skb'")
    ap.add_argument("--alt-args", metavar="ARGS",
                    help="also measure b and c with these tracer arguments added (B, C), e.g. "
                         "'--id-from headers' (not with --baseline)")
    try:
        args = ap.parse_args()
    except UserError as e:   # a bad number: one line and exit 2, like a bad config value
        print("pktpath: error: %s" % e, file=sys.stderr)
        sys.exit(2)
    if args.alt_args and args.baseline:
        raise SystemExit("bench: --alt-args and --baseline do not go together")
    if args.report_only:
        return report_only(args.json)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root")
    overlay.up()
    res = {"a_pps": [], "b_pps": [], "c_pps": [], "e_pps": [], "events": 0, "lost": 0, "startup_s": [],
           "startup_compile_s": [], "startup_cached_s": [], "compiled": set(),
           "c_events_per_s": [], "b_tracer_cpu": [], "c_tracer_cpu": []}
    # a, b, a, c, a, b, a, c, ..., a: every traced measurement has an untraced one just before
    # and just after it, and is compared with their mean (the machine drifts by several percent
    # within a minute: see README)
    paired = {"b": [], "c": [], "e": [], "B": [], "C": []}
    for k in "BC":
        res.update({k + "_pps": [], k + "_tracer_cpu": []})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = 1

            def untraced():
                nonlocal base
                res["a_pps"].append(load(args.seconds, args.senders, base))
                base = next_base(base, args.senders)

            def traced(key, extra, checkout=ROOT):
                nonlocal base
                # each configuration's first start compiles (--no-cache); later ones load the
                # compile from the cache, as a user's second run does
                first = key not in res["compiled"]
                res["compiled"].add(key)
                proc, startup, stats = start_tracer(extra + (["--no-cache"] if first else []),
                                                    tmp, checkout)
                res["startup_s"].append(startup)
                res["startup_compile_s" if first else "startup_cached_s"].append(startup)
                cpu0, t0 = cpu_s(proc.pid), time.monotonic()
                res[key + "_pps"].append(load(args.seconds, args.senders, base))
                base = next_base(base, args.senders)
                res[key + "_tracer_cpu"].append((cpu_s(proc.pid) - cpu0) /
                                                (time.monotonic() - t0))
                st = stop_tracer(proc, stats)
                res.setdefault("stop_s", []).append(st["stop_s"])
                if st["report_s"] is not None:
                    res.setdefault("report_s", []).append(st["report_s"])
                    res.setdefault("stop_phases", []).append("%s: %s" % (key, st["phases"]))
                # which attach methods and header reads were measured (a fallback is slower)
                res.setdefault("methods", set()).add(
                    " ".join("%s=%s" % kv for kv in sorted(st.get("methods", {}).items())) +
                    " headers=%s" % st.get("headers"))
                if key in "cC":
                    res.setdefault(key + "_lost", 0)
                    res[key + "_lost"] += st["lost"]
                if key == "c":
                    res["events"] += st["events"]
                    res["lost"] += st["lost"]
                    res["c_events_per_s"].append(st["events"] / (time.monotonic() - t0))

            def floor(key, _):
                nonlocal base
                fds = attach_empty(hook_specs(extra))
                try:
                    res["e_pps"].append(load(args.seconds, args.senders, base))
                finally:
                    for fd in fds:
                        os.close(fd)
                base = next_base(base, args.senders)

            extra = args.tracer_args.split()
            configs = [("b", ["--udp-port", str(overlay.PORT + 999)] + extra, traced),
                       ("c", extra, traced)] + ([("e", None, floor)] if args.floor else [])
            if args.baseline:
                base_dir = os.path.abspath(args.baseline)
                configs += [(k.upper(), f, lambda key, fl: traced(key, fl, base_dir))
                            for k, f, _m in configs[:2]]
            elif args.alt_args:
                configs += [(k.upper(), f + args.alt_args.split(), traced)
                            for k, f, _m in configs[:2]]
            untraced()
            for _ in range(args.rounds):
                for key, flags, measure in configs:
                    measure(key, flags)
                    untraced()
                    before, after = res["a_pps"][-2:]
                    paired[key].append(res[key + "_pps"][-1] / ((before + after) / 2))
            if not args.skip_report:
                res["report_1m_s"], res["report_1m_peak_mb"] = bench_report(tmp)
    finally:
        if not args.keep_lab:
            overlay.down()
    med = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else \
        sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2  # noqa: E731
    out = {"a_pps": med(res["a_pps"]), "b_pps": med(res["b_pps"]), "c_pps": med(res["c_pps"]),
           "events_consumed": res["events"], "events_lost": res["lost"],
           "c_events_per_s": med(res["c_events_per_s"]),
           "b_tracer_cpu": med(res["b_tracer_cpu"]), "c_tracer_cpu": med(res["c_tracer_cpu"]),
           "startup_s": max(res["startup_s"]), "stop_s": 0.0,    # (stop: set below, shown here)
           "rounds": args.rounds, "seconds": args.seconds,
           "senders": args.senders,
           "rounds_pps": {k: [round(x) for x in res[k + "_pps"]] for k in "abceBC" if res.get(k + "_pps")},
           "startups_s": [round(x, 2) for x in res["startup_s"]],
           "methods": sorted(res.get("methods", ()))}
    # ratios of the medians, and the median of each measurement's ratio to the untraced
    # measurements right before and after it (less exposed to the machine's drift)
    out["b_over_a"] = out["b_pps"] / out["a_pps"]
    out["c_over_a"] = out["c_pps"] / out["a_pps"]
    for k in ("bce" if args.floor else "bc") + ("BC" if args.baseline or args.alt_args else ""):
        out[k + "_over_a_paired"] = med(paired[k])
        out[k + "_over_a_paired_ci90"] = [round(x, 3) for x in median_ci(paired[k], med)]
        out[k + "_over_a_paired_all"] = [round(x, 3) for x in paired[k]]
    if args.baseline or args.alt_args:
        if args.baseline:
            out["baseline"] = os.path.abspath(args.baseline)
        else:
            out["alt_args"] = args.alt_args
        out["events_lost_C"] = res.get("C_lost", 0)
    out["startup_median_s"] = med(res["startup_s"])
    out["stop_s"] = max(res.get("stop_s") or [0])     # SIGTERM to report done, worst
    out["stop_median_s"] = med(res.get("stop_s") or [0])
    out["stop_report_s"] = max(res.get("report_s") or [0])  # signal caught -> report printed
    out["stop_report_median_s"] = med(res.get("report_s") or [0])
    out["stop_phases"] = res.get("stop_phases", [])
    out["startup_compile_s"] = [round(x, 2) for x in res["startup_compile_s"]]
    if res["startup_cached_s"]:
        out["startup_cached_median_s"] = med(res["startup_cached_s"])
        out["startup_cached_max_s"] = max(res["startup_cached_s"])
    for k in ("report_1m_s", "report_1m_peak_mb"):
        if k in res:
            out[k] = res[k]
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print("%-18s %s" % (k, "%.3f" % v if isinstance(v, float) else v))
        print("targets (paired ratios): b/a >= 0.95 %s, c/a >= 0.70 %s, lost == 0 %s, "
              "start-up <= 1.5 s %s" % (
                  ok(out["b_over_a_paired"] >= 0.95), ok(out["c_over_a_paired"] >= 0.70),
                  ok(out["events_lost"] == 0), ok(out["startup_s"] <= 1.5)))
        print("start-up %.2f s (median %.2f), stop (signal to exit) %.2f s (median %.2f), "
              "signal to report %.2f s (median %.2f): report <= 1 s %s"
              % (out["startup_s"], out["startup_median_s"], out["stop_s"],
                 out["stop_median_s"], out["stop_report_s"], out["stop_report_median_s"],
                 ok(out["stop_report_s"] <= 1.0)))
    return 0


def report_only(as_json):
    """`--report-only`: the report test alone, which needs neither root nor the lab."""
    with tempfile.TemporaryDirectory() as tmp:
        seconds, peak_mb = bench_report(tmp)
    out = {"report_1m_s": seconds, "report_1m_peak_mb": peak_mb}
    if as_json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print("%-18s %.3f" % (k, v))
        print("targets: report <= 10 s %s, peak < 1024 MB %s" % (ok(seconds <= 10),
                                                                 ok(peak_mb < 1024)))
    return 0


def median_ci(xs, med, level=0.90, resamples=2000, seed=1):
    """A bootstrap confidence interval of the median of `xs` (percentile method): how far the
    reported ratio may be from the machine's true one, given the spread of the rounds."""
    import random
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (0.0, 0.0)
    rnd = random.Random(seed)
    meds = sorted(med([rnd.choice(xs) for _ in xs]) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def ok(b):
    return "OK" if b else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
