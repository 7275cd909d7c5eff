"""#18, packet keys from headers: 64-bit keys through the records, packets that carry their key,
protocol and flow (events/schema.py), and recordings of several hosts merged by header key."""
import io
import json

from pktpath.events import records
from pktpath.events.recording import RecordingWriter
from pktpath.events import schema
from pktpath.output import report
from pktpath.process import pipeline, reconstruct
from test_events import _a, _path

KEY = 0xF3A1_0000_0000_0000 + 12345        # a header key: all 64 bits used
TCP, UDP = 6, 17


def _flow(prefix, src, dst, sport, dport, proto):
    return {prefix + "family": 4, prefix + "protocol": proto, prefix + "saddr": _a(src),
            prefix + "daddr": _a(dst), prefix + "sport": sport, prefix + "dport": dport}


def _delivered(pid, proto=UDP, encap=True):
    hops = [dict(dt=i * 1000, hook=i, kind=2 if i == 2 else 0, netns=4026531840 + i, ifindex=i,
                 flags=records.F_HOP_SET | (records.F_ENCAP if encap and i == 1 else 0), cpu=0,
                 dev=b"eth0") for i in range(3)]
    return _path([_flow("inner.", "198.51.100.1", "198.51.100.2", 40000, 5000, proto),
                  _flow("tun.outer.", "192.0.2.1", "192.0.2.2", 51000, 4789, UDP)],
                 hops, first_ts=10 ** 9, id=pid, final_kind=2, port=5000, stack_id=-1,
                 tun__type=1 if encap else 0, tun__vni=42, nhops=3)


def test_records_carry_64_bit_keys():
    assert records.PATH.offsets["id"] % 8 == 0 and records.EVENT.offsets["id"] % 8 == 0
    rec = _delivered(KEY)
    assert records.path_key(rec) == (KEY, 3, 2)
    assert {e["id"] for e in records.PathDecoder(["a", "b", "c"]).decode_path(rec)} == {KEY}
    ev = records.Decoder(["a"], key="headers").decode(records.EVENT.pack(
        _flow("inner.", "198.51.100.1", "198.51.100.2", 40000, 443, TCP), id=KEY, kind=0))
    assert (ev["id"], ev["key"], ev["proto"], ev["dst"]) == (KEY, "headers", "tcp",
                                                             "198.51.100.2:443")


def test_keyed_packets_carry_key_proto_and_flow():
    for key, proto, name in (("headers", TCP, "tcp"), ("payload", UDP, "udp")):
        dec = records.PathDecoder(["a", "b", "sk_data_ready"], key=key)
        rec = _delivered(KEY if key == "headers" else 7, proto)
        pkt = reconstruct.build_packets(dec.decode_path(rec))[0]
        assert schema.check(pkt) == []
        assert (pkt["key"], pkt["proto"], pkt["src"], pkt["dst"]) == \
            (key, name, "198.51.100.1:40000", "198.51.100.2:5000")
        # the fast line of a plain delivery is the general path's, to the byte
        ref = io.StringIO()
        report.write_json([pkt], ref)
        assert records.DeliveredJSON(dec)(rec, {}) == ref.getvalue()


def test_unkeyed_decoders_and_old_recordings_add_nothing():
    """Recordings made before keys could come from headers have no key: their packets are
    what they were (tests/golden)."""
    dec = records.PathDecoder(["a", "b", "c"])
    pkt = reconstruct.build_packets(dec.decode_path(_delivered(7)))[0]
    assert not {"key", "proto", "src", "dst"} & set(pkt) and schema.check(pkt) == []


def _recording(path, host, clock, events):
    with open(path, "w") as fh:
        w = RecordingWriter(fh)
        w.meta({"host": host, "clock": clock, "hooks": [], "netns_names": {}})
        for ev in events:
            w.event(ev)
        w.end({"lost": 0, "lost_ids": {}})


def test_two_hosts_merge_by_header_key(tmp_path):
    """Each host's tracer computes the same key from the same headers: `report a b` joins the
    halves of each packet's path, and two packets whose keys differ only in the high 32 bits
    stay apart."""
    dec = records.PathDecoder(["net_dev_queue", "net_dev_start_xmit", "netif_receive_skb",
                               "sk_data_ready"], key="headers")
    other = KEY ^ (1 << 40)
    a_evs, b_evs = [], []
    for pid in (KEY, other):
        hops = lambda kinds, encaps: [  # noqa: E731
            dict(dt=i * 5000, hook=h, kind=k, netns=4026532000 + h, ifindex=1, cpu=0,
                 flags=records.F_HOP_SET | (records.F_ENCAP if e else 0), dev=b"eth0")
            for i, (h, k, e) in enumerate(zip(*kinds, encaps))]
        flows = [_flow("inner.", "198.51.100.1", "198.51.100.2", 40000, 5000, UDP),
                 _flow("tun.outer.", "192.0.2.1", "192.0.2.2", 51000, 4789, UDP)]
        # host A: seen leaving, encapsulated on the underlay; never delivered there (lost)
        a = _path(flows, hops(((0, 1), (0, 0)), (False, True)), first_ts=1000, id=pid,
                  final_kind=0, stack_id=-1, tun__type=1, tun__vni=42, nhops=2)
        # host B: received encapsulated, delivered
        b = _path(flows, hops(((2, 3), (0, 2)), (True, False)), first_ts=2000, id=pid,
                  final_kind=2, port=5000, stack_id=-1, tun__type=1, tun__vni=42, nhops=2)
        a_evs += dec.decode_path(a)
        b_evs += dec.decode_path(b)
    for ev in a_evs + b_evs:
        ev.pop("skb")   # two hosts: two skbs, not one
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _recording(pa, "A", {"mono_ns": 0, "wall_ns": 10 ** 12}, a_evs)
    _recording(pb, "B", {"mono_ns": 0, "wall_ns": 10 ** 12 + 100_000}, b_evs)
    packets, _meta, _end = pipeline.recorded([str(pa), str(pb)])
    packets = list(packets)
    assert [p["id"] for p in packets] == sorted((KEY, other))
    for p in packets:
        assert schema.check(p) == []
        assert p["verdict"] == "delivered" and p["key"] == "headers" and p["proto"] == "udp"
        assert [h["host"] for h in p["path"]] == ["A", "A", "B", "B"]
        assert (p["src"], p["dst"]) == ("198.51.100.1:40000", "198.51.100.2:5000")
    out = io.StringIO()
    report.write_json(packets, out)
    assert {json.loads(line)["id"] for line in out.getvalue().splitlines()} == {KEY, other}
