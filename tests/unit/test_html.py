"""The HTML report (output/html.py) on recorded lab packets: what the page says, escaping, the
same page from `report FILE` as from the pipeline, and the page as a real browser renders it."""
import json
import os
import subprocess
import sys

import pytest

from browser import CHROMIUM, Elements, page_errors, render
from pktpath.output import html
from pktpath.output.report import ReportBuilder
from pktpath.output import dropmonitor as dropsmod
from pktpath.process import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
# no "/": Linux refuses it in device and namespace names (stages are hook@dev/netns)
EVIL = '<script>alert("x")<b title=\'&amp;\'>"'


def page_of(path):
    packets, meta, end = pipeline.recorded([path])
    builder = ReportBuilder(50)
    for p in packets:
        builder.add(p)
    data = builder.data(meta, end)
    return html.render_trace(data), data


def fixture(name):
    return os.path.join(FIXTURES, name)


def test_vni_page_has_the_drop_point_and_counts():
    page, data = page_of(fixture("vni.jsonl"))
    els = Elements(page)
    drops = els.with_class("drop")
    assert [(a["data-reason"], a["data-count"], a["data-netns"]) for _t, a, _x in drops] == \
        [("VXLAN_VNI_NOT_FOUND", "2", "pp-hostB (4026532303)")]
    assert "2 dropped at vxlan_rcv+0x3b4" in drops[0][2]
    # drawn at the stage before the drop: netif_receive_skb on the underlay of pp-hostB
    stages = [a["data-stage"] for _t, a, _x in els.with_class("stage")]
    assert stages == [s for s, _n in data["funnel"][0]]
    assert stages[-1] == "netif_receive_skb@pp-ul/pp-hostB"
    # namespaces as boxes in path order, edges labelled with the segment counts and medians
    assert [a["data-ns"] for _t, a, _x in els.with_class("ns")] == ["pp-ctrA", "pp-hostA",
                                                                    "pp-hostB"]
    edges = els.with_class("edge")
    assert len(edges) == len(stages) - 1
    assert all(a["data-count"] == "2" for _t, a, _x in edges)
    assert "2 pkts \u00b7 p50 6.0 \u00b5s" in [x for _t, a, x in edges
                                               if a["data-to"] == "netif_receive_skb@pp-vA/pp-hostA"]
    # the counts, the verdict table and one histogram per segment
    assert 'data-verdict="dropped" data-count="2"' in page
    assert 'data-verdict="delivered" data-count="0"' in page
    rows = [x for t, a, x in els.elements if t == "tr"]
    assert any("11" in r and "VXLAN_VNI_NOT_FOUND" in r and "vxlan_rcv+0x3b4" in r for r in rows)
    assert len(els.with_class("hist")) == len(data["segments"]) == 12


def test_lost_packets_at_their_last_sighting():
    page, data = page_of(fixture("lost.jsonl"))
    lost = data["summary"]["lost"]
    assert lost
    marks = Elements(page).with_class("lost")
    marks = [a for t, a, _x in marks if t == "g"]
    assert [(a["data-hook"], a["data-dev"], int(a["data-count"])) for a in marks] == \
        [(g["hook"], g["dev"] or "", g["count"]) for g in lost]


def test_page_is_self_contained():
    page, _ = page_of(fixture("netfilter.jsonl"))
    low = page.lower()
    assert "<script" not in low and "<link" not in low and "@import" not in low
    assert "src=" not in low and "href=" not in low
    assert "https:" not in low and low.count("http://") == low.count(
        'xmlns="http://www.w3.org/2000/svg"')


def _evil_recording(tmp_path):
    """vni.jsonl with a device and a namespace named like markup."""
    out = tmp_path / "evil.jsonl"
    lines = []
    for line in open(fixture("vni.jsonl")):
        rec = json.loads(line)
        if rec.get("type") == "event" and rec.get("dev") == "pp-ul":
            rec["dev"] = "ul<i>&'"
        for key in ("netns_names",):
            if rec.get(key):
                rec[key] = {k: (EVIL if v == "pp-hostB" else v) for k, v in rec[key].items()}
        lines.append(json.dumps(rec))
    out.write_text("\n".join(lines) + "\n")
    return out


def test_strings_from_packets_are_escaped(tmp_path):
    page, data = page_of(_evil_recording(tmp_path))
    assert data["summary"]["drops"][0]["netns_name"] == EVIL
    assert "<script" not in page
    assert html.esc(EVIL) in page
    els = Elements(page)   # parsed back, the names are the names
    assert [a["data-ns"] for _t, a, _x in els.with_class("ns")][-1] == EVIL
    assert any(a["data-stage"] == "netif_rx@ul<i>&'/" + EVIL
               for _t, a, _x in els.with_class("stage"))


def test_report_command_writes_the_pipeline_page(tmp_path):
    out = tmp_path / "r.html"
    p = subprocess.run(RUN + ["report", fixture("vni.jsonl"), "--html", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(ROOT, "tests", "golden", "fixture_vni.txt")) as f:
        assert p.stdout == f.read()   # the text report is unchanged by --html
    assert out.read_text() == page_of(fixture("vni.jsonl"))[0]


def test_report_html_unwritable_is_one_line_error(tmp_path):
    p = subprocess.run(RUN + ["report", fixture("vni.jsonl"), "--html",
                              str(tmp_path / "no" / "dir" / "r.html")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("pktpath: error: cannot write --html")


def test_histogram_buckets():
    assert html.buckets([]) == []
    assert html.buckets([0.5, 1.0, 3.0, 3.5, 100.0]) == [
        (0, 1, 2), (1, 2, 0), (2, 4, 2), (4, 8, 0), (8, 16, 0), (16, 32, 0), (32, 64, 0),
        (64, 128, 1)]


def drops_final():
    return {"counts": [("nf_hook_slow+0x9c", "NETFILTER_DROP", 4026532304, 7),
                       ("__udp4_lib_rcv+0x6a1", "NO_SOCKET", 4026532305, 3)],
            "flows": [{"proto": "udp", "src": "198.51.100.1:40000", "dst": "198.51.100.2:5000",
                       "reason": "NETFILTER_DROP", "netns": 4026532304, "tunnel": None,
                       "vni": None, "drops": 7}],
            "lost": 0, "duration_s": 1.5, "shown": {("nf_hook_slow+0x9c", "NETFILTER_DROP"): 2},
            "netns_names": {"4026532304": "pp-ctrB", "4026532305": EVIL}}


def test_drops_page():
    page = html.render_drops(drops_final())
    els = Elements(page)
    rows = els.with_class("drop")
    assert [(a["data-reason"], a["data-count"]) for _t, a, _x in rows] == [
        ("NETFILTER_DROP", "7"), ("NO_SOCKET", "3")]
    assert "pp-ctrB (4026532304)" in rows[0][2]
    assert "<script" not in page and html.esc(EVIL) in page
    flows = [x for t, a, x in els.elements if t == "tr"]
    assert any("198.51.100.1:40000" in r and "NETFILTER_DROP" in r for r in flows)
    assert 'data-count="10"' in page   # the total


def test_drops_monitor_keeps_the_final_facts():
    mon = dropsmod.DropMonitor(lambda text: None, {"4026532304": "pp-ctrB"})
    f = drops_final()
    mon.finish(f["counts"], f["flows"], 0, 1.5)
    assert mon.final["counts"] == f["counts"] and mon.final["flows"] == f["flows"]
    assert "NETFILTER_DROP" in html.render_drops(mon.final)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/install-deps.sh)")
def test_page_renders_in_chromium(tmp_path):
    """The page as a real browser builds it: loads without errors, the drop point and counts in
    the rendered DOM."""
    page, _ = page_of(_evil_recording(tmp_path))
    path = tmp_path / "vni.html"
    path.write_text(page)
    dom, log = render(path)
    assert page_errors(log) == []
    els = Elements(dom)
    drops = [a for t, a, _x in els.with_class("drop") if t == "g"]
    assert [(a["data-reason"], a["data-count"]) for a in drops] == [("VXLAN_VNI_NOT_FOUND", "2")]
    # the markup in the names stayed text: no element came of it
    assert not [t for t, _a, _x in els.elements if t == "script"]
    assert [a["data-ns"] for _t, a, _x in els.with_class("ns")][-1] == EVIL
    assert len([t for t, _a, _x in els.elements if t == "svg"]) == 1 + 12


def test_drops_recording_page_is_the_live_page(tmp_path, capsys):
    """`drops --html` live and `report --html` of its recording give the same page."""
    import argparse
    from pktpath.commands import report as reportcmd
    from pktpath.events import recording
    from test_drops_output import NAMES, _run
    path = tmp_path / "drops.rec"
    rec = recording.RecordingWriter(str(path))
    rec.meta({"recording": dropsmod.RECORDING, "netns_names": NAMES})
    _text, mon = _run(rec=rec)
    rec.close()
    live = html.render_drops(mon.final)
    out = tmp_path / "d.html"
    assert reportcmd.run(argparse.Namespace(files=[str(path)], json=None, timeline=50,
                                            html=str(out))) == 0
    assert out.read_text() == live
    rows = Elements(live).with_class("drop")
    assert [(a["data-reason"], a["data-count"]) for _t, a, _x in rows] == [
        ("NETFILTER_DROP", "25"), ("NEW_ONE", "1")]
    assert "VXLAN_VNI_NOT_FOUND" in live and "vxlan vni 42" in live


def test_trace_refuses_an_unwritable_html_path_before_starting(tmp_path):
    for cmd in (["-c", os.path.join(ROOT, "configs", "lab.yaml")], ["drops"]):
        p = subprocess.run(RUN + cmd + ["--html", str(tmp_path / "no" / "x.html"),
                                        "--duration", "1"], capture_output=True, text=True)
        assert p.returncode == 2 and "cannot write --html" in p.stderr, p.stderr
        assert "loaded" not in p.stderr


def test_delivered_packets_marked_at_the_delivery_hook():
    page, data = page_of(fixture("delivered.jsonl"))
    marks = [a for t, a, _x in Elements(page).with_class("deliver") if t == "g"]
    assert [int(a["data-count"]) for a in marks] == [data["summary"]["verdicts"]["delivered"]]
