"""Where time goes and where the population thins out (pure functions over packet records).

- segments(): per-hop latency, from one sighting (hook@dev/netns) to the next, over all packets.
- funnel(): the stages in path order with how many packets reached each, and the first stage
  after which the count falls.
"""
from array import array

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
    return _stats(packets).segments()


def funnel(packets):
    """([(stage, packets reaching it)] in path order, message about the first fall or None).

    Path order: a stage's median position over the paths that reach it. Drops (kfree_skb) end
    paths rather than being stages of them: they are left out."""
    return _stats(packets).funnel()


def _stats(packets):
    stats = PathStats()
    for p in packets:
        stats.add(p)
    return stats


class PathStats:
    """segments() and funnel() fed one packet at a time, so that a report of a million events
    need not hold its packets: latencies are kept as arrays of doubles, stage positions as
    counts per position."""

    def __init__(self):
        self._gaps = {}        # (stage, next stage) -> array of latencies (us)
        self._reach = {}       # stage -> packets reaching it
        self._positions = {}   # stage -> {position on the path: packets}

    def add(self, p):
        path = p["path"]
        stages = [stage(hop) for hop in path]
        gaps = self._gaps
        for a, b, sa, sb in zip(path, path[1:], stages, stages[1:]):
            vals = gaps.get((sa, sb))
            if vals is None:
                vals = gaps[(sa, sb)] = array("d")
            vals.append((b["t_ns"] - a["t_ns"]) / 1e3)
        seen = set()
        for i, (hop, s) in enumerate(zip(path, stages)):
            if s not in seen and hop["hook"] not in DROP_HOOKS:
                seen.add(s)
                self._reach[s] = self._reach.get(s, 0) + 1
                at = self._positions.setdefault(s, {})
                at[i] = at.get(i, 0) + 1

    def segments(self):
        """What segments() returns for the packets added."""
        out = []
        for (a, b), arr in self._gaps.items():
            vals = sorted(arr)
            out.append({"from": a, "to": b, "count": len(vals), "p50_us": _pct(vals, 0.5),
                        "p90_us": _pct(vals, 0.9), "p99_us": _pct(vals, 0.99),
                        "max_us": vals[-1]})
        out.sort(key=lambda s: (-s["count"], -s["max_us"]))
        return out

    def funnel(self):
        """What funnel() returns for the packets added."""
        reach = self._reach
        order = sorted(reach, key=lambda s: (_median(self._positions[s]), -reach[s]))
        rows = [(s, reach[s]) for s in order]
        message = None
        for (a, na), (b, nb) in zip(rows, rows[1:]):
            if nb < na:
                message = "%d packet%s lost between %s and %s" % (
                    na - nb, "" if na - nb == 1 else "s", a, b)
                break
        return rows, message


def _median(counts):
    """The upper median of values given as {value: how many times}."""
    k = sum(counts.values()) // 2
    for value in sorted(counts):
        k -= counts[value]
        if k < 0:
            return value


def render_segments(packets, top=15):
    return format_segments(segments(packets), top)


def format_segments(segs, top=15):
    """Text table of segments() (the first `top` rows)."""
    if not segs:
        return "no hops"
    rows = [[s["from"], s["to"], s["count"]] + ["%.1f" % s[k] for k in
                                                ("p50_us", "p90_us", "p99_us", "max_us")]
            for s in segs[:top]]
    more = "\n(+%d more segments)" % (len(segs) - top) if len(segs) > top else ""
    return tabulate(rows, headers=["FROM", "TO", "COUNT", "P50 us", "P90 us", "P99 us",
                                   "MAX us"], disable_numparse=True) + more


def render_funnel(packets, top=20):
    return format_funnel(funnel(packets), top)


def format_funnel(funnel_result, top=20):
    """Text table of funnel() (the first `top` stages) and its message."""
    rows, message = funnel_result
    if not rows:
        return "no hops"
    text = tabulate([[i + 1, s, n] for i, (s, n) in enumerate(rows[:top])],
                    headers=["#", "STAGE", "PACKETS"], disable_numparse=True)
    if len(rows) > top:
        text += "\n(+%d more stages)" % (len(rows) - top)
    return text + ("\n" + message if message else "")
