"""Where time goes and where the population thins out (pure functions over packet records).

- segments(): per-hop latency, from one sighting (hook@dev/netns) to the next, over all packets.
- funnel(): the stages in path order with how many packets reached each, and the first stage
  after which the count falls.
"""
from array import array
from bisect import bisect_left, bisect_right
from itertools import repeat
from collections import Counter
from math import fsum
from operator import lshift, mul, neg, or_, rshift, sub, truediv

from tabulate import tabulate

DROP_HOOKS = ("kfree_skb",)

# A segment keeps its latencies exactly while it has at most EXACT_MAX of them (the percentiles
# are then those of sorting them all, as always); past that they are folded into a LogHist:
# exact count, min, max and mean, percentiles within HIST_ERROR of the exact ones (relative).
EXACT_MAX = 1 << 16
HIST_BITS = 7           # significant bits of a bucket: 64 buckets per power of two
HIST_ERROR = 1.0 / (1 << HIST_BITS)     # 0.78%: half a bucket's width over its lowest value
APPROX_NOTE = ("(P50/P90/P99 of segments with more than %d packets are from a log-linear "
               "histogram: within %.1f%%; counts, MAX exact)" % (EXACT_MAX, 100 * HIST_ERROR))


class LogHist:
    """Latencies in log-linear buckets of integer nanoseconds, 64 per power of two (HIST_BITS
    significant bits; below 2^HIST_BITS ns one per value), in memory that does not grow with
    their number: count, min, max and sum exact; a percentile is the middle of the bucket that
    holds it (clamped to min and max), within HIST_ERROR of the exact value (relative).
    add_ns() buckets a chunk with C-level maps and a Counter (no sort, no Python step per
    value)."""

    __slots__ = ("pos", "neg", "count", "min", "max", "total", "_keys")

    def __init__(self):
        self.pos = Counter()    # bucket key (_key) of values >= 0 -> values in it
        self.neg = Counter()    # the same of -v for values < 0
        self.count, self.min, self.max, self.total = 0, None, None, 0
        self._keys = None

    def add_ns(self, ds):
        """Add latencies `ds` (a list of ints, nanoseconds)."""
        if not ds:
            return
        lo, hi = min(ds), max(ds)
        self.count += len(ds)
        self.total += sum(ds)
        if self.min is None or lo < self.min:
            self.min = lo
        if self.max is None or hi > self.max:
            self.max = hi
        self._keys = None
        if lo < 0:
            self.neg.update(_keys(list(map(neg, filter((0).__gt__, ds)))))
            ds = list(filter((0).__le__, ds))
        if hi < _SMALL:             # (the common case: a lookup per value)
            self.pos.update(map(_small_keys().__getitem__, ds))
        else:
            self.pos.update(_keys(ds))

    def add_us(self, vals):
        """Add latencies in microseconds (floats of whole nanoseconds, as hop times give)."""
        self.add_ns(list(map(round, map(mul, vals, repeat(1e3)))))

    def _sorted(self):
        """[(bucket middle ns, values)] in value order."""
        if self._keys is None:
            self._keys = [(-_mid(k), self.neg[k]) for k in sorted(self.neg, reverse=True)] + \
                [(_mid(k), self.pos[k]) for k in sorted(self.pos)]
        return self._keys

    def percentiles(self, qs):
        """[value (us) of rank min(count - 1, int(q * count)) for q in qs]: the exact min and
        max at the ends, else the middle of its bucket (within HIST_ERROR)."""
        n, out = self.count, []
        for q in qs:
            k = min(n - 1, int(q * n))
            if k <= 0:
                out.append(self.min / 1e3)
                continue
            if k >= n - 1:
                out.append(self.max / 1e3)
                continue
            acc = 0
            for mid, c in self._sorted():
                acc += c
                if acc > k:
                    break
            out.append(min(max(mid, self.min), self.max) / 1e3)
        return out

    def counts(self):
        """[(bucket middle us, values)] in value order."""
        return [(mid / 1e3, c) for mid, c in self._sorted()]


# bucket of a value d >= 0 (ns): its bit length b and its top HIST_BITS bits, (b << 8) | (d >>
# (b - HIST_BITS)): ordered as the values are
_SHIFT = [max(0, b - HIST_BITS) for b in range(1100)]


def _keys(ds):
    """The bucket keys of `ds` (ints >= 0), as an iterator (C-level maps)."""
    bits = list(map(int.bit_length, ds))
    return map(or_, map(lshift, bits, repeat(8)), map(rshift, ds, map(_SHIFT.__getitem__, bits)))


_SMALL = 1 << 17        # latencies under 131 us: keys looked up (a 1 MB list, made once)
_SMALL_KEYS = []


def _small_keys():
    if not _SMALL_KEYS:
        interned = {}
        _SMALL_KEYS.extend(interned.setdefault(k, k) for k in _keys(range(_SMALL)))
    return _SMALL_KEYS


def _mid(key):
    """The middle of bucket `key` (ns): the mean of the lowest and highest integer in it."""
    shift = _SHIFT[key >> 8]
    low = (key & 0xff) << shift
    return low + ((1 << shift) - 1) / 2


def stage(hop):
    """A place on the path: hook@device/netns."""
    ns = hop.get("netns_name") or hop.get("netns")
    where = "%s@%s" % (hop["hook"], hop["dev"]) if hop.get("dev") else hop["hook"]
    host = hop.get("host")
    return "%s/%s%s" % (where, ns, " [%s]" % host if host else "")


def _pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def _percentiles(vals, runs, qs):
    """[_pct(sorted(vals), q) for q in qs] (q 1.0: the largest), exactly. A flood's latencies
    are a few long sorted runs (`runs`: [(start, end)] in `vals`, add_bulk) and a few values
    added one packet at a time: the percentiles are selected across the runs (bisect) instead
    of sorting every value at the stop (~30-60 ms per segment for 200k packets)."""
    n = len(vals)
    if not runs or n < 4096 or len(runs) > 256:
        s = sorted(vals)
        return [_pct(s, q) for q in qs]
    seqs, pos = [], 0
    loose = array("d")
    for start, end in sorted(runs):
        loose.extend(vals[pos:start])
        seqs.append((vals, start, end))
        pos = end
    loose.extend(vals[pos:])
    if loose:
        seqs.append((sorted(loose), 0, len(loose)))
    return [_kth(seqs, min(n - 1, int(q * n))) for q in qs]


def _kth(seqs, k):
    """The k-th smallest value (0-based) over the sorted slices `seqs` [(seq, lo, hi)]: what
    sorted(all of them)[k] is. The pivot is the weighted median of the slices' middle values,
    so each round drops at least a quarter of the values left."""
    seqs = [[a, lo, hi] for a, lo, hi in seqs if hi > lo]
    while True:
        if not seqs:
            raise IndexError("k past the values")
        mids = sorted((a[(lo + hi) // 2], hi - lo) for a, lo, hi in seqs)
        half, acc = sum(w for _v, w in mids), 0
        for pivot, w in mids:
            acc += w
            if 2 * acc >= half:
                break
        below = [bisect_left(a, pivot, lo, hi) for a, lo, hi in seqs]
        nbelow = sum(b - s[1] for b, s in zip(below, seqs))
        if k < nbelow:
            for s, b in zip(seqs, below):
                s[2] = b
        else:
            upto = [bisect_right(a, pivot, lo, hi) for a, lo, hi in seqs]
            nupto = sum(u - s[1] for u, s in zip(upto, seqs))
            if k < nupto:
                return pivot
            k -= nupto
            for s, u in zip(seqs, upto):
                s[1] = u
        seqs = [s for s in seqs if s[2] > s[1]]


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
    need not hold its packets: latencies are kept as arrays of doubles (EXACT_MAX per segment
    at most: past it they are folded into a LogHist), stage positions as counts per
    position."""

    def __init__(self):
        self._gaps = {}        # (stage, next stage) -> array of latencies (us)
        self._reach = {}       # stage -> packets reaching it
        self._positions = {}   # stage -> {position on the path: packets}
        self._rank = {}        # key of _gaps or _reach -> lowest (id, first_ns, hop) having it
        self._ended = {}       # last counted stage of a path -> {verdict: packets}
        self._runs = {}        # key of _gaps -> [(start, end)] of its sorted runs (add_bulk)
        self._hists = {}       # key of _gaps -> LogHist once it had more than EXACT_MAX values
        #                        (its array then holds the values added since the last fold)

    def _fold(self, key):
        """Move the latencies of segment `key` into its LogHist: past EXACT_MAX values, memory
        stays bounded."""
        hist = self._hists.get(key)
        if hist is None:
            hist = self._hists[key] = LogHist()
        hist.add_us(self._gaps[key])
        self._gaps[key] = array("d")
        self._runs.pop(key, None)

    def add(self, p):
        path = p["path"]
        self.add_stages((p["id"], p["first_ns"] or 0), [stage(hop) for hop in path],
                        [hop["t_ns"] for hop in path],
                        [hop["hook"] not in DROP_HOOKS for hop in path], p.get("verdict"))

    def _end(self, stages, counted, verdict, count):
        """Count `count` packets of `verdict` as ending at the last counted stage of `stages`."""
        for i in range(len(stages) - 1, -1, -1):
            if counted[i]:
                at = self._ended.setdefault(stages[i], {})
                at[verdict] = at.get(verdict, 0) + count
                return

    def add_stages(self, rank, stages, times, counted, verdict=None):
        """One packet's path as its stages, their times (ns) and whether each stage counts in
        the funnel (drops do not); `rank` (id, first_ns) orders ties in the tables the same
        whatever order packets are added in (that of ID order); `verdict` (dropped, lost, ...)
        says how the funnel names the packets that go no further."""
        self._end(stages, counted, verdict, 1)
        gaps, ranks = self._gaps, self._rank
        i = 0
        for sa, sb, ta, tb in zip(stages, stages[1:], times, times[1:]):
            key = (sa, sb)
            vals = gaps.get(key)
            if vals is None:
                vals = gaps[key] = array("d")
                ranks[key] = rank + (i,)
            elif rank < ranks[key]:
                ranks[key] = rank + (i,)
            vals.append((tb - ta) / 1e3)
            if len(vals) > EXACT_MAX:
                self._fold(key)
            i += 1
        seen = set()
        reach, positions = self._reach, self._positions
        for i, s in enumerate(stages):
            if s not in seen and counted[i]:
                seen.add(s)
                n = reach.get(s)
                if n is None:
                    reach[s] = 1
                    positions[s] = {i: 1}
                    ranks[s] = rank + (i,)
                    continue
                reach[s] = n + 1
                if rank < ranks[s]:
                    ranks[s] = rank + (i,)
                at = positions[s]
                at[i] = at.get(i, 0) + 1

    def add_bulk(self, rank, stages, counted, dts, count, idle=None, verdict=None):
        """`count` packets of the same path (stages, counted: see add_stages), their hop times
        flattened in `dts` (an array, len(stages) per packet); `rank`: the lowest (id,
        first_ns) of them; `verdict`: theirs (see add_stages). `idle` (if any) is called
        between segments (a live trace drains its ring buffer: sorting a flood's latencies
        takes tens of ms per segment). `dts` None: the packets count in the funnel, not in the
        latencies (a live trace's stop, when the report is due: see sample.Aggregate.close)."""
        self._end(stages, counted, verdict, count)
        n = len(stages)
        gaps, ranks, hists = self._gaps, self._rank, self._hists
        for i in range(n - 1 if dts is not None else 0):
            key = (stages[i], stages[i + 1])
            vals = gaps.get(key)
            if vals is None:
                vals = gaps[key] = array("d")
                ranks[key] = rank + (i,)
            elif rank < ranks[key]:
                ranks[key] = rank + (i,)
            if key in hists or len(vals) + count > EXACT_MAX:
                # past EXACT_MAX: bucketed (LogHist), in nanoseconds, not sorted
                if key not in hists or vals:
                    self._fold(key)
                hists[key].add_ns(list(map(sub, dts[i + 1::n], dts[i::n])))
            else:
                # sorted: the array is then a few long sorted runs, in which segments() finds
                # its percentiles without sorting every latency at the stop
                start = len(vals)
                vals.extend(sorted(map(truediv, map(sub, dts[i + 1::n], dts[i::n]),
                                       repeat(1e3, count))))
                self._runs.setdefault(key, []).append((start, len(vals)))
            if idle is not None and count > 4096:
                idle()
        seen = set()
        reach, positions = self._reach, self._positions
        for i, s in enumerate(stages):
            if s not in seen and counted[i]:
                seen.add(s)
                if s not in reach:
                    reach[s], positions[s], ranks[s] = 0, {}, rank + (i,)
                elif rank < ranks[s]:
                    ranks[s] = rank + (i,)
                reach[s] += count
                at = positions[s]
                at[i] = at.get(i, 0) + count

    def latencies(self, a, b):
        """The latencies (us, in no order) of segment a -> b (stage strings), empty if none
        (past EXACT_MAX values: the middles of their histogram's buckets, each repeated as many
        times as it holds values; latency_counts() gives them without repeating)."""
        key = (a, b)
        if key in self._hists:
            return [v for v, c in self.latency_counts(a, b) for _ in range(c)]
        return self._gaps.get(key, ())

    def latency_counts(self, a, b):
        """[(latency us, how many)] of segment a -> b, in value order: exact values, or past
        EXACT_MAX the middles of the histogram's buckets."""
        key = (a, b)
        if key in self._hists:
            if self._gaps[key]:
                self._fold(key)
            return self._hists[key].counts()
        out = {}
        for v in self._gaps.get(key, ()):
            out[v] = out.get(v, 0) + 1
        return sorted(out.items())

    def segments(self):
        """What segments() returns for the packets added: p50/p90/p99 exact up to EXACT_MAX
        latencies, then within HIST_ERROR (`approx` true); count, max and mean exact."""
        out = []
        qs = (0.5, 0.9, 0.99, 1.0)
        for key in sorted(self._gaps, key=self._rank.__getitem__):
            a, b = key
            hist = self._hists.get(key)
            if hist is not None:
                if self._gaps[key]:
                    self._fold(key)
                p50, p90, p99, top = hist.percentiles(qs)
                out.append({"from": a, "to": b, "count": hist.count, "p50_us": p50,
                            "p90_us": p90, "p99_us": p99, "max_us": top,
                            "mean_us": hist.total / hist.count / 1e3, "approx": True})
                continue
            vals = self._gaps[key]
            p50, p90, p99, top = _percentiles(vals, self._runs.get(key), qs)
            out.append({"from": a, "to": b, "count": len(vals), "p50_us": p50,
                        "p90_us": p90, "p99_us": p99, "max_us": top,
                        "mean_us": fsum(vals) / len(vals)})
        out.sort(key=lambda s: (-s["count"], -s["max_us"]))
        return out

    def funnel(self):
        """What funnel() returns for the packets added."""
        reach = self._reach
        order = sorted(sorted(reach, key=self._rank.__getitem__),
                       key=lambda s: (_median(self._positions[s]), -reach[s]))
        rows = [(s, reach[s]) for s in order]
        message = None
        for (a, na), (b, nb) in zip(rows, rows[1:]):
            if nb < na:
                message = self._fall_message(a, b, na - nb)
                break
        return rows, message


    def _fall_message(self, a, b, fall):
        """"N packets dropped between A and B" for the packets whose path ended at A with a
        drop, "lost" for those lost there; the others "were not seen at B" (another path, or
        their events were lost)."""
        ended = self._ended.get(a, {})
        dropped = min(ended.get("dropped", 0), fall)
        # incomplete: lost packets the finishing policy found the tracer lost events of (a live
        # trace may decide that after the packet was counted here): both were lost from sight
        lost = min(ended.get("lost", 0) + ended.get("incomplete", 0), fall - dropped)
        other = fall - dropped - lost
        parts = ["%d %s" % (n, what) for n, what in ((dropped, "dropped"), (lost, "lost")) if n]
        if not parts:
            return "%d packet%s seen at %s %s not seen at %s" % (
                other, "" if other == 1 else "s", a, "was" if other == 1 else "were", b)
        first = dropped or lost
        parts[0] = parts[0].replace(" ", " packet%s " % ("" if first == 1 else "s"), 1)
        return "%s between %s and %s%s" % (", ".join(parts), a, b, "; %d more %s not seen at %s"
                                           % (other, "was" if other == 1 else "were", b)
                                           if other else "")


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
    if any(s.get("approx") for s in segs[:top]):
        more += "\n" + APPROX_NOTE
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
