"""--metrics (output/metrics.py): the families fed by the live pipeline, on recorded packets,
read back the way Prometheus reads them (generate_latest on the run's own registry, parsed by
prometheus_client.parser), and the endpoint itself."""
import io
import json
import socket
import urllib.request

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import REGISTRY, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pktpath.errors import UserError  # noqa: E402
from pktpath.events import records  # noqa: E402
from pktpath.output import metrics as metricsmod  # noqa: E402
from pktpath.output import sinks  # noqa: E402
from pktpath.process import pipeline  # noqa: E402
from tests.unit.test_pipeline import (HOOKS, NAMES, REASONS, event_records,  # noqa: E402
                                      summary_records, symbolize)
from tests.unit.test_sample import COUNTERS, flood  # noqa: E402


def run(recs, mode="summary", json_out=True, record=False, keep=10000, tmp_path=None):
    """(samples {(name, labels tuple): value}, packets as JSON dicts) of a live trace."""
    m = metricsmod.Metrics(netns_names=lambda: NAMES)
    dec = records.PathDecoder(HOOKS, REASONS, symbolize)
    m.decoder = dec
    out = io.StringIO() if json_out else None
    rec = None
    if record:
        from pktpath.events.recording import RecordingWriter
        rec = RecordingWriter(str(tmp_path / "rec.jsonl"))
    pipe = pipeline.LivePipeline(dec, lambda: NAMES, summary=mode == "summary", json_out=out,
                                 rec=rec, keep_delivered=keep, metrics=m)
    for data in recs:
        pipe.on_record(data)
    pipe.flush()
    pipe.settle()
    js = io.StringIO()
    pipe.json_out = js          # every packet, also those kept for the report
    sinks.live_report(pipe, dict(COUNTERS), {}, {"coverage": []}, 0)
    pipe.write_backlog()
    packets = [json.loads(line) for line in
               ((out.getvalue() if out else "") + js.getvalue()).splitlines()]
    return parse(m), packets


def parse(m):
    text = generate_latest(m.registry).decode()
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue            # when a series was created: not a count
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return got


def family(got, name):
    return {labels: v for (n, labels), v in got.items() if n == name}


def expected(packets):
    """What the families must say, computed from the packets' JSON."""
    verdicts, drops, segs = {}, {}, {}
    for p in packets:
        verdicts[p["verdict"]] = verdicts.get(p["verdict"], 0) + 1
        if p["verdict"] == "dropped":
            d = p["drop"]
            key = (("location", d["location"].split("+")[0]), ("netns", d["netns_name"]),
                   ("reason", d["reason"]))
            drops[key] = drops.get(key, 0) + 1
        hops = ["%s@%s/%s" % (h["hook"], h["dev"] or "-", h["netns_name"] or h["netns"])
                for h in p["path"]]
        for i in range(1, len(hops)):
            key = (("from", hops[i - 1]), ("to", hops[i]))
            n, total = segs.get(key, (0, 0))
            segs[key] = (n + 1, total + p["path"][i]["t_ns"] - p["path"][i - 1]["t_ns"])
    return verdicts, drops, segs


def check(got, packets):
    verdicts, drops, segs = expected(packets)
    assert family(got, "pktpath_packets_total") == {(("verdict", v),): float(n)
                                                    for v, n in verdicts.items()}
    assert family(got, "pktpath_drops_total") == {k: float(n) for k, n in drops.items()}
    counts = family(got, "pktpath_segment_latency_seconds_count")
    sums = family(got, "pktpath_segment_latency_seconds_sum")
    assert counts == {k: float(n) for k, (n, _t) in segs.items()}
    for k, (_n, total) in segs.items():
        assert sums[k] == pytest.approx(total / 1e9)
    # the +Inf bucket is the count, buckets never decrease
    buckets = family(got, "pktpath_segment_latency_seconds_bucket")
    for k, n in counts.items():
        row = sorted(((float(dict(lab)["le"]), v) for lab, v in buckets.items()
                      if tuple(x for x in lab if x[0] != "le") == k))
        assert row[-1] == (float("inf"), n)
        assert [v for _le, v in row] == sorted(v for _le, v in row)


def test_summary_fast_path_counts_what_the_packets_say():
    got, packets = run(flood())
    assert len(packets) == 2600
    check(got, packets)
    assert sum(family(got, "pktpath_packets_total").values()) == 2600


@pytest.mark.parametrize("json_out", [True, False])
@pytest.mark.parametrize("keep", [3, 0])
def test_streamed_and_counted_packets_are_metered_alike(json_out, keep):
    """Delivered packets past the report's quota (streamed to --json, or only counted) and
    packets spilled from the sample: the same metrics as when every packet is kept."""
    ref, _ = run(flood())
    got, _ = run(flood(), json_out=json_out, keep=keep)
    assert got == ref


def test_every_path_gives_the_same_metrics(tmp_path):
    """Raw records counted from their bytes (fast path), the same records expanded (a
    recording makes every packet take the general path), and events mode: one answer."""
    fast, packets = run(summary_records())
    slow, _ = run(summary_records(), record=True, tmp_path=tmp_path)
    events, _ = run(event_records(), mode="events")
    check(fast, packets)
    assert fast == slow
    verdicts = family(fast, "pktpath_packets_total")
    assert family(events, "pktpath_packets_total") == verdicts
    assert family(events, "pktpath_drops_total") == family(fast, "pktpath_drops_total")
    assert family(events, "pktpath_segment_latency_seconds_count") == \
        family(fast, "pktpath_segment_latency_seconds_count")


def test_labels_are_bounded():
    """No packet ID, address or time in any label: 2600 packets, a handful of series."""
    got, _ = run(flood())
    names = {lab for (_n, labels) in got for lab, _v in labels}
    assert names <= {"verdict", "reason", "location", "netns", "from", "to", "le"}
    assert len(family(got, "pktpath_drops_total")) <= 3
    assert len(family(got, "pktpath_segment_latency_seconds_count")) <= 10


def test_tracer_and_monitor_families():
    m = metricsmod.Metrics(netns_names=lambda: NAMES)
    m.set_counters({"lost": 7, "unreachable": 1, "shed": 4})
    m.set_coverage([{"hook": "kfree_skb", "method": "raw_tp", "status": "attached"},
                    {"hook": "napi_gro", "method": None, "status": "skipped"}])
    m.set_machine_drops([("nf_hook_slow+0x9e", "NETFILTER_DROP", 4026532302, 5),
                         ("nf_hook_slow+0xa0", "NETFILTER_DROP", 4026532302, 2),
                         ("udp_queue_rcv_one_skb+0x1", "NO_SOCKET", 99, 1)])
    got = parse(m)
    assert got[("pktpath_events_lost_total", ())] == 7
    assert got[("pktpath_records_shed_total", ())] == 4
    assert got[("pktpath_hooks_attached", ())] == 1
    assert got[("pktpath_hook_info", (("hook", "napi_gro"), ("method", ""),
                                      ("status", "skipped")))] == 1
    assert family(got, "pktpath_machine_drops_total") == {
        (("location", "nf_hook_slow"), ("netns", "pp-hostA"), ("reason", "NETFILTER_DROP")): 7,
        (("location", "udp_queue_rcv_one_skb"), ("netns", "99"), ("reason", "NO_SOCKET")): 1}
    # a registry of its own: nothing in the process-wide one
    assert REGISTRY.get_sample_value("pktpath_events_lost_total") is None
    # the kernel's skipped runs: absent until read (and where they cannot be), then per hook
    assert family(got, "pktpath_kernel_skipped_runs_total") == {}
    m.set_skipped({"kfree_skb": 3, "net_dev_queue": 0})
    assert family(parse(m), "pktpath_kernel_skipped_runs_total") == {
        (("hook", "kfree_skb"),): 3, (("hook", "net_dev_queue"),): 0}
    m.set_skipped(None)
    assert family(parse(m), "pktpath_kernel_skipped_runs_total") == {}


@pytest.mark.parametrize("spec,want", [
    ("9911", ("0.0.0.0", 9911)), ("127.0.0.1:9911", ("127.0.0.1", 9911)),
    ("[::1]:80", ("::1", 80)), (":9911", ("0.0.0.0", 9911)), ("localhost:1", ("localhost", 1))])
def test_address(spec, want):
    assert metricsmod.parse_address(spec) == want


@pytest.mark.parametrize("spec", ["", "x", "0", "65536", "127.0.0.1:", "::1:80", "1.2.3.4:-1"])
def test_bad_address(spec):
    with pytest.raises(UserError, match="--metrics"):
        metricsmod.parse_address(spec)


def test_endpoint_serves_and_stops_and_a_busy_port_is_one_error():
    m = metricsmod.Metrics(netns_names=lambda: NAMES)
    m.set_counters({"lost": 3})
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(UserError, match="cannot listen"):
        metricsmod.serve("127.0.0.1:%d" % port, m.registry)
    busy.close()
    server = metricsmod.serve("127.0.0.1:%d" % port, m.registry)
    try:
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
        assert b"pktpath_events_lost_total 3.0" in body
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2)
    with pytest.raises(UserError, match="cannot"):
        metricsmod.serve("203.0.113.77:%d" % port, m.registry)   # not an address of this host


@pytest.mark.parametrize("sub", [[], ["drops"]])
def test_cli_bad_address_or_busy_port_is_one_line_and_exit_2(sub):
    """Before anything is loaded (no root needed): one line on stderr, exit 2."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = [] if sub else ["-c", os.path.join(root, "configs", "lab.yaml")]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for spec in ("127.0.0.1:http", "127.0.0.1:%d" % busy.getsockname()[1]):
            p = subprocess.run([sys.executable, os.path.join(root, "run.py")] + sub + cfg +
                               ["--metrics", spec, "--duration", "1"],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 2, p.stderr
            assert p.stderr.count("\n") == 1 and p.stderr.startswith("pktpath: error: --metrics")
            assert p.stdout == ""
    finally:
        busy.close()


def test_latency_budget_times_some_packets_and_counts_all():
    from tests.unit.test_pipeline import DELIVER, path_record
    from pktpath.process.reconstruct import ns_names
    m = metricsmod.Metrics(netns_names=lambda: NAMES, latency_budget=5)
    m.decoder = records.PathDecoder(HOOKS, REASONS, symbolize)
    names = ns_names(NAMES)
    for pid in range(1, 21):
        m.record(path_record(pid, 5, DELIVER), "delivered", names)
    m.tick()
    for pid in range(21, 31):
        m.record(path_record(pid, 5, DELIVER), "delivered", names)
    got = parse(m)
    assert got[("pktpath_packets_total", (("verdict", "delivered"),))] == 30
    assert got[("pktpath_latency_unsampled_total", ())] == 20
    assert set(family(got, "pktpath_segment_latency_seconds_count").values()) == {10}
