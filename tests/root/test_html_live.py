"""End-to-end: `--html` on the real lab, the page rendered by a real headless browser (chromium),
its drop points and counts checked against the report's own numbers (text and --json)."""
import json
import os
import re
import subprocess
import sys

import pytest

from browser import CHROMIUM, Elements, page_errors, render
from pktpath.lab import overlay

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium: scripts/install-deps.sh")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def send(start, count):
    return RUN + ["send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP, "--port",
                  str(overlay.PORT), "--start-id", str(start), "--count", str(count),
                  "--rate", "500"]


def test_trace_html_vni_mismatch(lab_up, fault, tmp_path):
    fault("vni-mismatch")
    page, out, rec = tmp_path / "t.html", tmp_path / "v.jsonl", tmp_path / "rec.jsonl"
    p = subprocess.run(RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--json", str(out),
                              "--record", str(rec), "--html", str(page), "--timeline", "0",
                              "--"] + send(700, 5), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    packets = [json.loads(ln) for ln in out.read_text().splitlines()]
    dropped = [q for q in packets if q["verdict"] == "dropped"]
    assert len(dropped) == 5
    # the report's numbers: "5 packets: 0 delivered, 5 dropped, 0 lost" and its drop table
    m = re.search(r"(\d+) packets?: (\d+) delivered, (\d+) dropped, (\d+) lost", p.stdout)
    assert m and int(m.group(3)) == 5, p.stdout
    row = [ln for ln in p.stdout.splitlines() if ln.startswith("VXLAN_VNI_NOT_FOUND ")]
    assert len(row) == 1 and " 5 " in row[0], p.stdout

    dom, log = render(page)
    assert page_errors(log) == []
    els = Elements(dom)
    marks = [a for t, a, _x in els.with_class("drop") if t == "g"]
    assert len(marks) == 1
    mark = marks[0]
    assert mark["data-reason"] == "VXLAN_VNI_NOT_FOUND"
    assert int(mark["data-count"]) == 5
    assert mark["data-location"] == dropped[0]["drop"]["location"]
    assert mark["data-netns"].startswith("pp-hostB (")
    for verdict, n in zip(("delivered", "dropped", "lost"), m.groups()[1:]):
        assert re.search(r'data-verdict="%s" data-count="%s"' % (verdict, n), dom), verdict
    # namespaces in path order; the last stage drawn is in pp-hostB, where the packets died
    boxes = [a["data-ns"] for _t, a, _x in els.with_class("ns")]
    assert boxes[:3] == ["pp-ctrA", "pp-hostA", "pp-hostB"], boxes
    stages = [a for _t, a, _x in els.with_class("stage")]
    assert stages and all(int(a["data-packets"]) == 5 for a in stages)
    assert stages[-1]["data-stage"].endswith("/pp-hostB")

    # `report` of the recording draws the same page
    page2 = tmp_path / "r.html"
    r = subprocess.run(RUN + ["report", str(rec), "--html", str(page2), "--timeline", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert page2.read_text() == page.read_text()


def test_drops_html_vni_mismatch(lab_up, fault, tmp_path):
    fault("vni-mismatch")
    page, out = tmp_path / "d.html", tmp_path / "d.jsonl"
    p = subprocess.run(RUN + ["drops", "--reason", "VXLAN_VNI_NOT_FOUND", "--json", str(out),
                              "--html", str(page), "--"] + send(800, 4),
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    summary = json.loads(out.read_text().splitlines()[-1])
    assert summary["type"] == "summary" and summary["drops"] >= 4
    dom, log = render(page)
    assert page_errors(log) == []
    rows = [a for t, a, _x in Elements(dom).with_class("drop") if t == "tr"]
    assert {a["data-reason"] for a in rows} == {"VXLAN_VNI_NOT_FOUND"}
    assert sorted(int(a["data-count"]) for a in rows) == sorted(
        c["drops"] for c in summary["counts"])
    assert 'data-count="%d"' % summary["drops"] in dom
