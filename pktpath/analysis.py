"""Where time goes and where the population thins out (pure functions over packet records).

- segments(): per-hop latency, from one sighting (hook@dev/netns) to the next, over all packets.
- funnel(): the stages in path order with how many packets reached each, and the first stage
  after which the count falls.
"""
from tabulate import tabulate

DROP_HOOKS = ("kfree_skb",)


def stage(hop):
    """A place on the path: hook@device/netns."""
    ns = hop.get("netns_name") or hop.get("netns")
    where = "%s@%s" % (hop["hook"], hop["dev"]) if hop.get("dev") else hop["hook"]
    host = hop.get("host")
    return "%s/%s%s" % (where, ns, " [%s]" % host if host else "")


def _pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def segments(packets):
    """[{from, to, count, p50_us, p90_us, p99_us, max_us}], most frequent first."""
    gaps = {}
    for p in packets:
        path = p["path"]
        for a, b in zip(path, path[1:]):
            gaps.setdefault((stage(a), stage(b)), []).append((b["t_ns"] - a["t_ns"]) / 1e3)
    out = []
    for (a, b), vals in gaps.items():
        vals.sort()
        out.append({"from": a, "to": b, "count": len(vals), "p50_us": _pct(vals, 0.5),
                    "p90_us": _pct(vals, 0.9), "p99_us": _pct(vals, 0.99), "max_us": vals[-1]})
    out.sort(key=lambda s: (-s["count"], -s["max_us"]))
    return out


def funnel(packets):
    """([(stage, packets reaching it)] in path order, message about the first fall or None).

    Path order: a stage's median position over the paths that reach it. Drops (kfree_skb) end
    paths rather than being stages of them: they are left out."""
    reach, positions = {}, {}
    for p in packets:
        seen = set()
        for i, hop in enumerate(p["path"]):
            if hop["hook"] in DROP_HOOKS:
                continue
            s = stage(hop)
            if s not in seen:
                seen.add(s)
                reach[s] = reach.get(s, 0) + 1
                positions.setdefault(s, []).append(i)
    order = sorted(reach, key=lambda s: (sorted(positions[s])[len(positions[s]) // 2], -reach[s]))
    rows = [(s, reach[s]) for s in order]
    message = None
    for (a, na), (b, nb) in zip(rows, rows[1:]):
        if nb < na:
            message = "%d packet%s lost between %s and %s" % (
                na - nb, "" if na - nb == 1 else "s", a, b)
            break
    return rows, message


def render_segments(packets, top=15):
    segs = segments(packets)
    if not segs:
        return "no hops"
    rows = [[s["from"], s["to"], s["count"]] + ["%.1f" % s[k] for k in
                                                ("p50_us", "p90_us", "p99_us", "max_us")]
            for s in segs[:top]]
    more = "\n(+%d more segments)" % (len(segs) - top) if len(segs) > top else ""
    return tabulate(rows, headers=["FROM", "TO", "COUNT", "P50 us", "P90 us", "P99 us",
                                   "MAX us"], disable_numparse=True) + more


def render_funnel(packets, top=20):
    rows, message = funnel(packets)
    if not rows:
        return "no hops"
    text = tabulate([[i + 1, s, n] for i, (s, n) in enumerate(rows[:top])],
                    headers=["#", "STAGE", "PACKETS"], disable_numparse=True)
    if len(rows) > top:
        text += "\n(+%d more stages)" % (len(rows) - top)
    return text + ("\n" + message if message else "")
