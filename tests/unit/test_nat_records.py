"""A packet rewritten on its way (NAT: REDIRECT 5000 -> 5001 in the receiving container) stays one
packet, and its record shows where the rewrite was first seen (issue #18): from recorded kernel
records of both modes (summary: one pp_path with nat_hop and the new flow; events: each event
carries its own flow)."""
import json
import socket

from pktpath.events import records
from pktpath.events import schema
from pktpath.output import report
from pktpath.process import reconstruct

HOOKS = ["net_dev_queue", "netif_receive_skb", "sk_data_ready"]
NAMES = {1: "pp-ctrA", 2: "pp-hostB", 3: "pp-ctrB"}
SRC, DST = "198.51.100.1", "198.51.100.2"
BEFORE, AFTER = "%s:40000 > %s:5000" % (SRC, DST), "%s:40000 > %s:5001" % (SRC, DST)


def _flow(prefix, src, dst, sport, dport):
    return {prefix + "family": 4, prefix + "protocol": 17,
            prefix + "saddr": socket.inet_aton(src) + bytes(12),
            prefix + "daddr": socket.inet_aton(dst) + bytes(12),
            prefix + "sport": sport, prefix + "dport": dport}


def _hop(hook, kind, dt, netns, flags=0):
    return dict(hook=hook, kind=kind, flags=flags | records.F_HOP_SET, dt=dt, netns=netns,
                dev=b"eth0")


def _path_record(nat_hop):
    """ctrA -> hostB -> ctrB (netif_receive_skb, before PREROUTING) -> delivered on 5001."""
    hops = [_hop(0, 0, 0, 1), _hop(1, 0, 10, 2), _hop(1, 0, 20, 3), _hop(2, 2, 30, 3)]
    v = _flow("inner.", SRC, DST, 40000, 5000)
    kw = {}
    if nat_hop:
        v.update(_flow("nat.", SRC, DST, 40000, 5001))
        kw["nat_hop"] = nat_hop
    return records.PATH.pack(v, first_ts=1000, skb=7, id=42, final_kind=2, port=5001, nhops=4,
                             stack_id=-1, **kw) + b"".join(records.HOP.pack(h) for h in hops)


def test_summary_path_shows_the_nat_hop():
    data = _path_record(nat_hop=3)
    evs = records.PathDecoder(HOOKS).decode_path(data)
    (pkt,) = reconstruct.build_packets(evs, NAMES)
    assert schema.check(pkt) == []
    assert pkt["verdict"] == "delivered" and pkt["delivered"]["port"] == 5001
    assert pkt["nat"] == [{"hop": 3, "from": BEFORE, "to": AFTER}]
    assert [h["dst"] for h in pkt["path"]] == ["%s:5000" % DST] * 3 + ["%s:5001" % DST]
    # the fast JSON writer leaves such a record to the general path
    assert records.DeliveredJSON(records.PathDecoder(HOOKS))(data, NAMES) is None
    assert list(json.loads(schema.packet_line(pkt))) == list(pkt)
    text = report.render_timeline([pkt])
    nat_rows = [line for line in text.splitlines() if "[NAT]" in line]
    assert len(nat_rows) == 1 and "sk_data_ready [NAT]" in nat_rows[0] and "5001" in nat_rows[0]


def test_summary_path_without_nat_has_no_nat_key():
    data = _path_record(nat_hop=0)
    (pkt,) = reconstruct.build_packets(records.PathDecoder(HOOKS).decode_path(data), NAMES)
    assert "nat" not in pkt and schema.check(pkt) == []
    assert "[NAT]" not in report.render_timeline([pkt])
    assert records.DeliveredJSON(records.PathDecoder(HOOKS))(data, NAMES) is not None


def _event(t, hook, kind, netns, dport, skb=0xffff888000001000, from_map=False, port=0):
    flows = _flow("inner.", SRC, DST, 40000, dport) if dport else {}
    return records.EVENT.pack(flows, ts=t, skb=skb, id=42, netns=netns, hook=hook, kind=kind,
                              flags=records.F_FROM_MAP if from_map else 0, port=port,
                              dev=b"eth0", stack_id=-1)


def test_events_mode_shows_the_nat_hop_and_skips_unparsed_sightings():
    """Each event carries its own flow; a sighting known from the skb map only (no headers
    parsed: 0.0.0.0:0) is neither a rewrite nor its end."""
    raw = [_event(1000, 0, 0, 1, 5000), _event(1010, 1, 0, 2, 0, from_map=True),
           _event(1020, 1, 0, 3, 5000), _event(1030, 2, 2, 3, 5001, port=5001)]
    dec = records.Decoder(HOOKS)
    (pkt,) = reconstruct.build_packets([dec.decode(r) for r in raw], NAMES)
    assert schema.check(pkt) == []
    assert pkt["verdict"] == "delivered" and pkt["delivered"]["port"] == 5001
    assert pkt["nat"] == [{"hop": 3, "from": BEFORE, "to": AFTER}]


def test_nat_hops_lists_each_rewrite():
    """DNAT then SNAT (two rewrites of one packet): two entries, each at its first hop."""
    hops = [{"src": "10.0.0.1:1", "dst": "10.96.0.10:53"},
            {"src": "10.0.0.1:1", "dst": "10.1.0.5:53"},
            {"src": "0.0.0.0:0", "dst": "0.0.0.0:0"},
            {"src": "192.0.2.1:9", "dst": "10.1.0.5:53"},
            {"src": "192.0.2.1:9", "dst": "10.1.0.5:53"}]
    assert reconstruct.nat_hops(hops) == [
        {"hop": 1, "from": "10.0.0.1:1 > 10.96.0.10:53", "to": "10.0.0.1:1 > 10.1.0.5:53"},
        {"hop": 3, "from": "10.0.0.1:1 > 10.1.0.5:53", "to": "192.0.2.1:9 > 10.1.0.5:53"}]
