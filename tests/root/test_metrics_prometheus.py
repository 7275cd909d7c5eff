"""--metrics against a real Prometheus server: pktpath traces the lab with --metrics, a
Prometheus (Debian `prometheus`, on loopback, a temporary config and data directory) scrapes it
every second, and what Prometheus' HTTP API answers equals what the tracer's own report says.
Everything started here is stopped at the end."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
PROMETHEUS = shutil.which("prometheus")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port, expr):
    """{frozenset(labels): value} of a Prometheus instant query."""
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    drop = ("instance", "job", "__name__")
    return {frozenset((k, v) for k, v in s["metric"].items() if k not in drop):
            float(s["value"][1]) for s in body["data"]["result"]}


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as e:       # not listening yet
            last = e
        time.sleep(0.25)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


@pytest.fixture
def prometheus(tmp_path):
    """start(target_port) -> the web port of a Prometheus scraping 127.0.0.1:target_port."""
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed (scripts/install-deps.sh installs it)")
    procs = []

    def start(target):
        web = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                       "scrape_configs:\n  - job_name: pktpath\n    static_configs:\n"
                       "      - targets: ['127.0.0.1:%d']\n" % target)
        log = open(tmp_path / "prometheus.log", "w")
        procs.append(subprocess.Popen(
            [PROMETHEUS, "--config.file=%s" % cfg, "--storage.tsdb.path=%s" % (tmp_path / "data"),
             "--web.listen-address=127.0.0.1:%d" % web], stdout=log, stderr=log))
        wait_for("prometheus to answer", lambda: query(web, "vector(1)"))
        return web
    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_prometheus_scrapes_the_report_numbers(lab_up, fault, prometheus, tmp_path):
    fault("iptables-drop")                      # odd IDs dropped in pp-ctrB, even delivered
    mport = free_port()
    web = prometheus(mport)
    out, rec, ready = tmp_path / "v.jsonl", tmp_path / "rec.jsonl", tmp_path / "ready"
    tracer = subprocess.Popen(
        RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--json", str(out),
               "--record", str(rec), "--timeline", "0", "--ready-file", str(ready),
               "--metrics", "127.0.0.1:%d" % mport],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the tracer to attach", lambda: ready.exists() or tracer.poll() is not None)
        assert tracer.poll() is None, tracer.communicate()
        try:
            wait_for("a scrape of pktpath", lambda: query(web, "up") == {frozenset(): 1.0})
        except AssertionError:
            direct = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5)
            targets = urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % web,
                                             timeout=5).read().decode()
            raise AssertionError("up: %r; targets: %s; /metrics: %s" % (
                query(web, "up"), targets, direct.read()[:300]))
        count = 30
        send = subprocess.run(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst",
                                     overlay.DST_IP, "--port", str(overlay.PORT), "--start-id",
                                     "1000", "--count", str(count), "--rate", "500"],
                              capture_output=True, text=True, timeout=60)
        assert send.returncode == 0, send.stderr

        def all_finished():
            got = query(web, "sum(pktpath_packets_total)")
            return got.get(frozenset()) == count
        wait_for("Prometheus to see every packet finished", all_finished)
        time.sleep(2.5)                         # two more scrapes: nothing else comes
        verdicts = query(web, "pktpath_packets_total")
        drops = query(web, "pktpath_drops_total")
        seg_counts = query(web, "pktpath_segment_latency_seconds_count")
        seg_p50 = query(web, "histogram_quantile(0.5, pktpath_segment_latency_seconds_bucket)")
        hooks = query(web, "pktpath_hooks_attached")
        lost = query(web, "pktpath_events_lost_total")
        skipped = query(web, "pktpath_kernel_skipped_runs_total")
        shed = query(web, "pktpath_records_shed_total")
    finally:
        if tracer.poll() is None:
            tracer.send_signal(signal.SIGTERM)
        stdout, stderr = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, stderr
    # the server stopped with the tracer
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=2)

    packets = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(packets) == count
    by_verdict = {}
    for p in packets:
        by_verdict[p["verdict"]] = by_verdict.get(p["verdict"], 0) + 1
    assert by_verdict == {"delivered": count // 2, "dropped": count // 2}
    assert verdicts == {frozenset({("verdict", v)}): float(n) for v, n in by_verdict.items()}
    # the report prints the same numbers
    assert "%d packets: %d delivered, %d dropped, 0 lost" % (
        count, by_verdict["delivered"], by_verdict["dropped"]) in stdout
    drop = packets[[p["verdict"] for p in packets].index("dropped")]["drop"]
    assert drops == {frozenset({("reason", "NETFILTER_DROP"), ("netns", "pp-ctrB"),
                                ("location", drop["location"].split("+")[0])}):
                     float(count // 2)}
    assert drop["reason"] == "NETFILTER_DROP"
    # every segment of every packet's path, counted once
    want = {}
    for p in packets:
        hops = ["%s@%s/%s" % (h["hook"], h["dev"] or "-", h["netns_name"] or h["netns"])
                for h in p["path"]]
        for a, b in zip(hops, hops[1:]):
            key = frozenset({("from", a), ("to", b)})
            want[key] = want.get(key, 0) + 1
    assert seg_counts == {k: float(n) for k, n in want.items()}
    assert seg_p50 and all(0 <= v < 1 for v in seg_p50.values())
    # hooks attached and events lost: what the recording's meta and end line say
    lines = [json.loads(line) for line in rec.read_text().splitlines()]
    meta = next(x for x in lines if x.get("type") == "meta" or "coverage" in x)
    attached = sum(c["status"] == "attached" for c in meta["coverage"])
    assert hooks == {frozenset(): float(attached)} and attached > 0
    end = [x for x in lines if "lost_ids" in x][-1]
    assert lost == {frozenset(): float(end.get("lost") or 0)}
    assert shed == {frozenset(): float(end.get("shed") or 0)}
    # the kernel's skipped runs: one series per attached hook, as the end line sums them
    assert len(skipped) == attached, skipped
    assert sum(skipped.values()) == float(end["recursion_misses"]), (skipped, end)


def scrape(port):
    """{(name, labels): value} of pktpath's /metrics, parsed as Prometheus parses it."""
    from prometheus_client.parser import text_string_to_metric_families
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_drops_metrics_equal_the_monitor_counts(lab_up, fault, tmp_path):
    fault("no-listener")
    port, out, ready = free_port(), tmp_path / "d.jsonl", tmp_path / "ready"
    mon = subprocess.Popen(RUN + ["drops", "--proto", "udp", "--port", str(overlay.PORT),
                                  "--interval", "1", "--json", str(out), "--ready-file",
                                  str(ready), "--metrics", "127.0.0.1:%d" % port, "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("drops to attach", lambda: ready.exists() or mon.poll() is not None)
        assert mon.poll() is None, mon.communicate()
        send = subprocess.run(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst",
                                     overlay.DST_IP, "--port", str(overlay.PORT), "--count",
                                     "12", "--rate", "500"], capture_output=True, text=True,
                              timeout=60)
        assert send.returncode == 0, send.stderr

        def machine():
            got = {k: v for k, v in scrape(port).items()
                   if k[0] == "pktpath_machine_drops_total"}
            return got if sum(got.values()) >= 12 else None
        got = wait_for("the drop counts in /metrics", machine)
        time.sleep(1.5)
        got = {k: v for k, v in scrape(port).items() if k[0] == "pktpath_machine_drops_total"}
        hooks = scrape(port)[("pktpath_hooks_attached", frozenset())]
    finally:
        if mon.poll() is None:
            mon.send_signal(signal.SIGTERM)
        mon.communicate(timeout=60)
    assert mon.returncode == 0
    summary = json.loads(out.read_text().splitlines()[-1])
    names = {os.stat("/run/netns/" + n).st_ino: n for n in overlay.LAB_NS}
    want = {}
    for c in summary["counts"]:
        key = frozenset({("reason", c["reason"]), ("location", c["location"].split("+")[0]),
                         ("netns", names.get(c["netns"], str(c["netns"])))})
        want[key] = want.get(key, 0) + c["drops"]
    assert {k[1]: v for k, v in got.items()} == {k: float(n) for k, n in want.items()}
    assert summary["drops"] == 12 and hooks == 1

