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
    (a clone to a second socket) stays."""
    dup = [_ev(4, 0, 1), _ev(4, 10, 1, "deliver", "sk_data_ready"),
           _ev(4, 40, 1, "deliver", "sk_data_ready"), _ev(4, 70, 1, "deliver", "sk_data_ready")]
    (pkt,) = build_packets(dup)
    assert pkt["verdict"] == "delivered" and pkt["events"] == 2
    assert [h["t_ns"] for h in pkt["path"]] == [0, 10]
    clone = dup[:2] + [_ev(4, 12, 9, "deliver", "sk_data_ready")]
    (pkt,) = build_packets(clone)
    assert pkt["events"] == 3
