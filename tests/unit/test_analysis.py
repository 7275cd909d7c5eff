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
