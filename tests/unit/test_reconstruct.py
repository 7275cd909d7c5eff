"""Events -> per-packet records and verdicts, on recorded lab traces (tests/fixtures)."""
import copy
import os

import pytest

from pktpath.process.reconstruct import build_packets, mark_incomplete, summarize
from pktpath.events.recording import read_recording

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
CTR_A, HOST_A, HOST_B, CTR_B = 4026532301, 4026532302, 4026532303, 4026532304


def packets_of(name):
    meta, events, end = read_recording(os.path.join(FIXTURES, name))
    return {p["id"]: p for p in build_packets(events, end["netns_names"])}


def test_clean_vxlan_delivery():
    (pkt,) = packets_of("delivered.jsonl").values()
    assert pkt["id"] == 1 and pkt["verdict"] == "delivered" and pkt["events"] == 20
    assert pkt["delivered"] == {"netns": CTR_B, "netns_name": "pp-ctrB", "port": 5000}
    assert pkt["drop"] is None and "clone_drops" not in pkt
    assert pkt["last"] == {"hook": "sk_data_ready", "dev": "eth0", "ifindex": 2, "netns": CTR_B,
                           "netns_name": "pp-ctrB"}
    path = pkt["path"]
    assert pkt["first_ns"] == path[0]["t_ns"] and pkt["last_ns"] == path[-1]["t_ns"]
    assert [h["t_ns"] for h in path] == sorted(h["t_ns"] for h in path)
    assert path[0]["hook"] == "net_dev_queue" and path[0]["dev"] == "eth0"
    assert path[0]["netns_name"] == "pp-ctrA"
    assert {h["netns"] for h in path} == {CTR_A, HOST_A, HOST_B, CTR_B}
    encap = [h for h in path if h["encap"]]
    assert encap and all(h["vni"] == 42 and h["dev"] == "pp-ul" for h in encap)
    assert {h["outer_dst"] for h in encap} == {"192.0.2.2:4789"}
    assert all(h["outer_src"].startswith("192.0.2.1:") for h in encap)
    assert all(h["vni"] is None and h["outer_src"] is None for h in path if not h["encap"])
    assert set(path[0]) == {"t_ns", "hook", "dev", "netns", "netns_name", "cpu", "encap", "tunnel", "vni",
                            "src", "dst", "outer_src", "outer_dst"}


def test_no_socket_drop():
    pkts = packets_of("no_socket.jsonl")
    assert sorted(pkts) == [9, 10]
    for pkt in pkts.values():
        assert pkt["verdict"] == "dropped" and pkt["delivered"] is None
        assert pkt["drop"] == {"reason": "NO_SOCKET", "reason_code": 3,
                               "location": "__udp4_lib_rcv+0x2f1", "dev": "eth0",
                               "netns": CTR_B, "netns_name": "pp-ctrB"}
        assert pkt["last"]["hook"] == "kfree_skb"


def test_netfilter_drops_odd_ids_from_shuffled_events():
    pkts = packets_of("netfilter.jsonl")
    assert list(pkts) == [5, 6, 7, 8]
    for pid, pkt in pkts.items():
        times = [h["t_ns"] for h in pkt["path"]]
        assert times == sorted(times)
        if pid % 2:
            assert pkt["verdict"] == "dropped"
            assert pkt["drop"]["reason"] == "NETFILTER_DROP"
            assert pkt["drop"]["reason_code"] == 12
            assert pkt["drop"]["location"] == "nf_hook_slow+0x9e"
            assert pkt["drop"]["netns"] == CTR_B
        else:
            assert pkt["verdict"] == "delivered"


def test_vni_mismatch_dropped_on_host_b():
    for pkt in packets_of("vni.jsonl").values():
        assert pkt["verdict"] == "dropped"
        assert pkt["drop"]["reason"] == "VXLAN_VNI_NOT_FOUND"
        assert (pkt["drop"]["netns"], pkt["drop"]["netns_name"]) == (HOST_B, "pp-hostB")
        assert not any(h["netns"] == CTR_B for h in pkt["path"])


def test_lost_packet_reports_last_sighting():
    pkts = packets_of("lost.jsonl")
    assert pkts[20]["verdict"] == "delivered"
    lost = pkts[21]
    assert lost["verdict"] == "lost" and lost["drop"] is None and lost["delivered"] is None
    assert lost["last"] == {"hook": "net_dev_start_xmit", "dev": "pp-ul", "ifindex": 7,
                            "netns": HOST_A, "netns_name": "pp-hostA"}


def test_clone_delivered_wins_and_keeps_the_clone_drop():
    (pkt,) = packets_of("clone.jsonl").values()
    assert pkt["verdict"] == "delivered" and pkt["drop"] is None
    assert pkt["delivered"]["netns_name"] == "pp-ctrB"
    assert pkt["clone_drops"] == [{"reason": "NOT_SPECIFIED", "reason_code": 2,
                                   "location": "br_dev_xmit+0x1c7", "dev": "pp-brB",
                                   "netns": HOST_B, "netns_name": "pp-hostB"}]
    assert pkt["events"] == 22


def ev(pid, t, hook="h", kind="pass", **kw):
    return dict({"t_ns": t, "hook": hook, "kind": kind, "id": pid, "netns": 1, "dev": "d"}, **kw)


def test_order_ties_names_and_minimal_events():
    events = [ev(2, 50, "b"), ev(1, 10, "late"), ev(2, 50, "c"), ev(2, 40, "a"),
              ev(1, 5, "early", netns=7)]
    pkts = build_packets(events, {"7": "seven", 1: "one", "junk": "x"})
    assert [p["id"] for p in pkts] == [1, 2]
    assert [h["hook"] for h in pkts[1]["path"]] == ["a", "b", "c"]
    assert pkts[0]["path"][0]["netns_name"] == "seven"
    assert pkts[0]["last"]["netns_name"] == "one"
    assert pkts[1]["path"][0]["vni"] is None    # absent fields become null
    assert build_packets([]) == []


def test_last_drop_wins_and_earlier_drops_are_clone_drops():
    events = [ev(1, 1), ev(1, 2, "kfree_skb", "drop", reason="A"),
              ev(1, 3, "kfree_skb", "drop", reason="B")]
    (pkt,) = build_packets(events)
    assert pkt["verdict"] == "dropped" and pkt["drop"]["reason"] == "B"
    assert [d["reason"] for d in pkt["clone_drops"]] == ["A"]
    assert pkt["drop"]["netns_name"] is None


def test_mark_incomplete_is_pure():
    pkts = packets_of("lost.jsonl")
    before = copy.deepcopy(list(pkts.values()))
    marked = mark_incomplete(list(pkts.values()), {21: 4})
    assert "incomplete" not in marked[0] and marked[1]["incomplete"] == 4
    assert list(pkts.values()) == before
    assert mark_incomplete(before, [20])[0]["incomplete"] is True
    assert mark_incomplete(before, None) == before


def test_summarize_groups_drops():
    pkts = list(packets_of("netfilter.jsonl").values()) + list(packets_of("lost.jsonl").values())
    s = summarize(pkts)
    assert s["packets"] == 6
    assert s["verdicts"] == {"delivered": 3, "dropped": 2, "lost": 1, "incomplete": 0}
    assert s["drops"] == [{"reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x9e",
                           "netns": CTR_B, "netns_name": "pp-ctrB", "count": 2, "ids": [5, 7]}]
    assert s["lost"] == [{"hook": "net_dev_start_xmit", "dev": "pp-ul", "netns": HOST_A,
                          "netns_name": "pp-hostA", "count": 1, "ids": [21]}]


@pytest.mark.parametrize("n", [3, 12])
def test_summarize_keeps_five_example_ids(n):
    events = [ev(i, i, "kfree_skb", "drop", reason="R", location="f+0x1") for i in range(n)]
    (group,) = summarize(build_packets(events))["drops"]
    assert group["count"] == n and group["ids"] == list(range(min(n, 5)))


def _ev(pid, t, skb, kind="pass", hook="net_dev_queue"):
    return {"id": pid, "t_ns": t, "skb": skb, "kind": kind, "hook": hook, "dev": "eth0",
            "netns": 1, "port": 5000 if kind == "deliver" else None}


def test_reused_id_after_a_gap_is_two_packets():
    evs = [_ev(7, 0, 1), _ev(7, 10, 1, "deliver", "sk_data_ready"),
           _ev(7, 5_000_000_000, 2), _ev(7, 5_000_000_010, 2, "deliver", "sk_data_ready")]
    pkts = build_packets(evs)
    assert [(p["id"], p["verdict"], p["events"]) for p in pkts] == [(7, "delivered", 2)] * 2


def test_late_free_of_the_same_skb_stays_one_packet():
    evs = [_ev(8, 0, 1), _ev(8, 10, 1, "deliver", "sk_data_ready"),
           dict(_ev(8, 3_000_000_000, 1, "drop", "kfree_skb"), reason="NOT_SPECIFIED")]
    pkts = build_packets(evs)
    assert len(pkts) == 1 and pkts[0]["verdict"] == "delivered" and pkts[0]["clone_drops"]


def test_tracer_losses_are_incomplete_never_lost():
    pkts = build_packets([_ev(1, 0, 1), _ev(2, 0, 2),
                                      _ev(3, 0, 3), _ev(3, 5, 3, "deliver", "sk_data_ready")])
    out = mark_incomplete(pkts, {1: 2, 3: 1, 9: 1})
    v = {p["id"]: p["verdict"] for p in out}
    assert v == {1: "incomplete", 2: "lost", 3: "delivered", 9: "incomplete"}
    suspect = mark_incomplete(pkts, {}, all_lost_suspect=True)
    assert {p["id"]: p["verdict"] for p in suspect}[2] == "incomplete"


def test_a_datagram_reported_again_while_unread_is_one_delivery():
    """Events mode: each later callback of the socket reports the datagrams still queued; the
    same datagram (skb) on the same socket is one delivery, one hop. A delivery of another skb
    is another packet of the same ID (a path never holds two deliveries: issue #18)."""
    dup = [_ev(4, 0, 1), _ev(4, 10, 1, "deliver", "sk_data_ready"),
           _ev(4, 40, 1, "deliver", "sk_data_ready"), _ev(4, 70, 1, "deliver", "sk_data_ready")]
    (pkt,) = build_packets(dup)
    assert pkt["verdict"] == "delivered" and pkt["events"] == 2
    assert [h["t_ns"] for h in pkt["path"]] == [0, 10]
    clone = dup[:2] + [_ev(4, 12, 9, "deliver", "sk_data_ready")]
    pkts = build_packets(clone)
    assert [(p["verdict"], p["events"]) for p in pkts] == [("delivered", 2), ("delivered", 1)]


# ---- one ID, several packets (issue #18): never two packets in one path ----

LAB_PATH = [("net_dev_queue", "eth0", 10), ("netif_receive_skb", "pp-vA", 20),
            ("net_dev_queue", "pp-vx", 20), ("net_dev_queue", "pp-ul", 20),
            ("netif_receive_skb", "pp-ul", 30), ("netif_receive_skb", "pp-vx", 30),
            ("net_dev_queue", "pp-vB", 30), ("netif_receive_skb", "eth0", 40)]


def _lab_packet(pid, t0, skb, deliver=True, step=1000):
    """One datagram's events in the lab (hooks, devices, namespaces as recorded there)."""
    evs = [{"id": pid, "t_ns": t0 + i * step, "skb": skb, "kind": "pass", "hook": h, "dev": d,
            "netns": ns, "port": None} for i, (h, d, ns) in enumerate(LAB_PATH)]
    if deliver:
        evs.append({"id": pid, "t_ns": t0 + len(LAB_PATH) * step, "skb": skb,
                    "kind": "deliver", "hook": "sk_data_ready", "dev": None, "netns": 40,
                    "port": 5000})
    return evs


def _shape(pkts):
    return [(p["verdict"], p["events"]) for p in pkts]


def test_sequential_duplicates_are_separate_packets():
    """Three identical "hello world" datagrams (same payload ID), one after the other, the
    second on the first one's recycled skb (as recorded in the lab): three packets, one delivery
    each (the old reconstruction made one packet of 27 hops)."""
    hello = int.from_bytes(b"hell", "big")
    evs = (_lab_packet(hello, 0, 0xa00) + _lab_packet(hello, 20_000, 0xa00) +
           _lab_packet(hello, 40_000, 0xb00))
    pkts = build_packets(evs)
    assert _shape(pkts) == [("delivered", 9)] * 3
    assert [p["first_ns"] for p in pkts] == [0, 20_000, 40_000]


def test_interleaved_duplicates_follow_their_skbs():
    """Two senders send ID 800 at once: their events interleave; each packet keeps its skb."""
    a, b = _lab_packet(800, 0, 0xa00, step=1000), _lab_packet(800, 500, 0xb00, step=1000)
    pkts = build_packets(sorted(a + b, key=lambda e: e["t_ns"]))
    assert _shape(pkts) == [("delivered", 9)] * 2
    for p, src in zip(pkts, (a, b)):
        assert [h["t_ns"] for h in p["path"]] == [e["t_ns"] for e in src]


def test_interleaved_duplicates_without_skb_continuity():
    """A recording without skbs: the second packet begins where the first began (a new
    packet), later sightings go to the oldest packet not seen there yet."""
    a, b = _lab_packet(800, 0, None, step=1000), _lab_packet(800, 500, None, step=1000)
    pkts = build_packets(sorted(a + b, key=lambda e: e["t_ns"]))
    assert _shape(pkts) == [("delivered", 9)] * 2


def test_a_path_never_holds_two_deliveries():
    """Two packets of one ID whose skbs both changed (copies) after the first hook: the second
    delivery is another packet's, not a second delivery of the first."""
    a, b = _lab_packet(9, 0, 1), _lab_packet(9, 100_000, 2)
    for ev in a[3:] + b[3:]:
        ev["skb"] += 100
    pkts = build_packets(a + b)
    assert [p["verdict"] for p in pkts] == ["delivered", "delivered"]
    assert all(sum(h["hook"] == "sk_data_ready" for h in p["path"]) == 1 for p in pkts)


def test_a_superseded_packet_is_not_delivered():
    """The first packet of an ID vanished on the way (no delivery, no drop); the second one,
    on the same skb, begins where the first began: the first is `lost` at its last sighting,
    the second delivered."""
    evs = _lab_packet(5, 0, 7, deliver=False)[:4] + _lab_packet(5, 50_000, 7)
    pkts = build_packets(evs)
    assert _shape(pkts) == [("lost", 4), ("delivered", 9)]
    assert pkts[0]["last"]["dev"] == "pp-ul"


def test_a_late_free_after_delivery_stays_with_its_packet():
    """A drop of a delivered datagram's skb (the socket closed unread) after the next packet of
    the ID began is still the first packet's (freed_after_delivery), not the second's."""
    a, b = _lab_packet(5, 0, 7), _lab_packet(5, 50_000, 8)
    drop = {"id": 5, "t_ns": 52_500, "skb": 7, "kind": "drop", "hook": "kfree_skb", "dev": None,
            "netns": 40, "port": None}
    pkts = build_packets(sorted(a + b + [drop], key=lambda e: e["t_ns"]))
    assert _shape(pkts) == [("delivered", 10), ("delivered", 9)]
    assert pkts[0].get("freed_after_delivery") and not pkts[1].get("clone_drops")


def test_one_kernel_path_is_one_packet():
    """Summary mode: the events of one kernel record (`path`) stay one packet even when a
    position repeats; two records of one ID are two packets."""
    a = _lab_packet(3, 0, 7)
    b = _lab_packet(3, 30_000, 7)
    for ev in a:
        ev["path"] = 0
    for ev in b:
        ev["path"] = 30_000
    a[2]["hook"], a[2]["dev"], a[2]["netns"] = a[0]["hook"], a[0]["dev"], a[0]["netns"]
    assert _shape(build_packets(a + b)) == [("delivered", 9)] * 2


def test_a_kernel_path_emitted_twice_is_one_packet():
    """Summary mode, as captured on the lab (two senders, 2,000 IDs each, ~1 path in 500): two
    CPUs delivered one datagram at once (a batch's walk and the datagram's own callback), so the
    kernel emitted its path twice: the same first time stamp, the same 8 hops, each copy with a
    delivery. One packet of 9 hops with one delivery (was: 17 hops), and the other packet of the
    ID stays apart."""
    a = _lab_packet(3, 0, 7)
    for ev in a:
        ev["path"] = 0
    again = [dict(ev) for ev in a]
    again[-1]["t_ns"] += 700               # the second CPU's delivery hop
    other = _lab_packet(3, 300, 8)
    for ev in other:
        ev["path"] = 300
    pkts = build_packets(sorted(a + again + other, key=lambda e: e["t_ns"]))
    assert _shape(pkts) == [("delivered", 9)] * 2
    assert [h["t_ns"] for h in pkts[0]["path"]] == [e["t_ns"] for e in a]


def test_lab_recording_of_duplicate_ids():
    """Recorded on the lab (events mode): three "hello world" datagrams (the payload ID is then
    b"hell"), then two senders sending IDs 800-809 at once. The skb stays the same from the
    sender's socket to the receiver's (veth, VXLAN, bridge, underlay); the third datagram's
    socket callback reports the second one again. 23 datagrams reached the sink: 23 packets,
    each with its 9 hops and one delivery (the old reconstruction: 11 packets, one of 27 hops)."""
    from pktpath.process import pipeline
    fixture = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures",
                           "dup_ids.jsonl")
    packets, _meta, end = pipeline.recorded([fixture])
    packets = list(packets)
    assert len(packets) == 23 and end["duplicate_ids"] == 12
    assert {(p["verdict"], p["events"]) for p in packets} == {("delivered", 9)}
    by_id = {}
    for p in packets:
        assert [h["hook"] for h in p["path"]].count("sk_data_ready") == 1
        assert len({h["netns"] for h in p["path"][:1]}) == 1
        by_id[p["id"]] = by_id.get(p["id"], 0) + 1
    assert by_id.pop(int.from_bytes(b"hell", "big")) == 3
    assert by_id == dict.fromkeys(range(800, 810), 2)


def test_a_sighting_known_only_by_the_skb_map_begins_no_packet():
    """Events mode, the shape captured on the lab (#18): a retransmitted client segment (ID 5)
    dropped TCP_OLD_DATA on skb 1; 4 ms later the server's ACK is on that skb and buffer again,
    so the skb map gave it ID 5 (its flow is the filter's reversed: `rewritten`). It is not a
    packet; nor is an unparsed sighting (`from_map`) on a recycled skb."""
    drop = dict(_ev(5, 30, 1, "drop", "kfree_skb"), reason="TCP_OLD_DATA")
    evs = [_ev(5, 0, 1), _ev(5, 10, 1, hook="netif_receive_skb"), drop,
           dict(_ev(5, 4_000_000, 1), rewritten=True, src="198.51.100.2:5007"),
           dict(_ev(5, 4_000_100, 1, hook="netif_receive_skb"), rewritten=True),
           dict(_ev(5, 4_000_200, 1, hook="tcp_probe"), from_map=True)]
    pkts = build_packets(evs)
    assert [(p["verdict"], p["events"]) for p in pkts] == [("dropped", 3)]
    # a rewritten sighting that continues its packet (NAT) stays in it
    evs = [_ev(6, 0, 1), dict(_ev(6, 10, 1, hook="netif_receive_skb"), rewritten=True),
           dict(_ev(6, 20, 1, "deliver", "sk_data_ready"), rewritten=True)]
    assert [(p["verdict"], p["events"]) for p in build_packets(evs)] == [("delivered", 3)]


def test_a_reply_on_a_coalesced_segments_skb_continues_nothing():
    """Events mode, #17 (CI: test_tcp_coalesced_segments_are_delivered[events], once in ~3
    full runs): a client segment coalesced into the server's queue is freed unseen; its skb and
    buffer carry the server's ACK back, which the skb map names with the segment's ID (its flow
    the filter's reversed: `rewritten`). The ACK's sightings and its delivery at the client were
    appended to the segment (16 events, delivered in the client's namespace). A reply continues
    nothing; a rewritten sighting with other ports (NAT) still continues its packet."""
    c, s = "198.51.100.1:40000", "198.51.100.2:5007"
    seg = [dict(_ev(7, 0, 1), src=c, dst=s),
           dict(_ev(7, 10, 1, hook="netif_receive_skb"), src=c, dst=s, netns=2)]
    ack = [dict(_ev(7, 500, 1), src=s, dst=c, netns=2, rewritten=True),
           dict(_ev(7, 600, 1, hook="netif_receive_skb"), src=s, dst=c, netns=1,
                rewritten=True),
           dict(_ev(7, 700, 1, "deliver", "sk_data_ready"), netns=1, from_map=True)]
    (pkt,) = build_packets(seg + ack)
    assert pkt["events"] == 2 and pkt["verdict"] != "delivered", pkt
    nat = [dict(_ev(8, 0, 1), src=c, dst=s),
           dict(_ev(8, 10, 1, hook="netif_receive_skb"), src=c, dst="198.51.100.9:6000",
                rewritten=True),
           dict(_ev(8, 20, 1, "deliver", "sk_data_ready"), rewritten=True)]
    assert [(p["verdict"], p["events"]) for p in build_packets(nat)] == [("delivered", 3)]


def test_a_datagram_seen_by_its_reader_is_delivered_once():
    """Events mode, #17: the socket's reader found the datagram at its queue's head before any
    data-ready callback delivered it (hook sock_recv_length, kind deliver, known by the skb map).
    It is delivered there, at a hop that names the reader; a peek or partial read reporting the
    same skb again is the same delivery; a callback reporting it later too (a race between the
    two CPUs) adds nothing; without that event the same trace says `lost` (the bug it fixes)."""
    evs = _lab_packet(5, 0, 77, deliver=False)
    read = {"id": 5, "t_ns": 9000, "skb": 77, "kind": "deliver", "hook": "sock_recv_length",
            "dev": None, "netns": 40, "port": 5000, "from_map": True}
    (lost,) = mark_incomplete(build_packets(evs), {})
    assert lost["verdict"] == "lost" and lost["last"]["hook"] == "netif_receive_skb"
    again = dict(read, t_ns=9500)
    late_cb = dict(read, t_ns=9700, hook="sk_data_ready")
    for extra in ([read], [read, again], [read, late_cb]):
        (pkt,) = mark_incomplete(build_packets(evs + extra), {})
        assert pkt["verdict"] == "delivered" and pkt["delivered"]["port"] == 5000
        assert pkt["path"][-1]["hook"] == "sock_recv_length"
        assert [h["hook"] for h in pkt["path"]].count("sock_recv_length") == 1
        assert "sk_data_ready" not in [h["hook"] for h in pkt["path"]]
        assert pkt["events"] == len(LAB_PATH) + 1
