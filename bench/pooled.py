#!/usr/bin/env python3
"""Several bench/tools.py runs pooled: each configuration's X/a over every round of every run,
and paired differences X - Y per round (X and Y measured in the same round, next to the same
untraced runs), each a median with a 90% bootstrap interval.

    python3 bench/pooled.py RUN.json [RUN.json ...] [--pairs x_shape-c,c-bt_count]

(RUN.json: `bench/tools.py --save RUN.json`, or costsplit.py with `--save`.) One run's interval
is wide on the shared 2-vCPU machines (its few rounds move with other load); a difference that
stays on one side of zero over several runs' rounds is the figure to trust.
"""
import argparse
import json
import random


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def boot(xs, n=4000, seed=1):
    """(median, 5th, 95th percentile of the bootstrapped median)."""
    rng = random.Random(seed)
    meds = sorted(median([rng.choice(xs) for _ in xs]) for _ in range(n))
    return median(xs), meds[int(0.05 * n)], meds[int(0.95 * n)]


def pooled(runs, pairs):
    """{"configs": {name: ...}, "pairs": {"X-Y": ...}} over the runs (tools.py JSON objects)."""
    names = [k for k in runs[0]["ratios"] if all(k in r["ratios"] for r in runs)]
    out = {"runs": len(runs), "configs": {}, "pairs": {}}
    for k in names:
        xs = [x for r in runs for x in r["ratios"][k]["all"]]
        m, lo, hi = boot(xs)
        out["configs"][k] = {"median": round(m, 3), "ci90": [round(lo, 3), round(hi, 3)],
                             "per_run": [r["ratios"][k]["median"] for r in runs],
                             "tool_cpu": [r["ratios"][k].get("tool_cpu") for r in runs],
                             "rounds": len(xs)}
    for x, y in pairs:
        if x not in names or y not in names:
            continue
        d = [a - b for r in runs for a, b in zip(r["ratios"][x]["all"], r["ratios"][y]["all"])]
        m, lo, hi = boot(d)
        out["pairs"]["%s-%s" % (x, y)] = {"median": round(m, 3), "ci90": [round(lo, 3),
                                                                          round(hi, 3)],
                                          "rounds": len(d)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--pairs", default="", help="X-Y,... (default: every config - c, and "
                    "every pktpath config - bt_count)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    names = list(runs[0]["ratios"])
    if args.pairs:
        pairs = [tuple(p.split("-", 1)) for p in args.pairs.split(",") if p]
    else:
        tools = ("bt_count", "perf_rec", "bt_drop", "floor", "b", "d", "dk", "dm")
        mine = [k for k in names if k not in tools]
        pairs = [(k, "c") for k in mine if k != "c"] + \
            [(k, "bt_count") for k in mine if "bt_count" in names]
    res = pooled(runs, pairs)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print("%d runs pooled" % res["runs"])
    for k, v in res["configs"].items():
        print("  %-10s X/a %.3f [%.3f, %.3f]  %d rounds; per run %s; tool cpu %s" % (
            k, v["median"], v["ci90"][0], v["ci90"][1], v["rounds"], v["per_run"],
            v["tool_cpu"]))
    for k, v in res["pairs"].items():
        print("  %-20s %+.3f [%+.3f, %+.3f] (paired per round, %d)" % (
            k, v["median"], v["ci90"][0], v["ci90"][1], v["rounds"]))


if __name__ == "__main__":
    main()
