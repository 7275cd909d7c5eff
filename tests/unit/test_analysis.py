"""Per-hop latency and the stage funnel on hand-made packets with known times."""
from pktpath.process import analysis
from pktpath.output import report
from pktpath.process.reconstruct import build_packets


def ev(pid, t_us, hook, dev, netns, kind="pass"):
    return {"id": pid, "t_ns": int(t_us * 1000), "skb": pid, "kind": kind, "hook": hook,
            "dev": dev, "netns": netns, "port": 5000 if kind == "deliver" else None}


NAMES = {1: "ctrA", 2: "hostA", 3: "ctrB"}


def packets(n=10, lost=3):
    evs = []
    for pid in range(n):
        base = pid * 1000
        evs += [ev(pid, base, "net_dev_queue", "eth0", 1),
                ev(pid, base + 10 + pid, "netif_receive_skb", "pp-vA", 2)]
        if pid >= lost:
            evs.append(ev(pid, base + 40, "sk_data_ready", "", 3, "deliver"))
    return build_packets(evs, NAMES)


def test_segments_known_latencies():
    segs = analysis.segments(packets())
    first = segs[0]
    assert first["from"] == "net_dev_queue@eth0/ctrA"
    assert first["to"] == "netif_receive_skb@pp-vA/hostA"
    assert first["count"] == 10
    # gaps are 10..19 us
    assert first["p50_us"] == 15.0 and first["max_us"] == 19.0 and first["p90_us"] == 19.0
    second = segs[1]
    assert second["count"] == 7 and second["to"] == "sk_data_ready/ctrB"


def test_funnel_names_where_packets_are_lost():
    rows, message = analysis.funnel(packets())
    assert rows == [("net_dev_queue@eth0/ctrA", 10), ("netif_receive_skb@pp-vA/hostA", 10),
                    ("sk_data_ready/ctrB", 7)]
    assert message == ("3 packets lost between netif_receive_skb@pp-vA/hostA and "
                       "sk_data_ready/ctrB")


def test_report_has_latency_and_funnel_sections():
    text = report.render_report(packets())
    assert "== per-hop latency ==" in text and "== stage funnel ==" in text
    assert "3 packets lost between" in text


def test_funnel_says_dropped_for_dropped_packets_and_lost_for_lost_ones():
    evs = []
    for pid in range(10):   # 0-2 dropped (VNI mismatch) after netif_receive_skb, 3 lost, rest delivered
        base = pid * 1000
        evs += [ev(pid, base, "net_dev_queue", "eth0", 1),
                ev(pid, base + 10, "netif_receive_skb", "pp-vA", 2)]
        if pid < 3:
            d = ev(pid, base + 20, "kfree_skb", "pp-vA", 2, "drop")
            d.update(reason="VXLAN_VNI_NOT_FOUND", location="vxlan_rcv+0x3b4")
            evs.append(d)
        elif pid > 3:
            evs.append(ev(pid, base + 40, "sk_data_ready", "", 3, "deliver"))
    pkts = build_packets(evs, NAMES)
    assert sorted(p["verdict"] for p in pkts) == ["delivered"] * 6 + ["dropped"] * 3 + ["lost"]
    rows, message = analysis.funnel(pkts)
    assert rows[-1] == ("sk_data_ready/ctrB", 6)
    assert message == ("3 packets dropped, 1 lost between netif_receive_skb@pp-vA/hostA and "
                       "sk_data_ready/ctrB")
    only_drops = [p for p in pkts if p["verdict"] != "lost"]
    assert analysis.funnel(only_drops)[1] == ("3 packets dropped between "
                                              "netif_receive_skb@pp-vA/hostA and sk_data_ready/ctrB")
    # packets that went another way are neither dropped nor lost
    stats = analysis.PathStats()
    stats.add_stages((1, 0), ["a", "b"], [0, 1], [True, True], "delivered")
    stats.add_stages((2, 0), ["a", "c"], [0, 1], [True, True], "delivered")
    assert stats.funnel()[1] == "1 packet seen at a was not seen at b"


def test_percentiles_selected_across_sorted_runs_equal_a_full_sort():
    """segments()' percentiles of a flood (sorted runs from add_bulk, values added one packet
    at a time between them, ties) are those of sorting every value."""
    import random
    from array import array
    rng = random.Random(3)
    for trial in range(40):
        vals, runs = array("d"), []
        for _ in range(rng.randrange(1, 12)):
            for _ in range(rng.randrange(0, 30)):               # one packet at a time
                vals.append(rng.choice([1.5, 2.0, rng.uniform(0, 100)]))
            start = len(vals)
            vals.extend(sorted(rng.choice([rng.uniform(0, 100), float(rng.randrange(5))])
                               for _ in range(rng.randrange(0, 3000))))
            runs.append((start, len(vals)))
        start = len(vals)
        vals.extend([7.0] * 4096 if trial % 3 == 0 else sorted(
            rng.uniform(0, 100) for _ in range(4096)))
        runs.append((start, len(vals)))
        s = sorted(vals)
        qs = (0.0, 0.5, 0.9, 0.99, 1.0)
        assert analysis._percentiles(vals, runs, qs) == \
            [s[min(len(s) - 1, int(q * len(s)))] for q in qs]
        inruns = sorted(x for a, b in runs for x in vals[a:b])
        for k in (0, len(inruns) // 3, len(inruns) - 1):
            assert analysis._kth([(vals, a, b) for a, b in runs], k) == inruns[k]
