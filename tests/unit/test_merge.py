"""Merging two hosts' recordings: wall clocks, causal order, the measured offset."""
from pktpath.process import merge
from pktpath.process.reconstruct import build_packets


def hop(pid, t_ns, host, hook, encap=False, kind="pass"):
    return {"id": pid, "t_ns": t_ns, "host": host, "hook": hook, "encap": encap, "kind": kind,
            "skb": pid, "dev": "d", "netns": 1, "port": 5000 if kind == "deliver" else None}


def two_hosts(skew_ns):
    """Host A sends at 100 us (underlay transmit at 110 us); host B receives 20 us later by a
    true clock, but B's clock is `skew_ns` behind."""
    a = [hop(1, 100_000, "A", "net_dev_queue"), hop(1, 110_000, "A", "net_dev_queue", True)]
    b = [hop(1, 130_000 - skew_ns, "B", "netif_receive_skb", True),
         hop(1, 140_000 - skew_ns, "B", "sk_data_ready", kind="deliver")]
    return a + b


def test_clock_behind_is_measured_and_corrected():
    evs = two_hosts(5_000_000)
    notes = merge.correct_clocks(evs)
    assert len(notes) == 1 and "clock offset B vs A: -4.980 ms (corrected" in notes[0]
    pkt = build_packets(evs)[0]
    assert [h["host"] for h in pkt["path"]] == ["A", "A", "B", "B"]
    assert pkt["verdict"] == "delivered"
    times = [h["t_ns"] for h in pkt["path"]]
    assert times == sorted(times) and times[2] - times[1] == merge.EPSILON_NS


def test_consistent_clocks_are_left_alone():
    evs = two_hosts(0)
    notes = merge.correct_clocks(evs)
    assert "within 0.020 ms" in notes[0]
    assert [e["t_ns"] for e in evs] == [100_000, 110_000, 130_000, 140_000]


def test_to_wall_uses_the_recorded_clock_pair():
    evs = merge.to_wall({"host": "A", "clock": {"mono_ns": 1000, "wall_ns": 5000}},
                        [{"t_ns": 1500, "id": 1}])
    assert evs == [{"t_ns": 5500, "id": 1, "host": "A"}]
