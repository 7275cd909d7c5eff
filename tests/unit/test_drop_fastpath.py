"""A dropped packet's record costs about what a delivered one does (#17): sample.RawPaths keys a
record's shape on one unpack of its static fields, worked out once per key; and the records held
unfinished are bounded (stream.MAX_RAW: past it a record is shed, counted, and the report says
so). Pure logic on recorded records."""
import random

from pktpath.events import records
from pktpath.process import pipeline, reconstruct, sample, analysis
from pktpath.process.stream import PacketStream
from tests.unit.test_pipeline import DELIVER, DROP, HOOKS, NAMES, REASONS, T0, symbolize
from tests.unit.test_sample import COUNTERS, flood, live

DEVS = [b"eth0", b"vxlan0", b"veth1", b""]
NETNS = [4026532301, 4026532302, 4026532303]
HOOK_IDS = [0, 1, 2, 3]


def random_record(rng, pid):
    """A pp_path record drawn from small alphabets (so that shapes repeat and differ in one
    field), some not plain: a hop slot not set, hops out of order, a drop before the last hop,
    nhops not what is carried, a delivery."""
    n = rng.randint(1, 6)
    final = rng.choice([0, DROP, DROP, DROP, DELIVER])
    dts = [0]
    for _ in range(n - 1):
        dts.append(dts[-1] + rng.randint(1, 5000))
    if n > 1 and rng.random() < 0.05:      # two hops out of time order (distinct times: two
        j = rng.randrange(n - 1)            # hops of one path never share one)
        dts[j], dts[j + 1] = dts[j + 1], dts[j]
    hops = []
    for j in range(n):
        last = j == n - 1
        kind = final if last and final == DROP else (DROP if rng.random() < 0.03 else 0)
        flags = records.F_HOP_SET if rng.random() > 0.03 else 0
        hops.append(records.HOP.pack(dt=dts[j], hook=rng.choice(HOOK_IDS), kind=kind, flags=flags,
                                     netns=rng.choice(NETNS), dev=rng.choice(DEVS),
                                     cpu=rng.randint(0, 1), ifindex=rng.randint(1, 9)))
    nhops = n if rng.random() > 0.03 else n + 1
    head = records.PATH.pack({}, first_ts=T0 + pid * 1000, id=pid, final_kind=final,
                             reason=rng.choice([2, 3, 6]), location=rng.choice([0x9e, 0x1a0]),
                             stack_id=-1, nhops=nhops, skb=0xffff888000000000 + pid)
    return head + b"".join(hops)


def reference(data, decoder):
    """What a record's packet gives (events -> reconstruct), and whether it is plain (the rule
    RawPaths states: every hop set, hops in time order, the only drop the last hop, all hops
    carried, not a delivery)."""
    h = records.PATH.unpack(data)
    n = (len(data) - records.PATH_HDR) // records.HOP_SIZE
    hops = [records.HOP.unpack(data[records.PATH_HDR + j * records.HOP_SIZE:])
            for j in range(n)]
    dts = [x["dt"] for x in hops]
    plain = h["final_kind"] != records.KIND_DELIVER and h["nhops"] == n and \
        all(x["flags"] & records.F_HOP_SET for x in hops) and dts == sorted(dts) and \
        all(x["kind"] == 0 for x in hops[:-1]) and hops[-1]["kind"] in (0, h["final_kind"])
    pkts = reconstruct.build_packets(decoder.decode_path(data), NAMES)
    return plain, pkts


def test_shapes_read_from_the_bytes_are_what_the_packets_give():
    decoder = records.PathDecoder(HOOKS, REASONS, symbolize)
    raw = sample.RawPaths(decoder)
    names = reconstruct.ns_names(NAMES)
    rng = random.Random(17)
    seen_plain = 0
    for pid in range(1, 3001):
        data = random_record(rng, pid)
        plain, pkts = reference(data, decoder)
        got = raw.read(data, names)
        assert (got is not None) == plain, (pid, got, pkts)
        if got is None:
            continue
        seen_plain += 1
        (p,) = pkts
        rid, first, shape, dts = got
        assert (rid, first) == (p["id"], p["first_ns"])
        assert shape.verdict == p["verdict"] and shape.group == sample.group_of(p)
        assert shape.stages == [analysis.stage(hop) for hop in p["path"]]
        assert shape.counted == [hop["hook"] not in analysis.DROP_HOOKS for hop in p["path"]]
        assert [first + d - dts[0] for d in dts] == [hop["t_ns"] for hop in p["path"]]
        # the shape found ahead (the stream's preread) reads the same
        assert raw.read_as(data, raw.shape_of(data, names)) == got
    assert seen_plain > 1000 and len(raw._shapes) > 100


def test_a_randomized_mix_reports_the_same_raw_and_expanded(tmp_path):
    """The live report of raw records (plain ones counted from their bytes, sampled) equals the
    report of its recording (every record expanded into events): counts, groups, samples."""
    rng = random.Random(5)
    recs = flood() + [random_record(rng, pid) for pid in range(3001, 5001)]
    text, js, _ = live(recs, rec_path=tmp_path / "rec.jsonl")
    fast, fjs, _ = live(recs)
    assert fast == text
    assert sorted(fjs.splitlines()) == sorted(js.splitlines())


def test_past_the_bound_records_of_new_ids_are_shed_and_the_report_says_so():
    recs = flood()
    pipe = pipeline.LivePipeline(records.PathDecoder(HOOKS, REASONS, symbolize), lambda: NAMES,
                                 summary=True)
    pipe.stream.max_raw = 500
    pipe.on_record = pipe.stream.record_adder(records.path_key, records.KIND_DELIVER,
                                              records.PATH_KEY_FIELDS)
    for data in recs[:600]:
        pipe.on_record(data)
    assert len(pipe.stream.raw) == 500 and pipe.stream.shed == 100
    # a second record of an ID held is kept (its verdict is never a guess)
    pipe.on_record(recs[9])
    assert pipe.stream.shed == 100 and pipe.stream.raw[10].__class__ is list
    # the general path (add_record) keeps the same bound
    pipe.stream.add_record(99999, recs[0], 5, False)
    assert pipe.stream.shed == 101 and 99999 not in pipe.stream.raw
    pipe.flush()
    pipe.settle()
    packets, end = pipe.end(COUNTERS, {})
    assert end["shed"] == 101
    assert any("101 records were read past the bound" in w for w in end["warnings"])
    verdicts = {}
    for p in packets:
        verdicts[p["verdict"]] = verdicts.get(p["verdict"], 0) + 1
    assert "lost" not in verdicts        # a doubt: every `lost` is `incomplete`
    assert pipeline.untied(end) == 101
    # a recording's end line carries it: `report` applies the same policy to it
    end2 = pipeline.settle_end(dict(end, warnings=[]))
    assert pipeline.untied(end2) == 101
    assert any("records were read past the bound" in w for w in end2["warnings"])


def test_the_bound_is_not_reached_by_a_flood_the_tracer_keeps_up_with():
    st = PacketStream(lambda: {}, expand=lambda r: [],
                      raw_paths=sample.RawPaths(records.PathDecoder(HOOKS, REASONS, symbolize)))
    add = st.record_adder(records.path_key, records.KIND_DELIVER, records.PATH_KEY_FIELDS)
    for data in flood():
        add(data)
    st.flush(force=True)
    assert st.shed == 0 and not st.raw
