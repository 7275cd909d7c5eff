"""PacketStream: settle, bounded memory and the raw-record fast path (pure, fake clock)."""
from pktpath.process import stream


class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def ev(pid, t, kind="pass", hook="h", skb=1):
    return {"id": pid, "t_ns": t, "kind": kind, "hook": hook, "skb": skb, "netns": 1,
            "dev": "d", "port": 5000 if kind == "deliver" else None}


def make(keep=1, fast=True, json_out=None):
    clock = Clock()
    expanded = []

    def expand(record):
        expanded.append(record)
        return list(record)          # a "record" here is a tuple of its events (bytes, live)

    s = stream.PacketStream(lambda: {}, json_out, keep_delivered=keep, settle_ns=10,
                            clock=clock, expand=expand, fast=fast)
    return s, clock, expanded


def finished(s):
    """The packets finished so far: kept delivered ones, then the sample of the others."""
    return s.packets + [item[1] for item in s.sampler.kept() if item[0] == "pkt"]


def test_quiet_ids_finish_in_arrival_order_and_recent_ones_wait():
    s, clock, _ = make(keep=10)
    s.add(ev(1, 100))
    clock.t = 5
    s.add(ev(2, 200))
    clock.t = 12                     # id 1 quiet for 12, id 2 for 7
    s.flush()
    assert [p["id"] for p in finished(s)] == [1]
    clock.t = 5 + 11
    s.flush()
    assert [p["id"] for p in finished(s)] == [1, 2]


def test_new_event_keeps_id_open():
    s, clock, _ = make(keep=10)
    s.add(ev(1, 100))
    clock.t = 9
    s.add(ev(1, 110, kind="deliver"))
    clock.t = 15
    s.flush()
    assert s.packets == []
    clock.t = 20
    s.flush()
    assert s.packets[0]["verdict"] == "delivered" and s.packets[0]["events"] == 2


def test_delivered_records_past_the_quota_are_counted_without_expanding():
    s, clock, expanded = make(keep=1)
    for pid in (1, 2, 3):
        rec = (ev(pid, 100), ev(pid, 110, kind="deliver"))
        s.add_record(pid, rec, 2, True)
    clock.t = 100
    s.finish()
    assert [p["id"] for p in s.packets] == [1]   # the kept one
    assert s.streamed == 2 and s.events == 6
    assert len(expanded) == 1


def test_drops_and_lost_not_plain_are_expanded_when_they_finish_and_sampled():
    """(Plain summary records are sampled raw and aggregated from their bytes: test_sample.py.)"""
    s, clock, expanded = make(keep=0)
    s.add_record(1, tuple([ev(1, 100), ev(1, 110, kind="drop")]), 2, False)
    s.add_record(2, tuple([ev(2, 100)]), 1, False)                       # swept: lost
    s.add_record(3, tuple([ev(3, 100), ev(3, 110, kind="deliver")]), 2, True)
    s.add_record(3, tuple([ev(3, 500, kind="drop")]), 1, False)           # freed after delivery
    clock.t = 100
    s.flush()                        # closes the bucket these arrived in
    assert s.deferred == [] and len(s.raw) == 3
    clock.t = 200
    s.flush()                        # that bucket is now quiet for settle_ns
    assert len(expanded) == 2 and s.packets == [] and s.deferred == []
    assert s.sampler.offered == 2
    s.finish()
    verdicts = {p["id"]: p["verdict"] for p in s.packets}
    assert verdicts == {1: "dropped", 2: "lost"}
    assert s.streamed == 1 and len(expanded) == 2


def test_two_records_of_a_kept_packet_make_one_packet():
    s, clock, _ = make(keep=5)
    s.add_record(3, tuple([ev(3, 100), ev(3, 110, kind="deliver")]), 2, True)
    s.add_record(3, tuple([ev(3, 500, kind="drop")]), 1, False)
    s.finish()
    assert len(s.packets) == 1
    p = s.packets[0]
    assert p["verdict"] == "delivered" and p.get("freed_after_delivery")


def test_no_fast_path_when_events_are_needed():
    s, _, expanded = make(keep=0, fast=False)
    s.add_record(1, tuple([ev(1, 100, kind="deliver")]), 1, True)
    s.finish()
    assert s.streamed == 1 and len(expanded) == 1


def test_a_later_record_keeps_its_id_open_across_buckets():
    s, clock, _ = make(keep=5)
    s.add_record(4, tuple([ev(4, 100), ev(4, 110, kind="deliver")]), 2, True)
    clock.t = 100
    s.flush()
    s.add_record(4, tuple([ev(4, 900, kind="drop")]), 1, False)   # arrives in the next bucket
    clock.t = 111
    s.flush()                        # the first bucket is due, but 4 arrived again since
    assert s.deferred == [] and 4 in s.raw
    clock.t = 200
    s.flush()
    s.finish()
    assert len(s.packets) == 1 and s.packets[0]["events"] == 3


def test_json_stream_writes_lone_deliveries_from_the_record_else_expands():
    import io
    out = io.StringIO()
    clock = Clock()
    expanded = []

    def expand(record):
        expanded.append(record)
        return list(record)

    def json_line(record, names):
        return None if record[0]["id"] == 2 else "fast %d\n" % record[0]["id"]

    s = stream.PacketStream(lambda: {}, out, keep_delivered=0, settle_ns=10, clock=clock,
                            expand=expand, fast=True, json_line=json_line)
    for pid in (1, 2):
        s.add_record(pid, (ev(pid, 100), ev(pid, 110, kind="deliver")), 2, True)
    s.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "fast 1"                     # straight from the record
    assert '"id": 2' in lines[1] or '"id":2' in lines[1]   # declined: the general path
    assert s.streamed == 2 and len(expanded) == 1


def test_record_adder_is_add_record_in_one_call():
    """The live handler (record_adder) leaves the stream exactly as add_record does, including
    a second record of an ID and a record that is not a delivery."""
    recs = [(1, 3, "D"), (2, 2, "X"), (1, 1, "D"), (3, 4, "D"), (2, 5, "D")]
    key = lambda rec: rec   # noqa: E731  (a "record" here is its own key)
    a, clock_a, _ = make(keep=10)
    b, clock_b, _ = make(keep=10)
    add = b.record_adder(key, "D")
    for i, rec in enumerate(recs):
        clock_a.t = clock_b.t = i
        a.add_record(rec[0], rec, rec[1], rec[2] == "D")
        add(rec)
        if i == 2:
            a.flush()
            b.flush()
    assert b.raw == a.raw and b._ids == a._ids and b._again == a._again
    assert b.events == a.events == 15


def test_kept_deliveries_built_straight_from_records_equal_the_general_path():
    """settle builds a kept lone plain delivery with `lone_packet` (records.DeliveredJSON
    .packet); an ID kept twice (reused after its first packet finished) and a record that is
    not plain go through the events: the packets are those of the general path."""
    from pktpath.events import records
    from tests.unit.test_pipeline import DELIVER, HOOKS, NAMES, REASONS, T0, path_record, \
        symbolize
    recs = [path_record(7, 5, DELIVER), path_record(8, 5, DELIVER),
            path_record(7, 5, DELIVER, t=T0 + 5 * 10 ** 9), path_record(9, 4, DELIVER)]
    odd = bytearray(recs[3])                         # a hop slot lost to a race: not plain
    odd[records.PATH_HDR + records.HOP_SIZE + records.HOP.offset("flags")] = 0
    recs[3] = bytes(odd)
    out = []
    for fast in (False, True):
        dec = records.PathDecoder(HOOKS, REASONS, symbolize)
        built = []

        def lone(data, names, f=records.DeliveredJSON(dec).packet):
            p = f(data, names)
            built.append(p is not None)
            return p
        clock = Clock()
        s = stream.PacketStream(lambda: NAMES, keep_delivered=10, settle_ns=10, clock=clock,
                                expand=dec.decode_path, lone_packet=lone if fast else None)
        for i, r in enumerate(recs):
            pid, hops, final = records.path_key(r)
            s.add_record(pid, r, hops, final == records.KIND_DELIVER)
            clock.t += 100
            s.flush()                                # each finished before the next
        out.append(s.finish())
        if fast:
            assert built == [True, True, True, False]
    assert out[0] == out[1] and [p["id"] for p in out[1]] == [7, 7, 8, 9]
    assert [list(p) for p in out[0]] == [list(p) for p in out[1]]


def test_record_adder_with_key_fields_inline_is_path_key():
    """record_adder(..., records.PATH_KEY_FIELDS) (the live handler) reads each record as
    records.path_key does, a record claiming more hops than it carries included."""
    from pktpath.events import records
    from tests.unit.test_pipeline import DELIVER, DROP, path_record
    short = bytearray(path_record(4, 5, DELIVER))
    short[records.NHOPS_OFFSET:records.NHOPS_OFFSET + 4] = (9).to_bytes(4, "little")
    recs = [path_record(1, 5, DELIVER), path_record(2, 3, DROP, reason=3), path_record(3, 2),
            path_record(1, 4, DROP, reason=3), bytes(short)]
    a, _, _ = make(keep=10)
    b, _, _ = make(keep=10)
    add = b.record_adder(records.path_key, records.KIND_DELIVER, records.PATH_KEY_FIELDS)
    for r in recs:
        pid, hops, final = records.path_key(r)
        a.add_record(pid, r, hops, final == records.KIND_DELIVER)
        add(r)
    assert b.raw == a.raw and b._ids == a._ids and b._again == a._again
    assert b._unplain == a._unplain == [2, 3]
    assert b.events == a.events == sum(records.path_key(r)[1] for r in recs)


def test_a_retransmission_finished_after_its_first_copy_is_marked():
    """#18: a TCP segment keyed by headers dropped, then retransmitted after the first copy's
    packet was finished (RTO backoff beyond the settle window): marked as build_packets marks a
    retransmission finished with its first copy (as `report` of the recording does), only for
    the same key and flow, and only with FirstCopies (a live trace of TCP header keys)."""
    from pktpath.process import reconstruct

    def tcp(pid, t, kind, skb, dst="198.51.100.2:5007"):
        return dict(ev(pid, t, kind, skb=skb), key="headers", proto="tcp",
                    src="198.51.100.1:40000", dst=dst)

    for copies in (reconstruct.FirstCopies(), None):
        clock = Clock()
        s = stream.PacketStream(lambda: {}, keep_delivered=10, settle_ns=10, clock=clock,
                                fast=False, first_copies=copies)
        s.add(tcp(7, 100, "pass", 1))
        s.add(tcp(7, 110, "drop", 1))
        clock.t = 20
        s.flush()                                   # the first copy finished: dropped
        s.add(tcp(7, 5000, "pass", 2))
        s.add(tcp(7, 5010, "deliver", 2))
        s.add(tcp(7, 5020, "pass", 3, dst="198.51.100.9:5007"))    # another flow, same key
        clock.t = 40
        s.flush()
        got = sorted(finished(s), key=lambda p: p["first_ns"])
        assert [p["verdict"] for p in got] == ["dropped", "delivered", "lost"]
        marks = [p.get("retransmission_of") for p in got]
        if copies is None:
            assert marks == [None, None, None]      # what a live trace did before
        else:
            assert marks == [None, {"first_ns": 100}, None]
