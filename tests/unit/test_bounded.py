"""Memory stays bounded whatever the trace's length and verdicts (#17): past EXACT_MAX latencies a
segment's are a log-linear histogram (counts, min, max, mean exact; percentiles within
HIST_ERROR), the spilled `lost` packets are counted by group with their IDs as runs; a live
flood of a million drops and losses holds the same whatever its length."""
import random
import struct
import time
from array import array
from math import fsum

from hypothesis import given, settings, strategies as st

from pktpath.events import records
from pktpath.process import analysis, pipeline, sample
from pktpath.process.reconstruct import Summary
from tests.unit.test_pipeline import DROP, HOOKS, NAMES, REASONS, path_record, symbolize

QS = (0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0)


def exact(vals, qs=QS):
    s = sorted(vals)
    return [analysis._pct(s, q) for q in qs]


def close_to(approx, want):
    return abs(approx - want) <= analysis.HIST_ERROR * abs(want) + 1e-12


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.integers(-10 ** 9, 10 ** 10), st.integers(0, 10 ** 7),
                          st.integers(0, 300), st.sampled_from([0, 1, 127, 128, 129, 2500])),
                min_size=1, max_size=400),
       st.integers(1, 5))
def test_histogram_percentiles_within_the_stated_error(ns, chunks):
    hist = analysis.LogHist()
    step = max(1, len(ns) // chunks)
    for i in range(0, len(ns), step):
        if i % 2:
            hist.add_us([d / 1e3 for d in ns[i:i + step]])
        else:
            hist.add_ns(ns[i:i + step])
    vals = [d / 1e3 for d in ns]
    assert hist.count == len(vals)
    assert hist.min == min(ns) and hist.max == max(ns) and hist.total == sum(ns)
    got = hist.percentiles(QS)
    for g, w in zip(got, exact(vals)):
        assert close_to(g, w), (g, w)
    assert got[-1] == max(vals) and got[0] == min(vals)
    assert sum(c for _v, c in hist.counts()) == len(vals)
    assert [v for v, _c in hist.counts()] == sorted(v for v, _c in hist.counts())
    # the values below 2^HIST_BITS ns are their own buckets: exact
    if max(map(abs, ns)) < 1 << analysis.HIST_BITS:
        assert got == exact(vals)


def latency_stream(rng, n):
    """n latencies (us) of a segment: a mode, a tail, ties, like a flood's."""
    out = []
    for _ in range(n):
        r = rng.random()
        out.append(rng.randrange(2000, 9000) / 1e3 if r < 0.9 else
                   rng.randrange(9000, 2_000_000) / 1e3 if r < 0.999 else 5.0)
    return out


def test_small_segments_stay_exact_and_large_ones_are_bounded():
    rng = random.Random(7)
    stats = analysis.PathStats()
    stages, counted = ["a", "b", "c"], [True, True, True]
    small = latency_stream(rng, 1000)
    for i, v in enumerate(small):          # one packet at a time, under EXACT_MAX: exact
        stats.add_stages((i, 0), stages[:2], [0, int(v * 1000)], counted[:2])
    seg = stats.segments()[0]
    assert "approx" not in seg and seg["count"] == 1000
    assert [seg[k] for k in ("p50_us", "p90_us", "p99_us", "max_us")] == \
        exact([int(v * 1000) / 1e3 for v in small], (0.5, 0.9, 0.99, 1.0))
    assert analysis.APPROX_NOTE not in analysis.format_segments(stats.segments())
    # 3 x EXACT_MAX packets more of b -> c, in bulk (as fold) and one at a time
    all_bc = []
    n = 3 * analysis.EXACT_MAX
    done = 0
    while done < n:
        k = rng.choice([1, 7, 300, 8192])
        lat = [int(v * 1000) for v in latency_stream(rng, k)]
        all_bc += [x / 1e3 for x in lat]
        if k == 1:
            stats.add_stages((10 ** 6 + done, 0), stages, [0, 1000, 1000 + lat[0]], counted)
        else:
            dts = array("q")
            for x in lat:
                dts.extend((0, 1000, 1000 + x))
            stats.add_bulk((10 ** 6 + done, 0), stages, counted, dts, k)
        done += k
        held = sum(len(v) for v in stats._gaps.values()) + \
            sum(len(h.pos) + len(h.neg) for h in stats._hists.values())
        assert held <= 2 * analysis.EXACT_MAX + 64 * 48 + 8192
    n = done
    segs = {(s["from"], s["to"]): s for s in stats.segments()}
    bc = segs[("b", "c")]
    assert bc["approx"] and bc["count"] == len(all_bc) == n
    assert bc["max_us"] == max(all_bc)
    assert abs(bc["mean_us"] - fsum(all_bc) / n) <= 1e-9 * bc["mean_us"]
    for q, key in ((0.5, "p50_us"), (0.9, "p90_us"), (0.99, "p99_us")):
        assert close_to(bc[key], exact(all_bc, (q,))[0])
    assert segs[("a", "b")]["count"] == 1000 + n and segs[("a", "b")]["approx"]
    assert analysis.APPROX_NOTE in analysis.format_segments(stats.segments())
    assert sum(c for _v, c in stats.latency_counts("b", "c")) == n


def naive_lost(entries, lost_ids, suspect):
    """What Aggregate.close did with its list of every lost packet (the reference)."""
    s = Summary()
    for pid, key, fields in entries:
        if suspect or pid in lost_ids:
            s.add_group(pid, "incomplete", None, None)
        else:
            s.add_group(pid, "lost", key, fields)
    return ties(s.result())


def ties(result):
    """Groups of equal count and lowest ID (one ID at two places) in one order: which comes
    first depends on the order packets were added, live as before."""
    result["lost"].sort(key=lambda g: (-g["count"], g["ids"][0], g["hook"]))
    return result


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 2)), max_size=300),
       st.sets(st.integers(0, 70), max_size=12), st.booleans(), st.integers(0, 3))
def test_lost_groups_count_as_the_list_of_every_lost_packet_did(pkts, lost, suspect, run):
    """Exact (as the list of every lost packet was) within LOST_IDS; past it too when the
    tracer lost no event of a known ID; else the packets past it are `incomplete`."""
    sample.LOST_IDS, budget = [1 << 20, 1, 7, 64][run], sample.LOST_IDS
    try:
        agg = sample.Aggregate()
        entries = []
        for pid, g in pkts:
            pid += 1000 * run * (pid % 3)   # runs, gaps and repeats
            fields = {"hook": "h%d" % g, "dev": "d", "netns": g, "netns_name": None}
            p = {"id": pid, "first_ns": 1, "verdict": "lost", "last": fields,
                 "path": [dict(fields, t_ns=1)]}
            agg.add_packet(p)
            entries.append((pid, ("h%d" % g, "d", g), fields))
        lost_ids = {x + 1000 * run * (x % 3): 1 for x in lost}
        agg.close(lost_ids, suspect)
        got = ties(agg.summary.result())
        if suspect or not lost_ids or len(entries) <= sample.LOST_IDS:
            assert got == naive_lost(entries, lost_ids, suspect)
            assert agg.unchecked == 0
        else:   # past the budget: the doubt
            kept = entries[:sample.LOST_IDS]
            want = naive_lost(kept, lost_ids, suspect)
            rest = len(entries) - len(kept)
            assert got["verdicts"]["incomplete"] == want["verdicts"]["incomplete"] + rest
            assert got["verdicts"]["lost"] == want["verdicts"]["lost"]
            assert agg.unchecked == rest
    finally:
        sample.LOST_IDS = budget


def drop_flood(n, start=1):
    """n summary records of a flood: drops at one point, losses at another, latencies spread
    (templates patched: id, first_ts and each hop's dt)."""
    tmpl = {DROP: path_record(1, 5, DROP, reason=3, location=0x9e), None: path_record(1, 3)}
    id_off, ts_off = records.PATH.offset("id"), records.PATH.offset("first_ts")
    dt_off = records.HOP.offset("dt")
    rng = random.Random(start)
    for pid in range(start, start + n):
        rec = bytearray(tmpl[DROP] if pid % 5 else tmpl[None])
        struct.pack_into("<Q", rec, id_off, pid)
        struct.pack_into("<Q", rec, ts_off, 10 ** 12 + pid * 1000)
        t = 0
        for h in range((len(rec) - records.PATH_HDR) // records.HOP_SIZE):
            struct.pack_into("<I", rec, records.PATH_HDR + h * records.HOP_SIZE + dt_off, t)
            t += rng.randrange(1000, 40000)
        yield bytes(rec)


def held(stream):
    """What a live stream holds of its aggregates (values, buckets, IDs, runs, groups)."""
    agg = stream.agg
    paths = agg.paths
    return (sum(len(v) for v in paths._gaps.values()) + sum(len(r) for r in paths._runs.values())
            + sum(len(h.pos) + len(h.neg) for h in paths._hists.values())
            + sum(len(g.ids) for g in agg.lost.values())
            + len(agg.ids.buf) + len(agg.ids.starts) + len(stream.streamed_ids.starts)
            + sum(len(s.dts) for s in agg._shapes) + len(stream.raw) + len(stream.sampler))


def test_a_long_live_flood_holds_the_same_whatever_its_length(monkeypatch):
    """The live pipeline (summary records -> PacketStream -> sample.Aggregate) over 360k drops
    and losses: what it holds stops growing once the segments are past EXACT_MAX (and the lost
    packets' IDs past LOST_IDS, made small here), while the counts stay exact."""
    monkeypatch.setattr(sample, "LOST_IDS", 20_000)
    pipe = pipeline.LivePipeline(records.PathDecoder(HOOKS, REASONS, symbolize), lambda: NAMES,
                                 summary=True)
    now = [0]
    pipe.stream.clock = lambda: now[0]
    sizes, n, batch = [], 360_000, 30_000
    t0 = time.monotonic()
    for b in range(0, n, batch):
        for rec in drop_flood(batch, 1 + b):
            pipe.on_record(rec)
        now[0] += 2 * 10 ** 9               # past the settle window: all finished
        pipe.flush()
        pipe.flush()
        sizes.append(held(pipe.stream))
    assert time.monotonic() - t0 < 9
    # bounded: the second half holds no more than the first (the histograms took over)
    half = len(sizes) // 2
    assert max(sizes[half:]) <= max(sizes[:half]), sizes
    # at most: EXACT_MAX values per segment (5) and buffered IDs, a batch of records waiting
    assert max(sizes) < 2 * batch + 7 * analysis.EXACT_MAX, sizes
    assert len(pipe.stream.agg.paths._gaps) == 5
    pipe.settle()
    packets, end = pipe.end(dict(lost=0, unreachable=0), {})
    assert not end.get("warnings")
    s = pipe.stream.agg.summary.result()
    assert s["packets"] + len(packets) == n
    lost = sum(1 for pid in range(1, n + 1) if pid % 5 == 0)
    assert s["verdicts"]["lost"] + sum(p["verdict"] == "lost" for p in packets) == lost
    assert s["verdicts"]["dropped"] + sum(p["verdict"] == "dropped" for p in packets) == n - lost
    segs = pipe.stream.agg.paths.segments()
    assert segs[0]["approx"] and segs[0]["count"] > analysis.EXACT_MAX


def test_two_million_packets_of_a_shape_in_bounded_memory(monkeypatch):
    """sample.Aggregate as a live trace feeds it (add_shape per record, fold per flush): 1.6M
    drops and 0.4M losses; what it holds (values, buckets, IDs) stays flat once the lost
    packets' IDs fill their budget (made 100k here), counts exact, percentiles within HIST_ERROR of the exact ones."""
    monkeypatch.setattr(sample, "LOST_IDS", 100_000)
    rng = random.Random(5)
    stages = ["q@eth0/a", "r@vx/b", "s@br/b", "t@veth/c", "kfree_skb/c"]
    drop = sample.Shape("dropped", ("dropped", "NO_SOCKET", "udp+0x1", 3),
                        {"reason": "NO_SOCKET", "location": "udp+0x1", "netns": 3,
                         "netns_name": "c"}, stages, [True] * 4 + [False])
    lost = sample.Shape("lost", ("other", "r", "vx", 2),
                        {"hook": "r", "dev": "vx", "netns": 2, "netns_name": "b"},
                        stages[:2], [True, True])
    variants = [tuple(sorted(rng.randrange(0, 300_000) for _ in range(5))) for _ in range(97)]
    agg = sample.Aggregate()
    marks = []
    pid = 0
    add = agg.add_shape
    t0 = time.monotonic()
    for flush in range(40):
        for i in range(50_000):
            pid += 1
            if pid % 5:
                add(drop, pid, 10 ** 9 + pid, variants[pid % 97])
            else:
                add(lost, pid, 10 ** 9 + pid, variants[pid % 97][:2])
        agg.fold()
        if agg.ids.due():
            agg.ids.compact()
        paths = agg.paths
        marks.append(sum(len(v) for v in paths._gaps.values()) +
                     sum(len(r) for r in paths._runs.values()) +
                     sum(len(h.pos) + len(h.neg) for h in paths._hists.values()) +
                     sum(len(g.ids) for g in agg.lost.values()) +
                     len(agg.ids.buf) + len(agg.ids.starts) + len(agg.ids.seen or ()))
    assert time.monotonic() - t0 < 8
    assert max(marks[25:]) <= max(marks[12:25]), marks     # (the lost budget full at 10)
    assert max(marks) < 100_000 + 4 * analysis.EXACT_MAX + (1 << 16), marks
    n = pid
    agg.close({}, False)
    s = agg.summary.result()
    assert s["packets"] == n and s["verdicts"]["lost"] == n // 5
    assert s["drops"][0]["count"] == n - n // 5 and s["drops"][0]["ids"] == [1, 2, 3, 4, 6]
    assert s["lost"][0]["count"] == n // 5 and s["lost"][0]["ids"] == [5, 10, 15, 20, 25]
    counts = [0] * 97
    for p in range(1, n + 1):
        counts[p % 97] += 1
    vals = sorted(((variants[k][1] - variants[k][0]) / 1e3, c) for k, c in enumerate(counts))
    flat = [v for v, c in vals for _ in range(c)]
    seg = next(g for g in agg.paths.segments() if g["to"] == stages[1])
    assert seg["count"] == n and seg["approx"] and seg["max_us"] == flat[-1]
    for q, key in ((0.5, "p50_us"), (0.9, "p90_us"), (0.99, "p99_us")):
        assert close_to(seg[key], analysis._pct(flat, q))
