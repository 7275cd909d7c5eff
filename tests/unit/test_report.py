"""Report tables and JSON, and the `run.py report` subcommand on recorded lab traces."""
import io
import json
import os
import subprocess
import sys

import pytest

from pktpath.output import report
from pktpath.process.reconstruct import build_packets, mark_incomplete
from pktpath.events.recording import read_recording

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def load(*names):
    pkts = []
    for name in names:
        meta, events, end = read_recording(os.path.join(FIXTURES, name))
        pkts += build_packets(events, end["netns_names"])
    return pkts


def rows(table):
    """Data rows of a tabulate table (after the header and rule lines), split into cells."""
    return [line.split("  ") for line in table.splitlines()[2:]]


def test_timeline():
    pkts = load("delivered.jsonl")
    text = report.render_timeline(pkts)
    lines = text.splitlines()
    assert lines[0].split() == ["TIME", "+PREV", "us", "+FIRST", "us", "EVENT", "DEVICE",
                                "NAMESPACE", "SRC", "DST", "OUTER", "VNI", "PACKET", "ID",
                                "VERDICT"]
    assert len(lines) == 2 + 20
    assert lines[2].startswith("0.000 ") and "pp-ctrA (4026532301)" in lines[2]
    assert "198.51.100.1:40000" in lines[2] and "198.51.100.2:5000" in lines[2]
    encap = [line for line in lines if "pp-ul" in line]
    assert encap and all("192.0.2.2:4789" in line and " 42 " in line for line in encap)
    assert "192.0.2.1:51001 > 192.0.2.2:4789" in encap[0]
    assert [line.rstrip().endswith("delivered") for line in lines[2:]] == [False] * 19 + [True]
    assert lines[-1].split()[0] == "0.047"


def test_timeline_time_is_relative_to_the_whole_trace():
    pkts = load("lost.jsonl")
    text = report.render_timeline(pkts[1:], t0=report.trace_start(pkts))
    assert text.splitlines()[2].startswith("5.000 ")
    assert text.splitlines()[-1].rstrip().endswith("lost")


def test_verdicts_table():
    pkts = load("netfilter.jsonl", "lost.jsonl", "vni.jsonl")
    text = report.render_verdicts(pkts)
    assert text.splitlines()[0].split() == ["ID", "VERDICT", "HOPS", "WHERE", "REASON",
                                            "NAMESPACE", "DURATION", "us"]
    by_id = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert by_id["5"].split()[:5] == ["5", "dropped", "20", "nf_hook_slow+0x9e", "NETFILTER_DROP"]
    assert "pp-ctrB (4026532304)" in by_id["5"] and by_id["5"].rstrip().endswith("43.0")
    assert by_id["6"].split()[:4] == ["6", "delivered", "20", "pp-ctrB:5000"]
    assert by_id["21"].split()[:4] == ["21", "lost", "10", "net_dev_start_xmit@pp-ul"]
    assert "pp-hostA (4026532302)" in by_id["21"]
    assert "VXLAN_VNI_NOT_FOUND" in by_id["11"] and "pp-hostB (4026532303)" in by_id["11"]
    clone = report.render_verdicts(load("clone.jsonl"))
    assert "clone dropped: NOT_SPECIFIED" in clone
    marked = report.render_verdicts(mark_incomplete(load("lost.jsonl"), [21]))
    assert "tracer lost events" in marked


def test_summary_and_coverage():
    pkts = load("netfilter.jsonl", "no_socket.jsonl", "lost.jsonl")
    coverage = [{"hook": "kfree_skb", "method": "raw_tracepoint", "status": "attached",
                 "why": "tracepoint"},
                {"hook": "ip_rcv", "method": None, "status": "skipped", "why": "no kprobes"}]
    text = report.render_summary(pkts, lost_events=7, coverage=coverage)
    assert text.index("kfree_skb") < text.index("8 packets: 3 delivered, 4 dropped, 1 lost")
    assert "ip_rcv" in text and "no kprobes" in text
    drops = [line.split() for line in text.splitlines() if "_DROP" in line or "NO_SOCKET" in line]
    assert ["NETFILTER_DROP", "nf_hook_slow+0x9e", "pp-ctrB", "(4026532304)", "2", "5,", "7"] \
        in drops
    assert ["NO_SOCKET", "__udp4_lib_rcv+0x2f1", "pp-ctrB", "(4026532304)", "2", "9,", "10"] \
        in drops
    assert "7 events lost by the tracer" in text
    assert "events lost" not in report.render_summary(pkts)
    assert report.render_summary([]).startswith("0 packets: 0 delivered")


def test_namespace_label():
    assert report.ns_label(4026532304, "pp-ctrB") == "pp-ctrB (4026532304)"
    assert report.ns_label(4026532304) == "4026532304" and report.ns_label(None) == ""


def test_full_report_cuts_the_timeline():
    pkts = load("netfilter.jsonl")
    meta, _, end = read_recording(os.path.join(FIXTURES, "netfilter.jsonl"))
    text = report.render_report(pkts, meta, dict(end, lost=2, warnings=["w1"]),
                                max_timeline_packets=1)
    order = [text.index(s) for s in ("== coverage ==", "== timeline (first 1 of 4 packets",
                                     "== verdicts ==", "== summary ==", "== notes ==")]
    assert order == sorted(order)
    timeline = text[text.index("== timeline"):text.index("== verdicts")]
    assert " 5 " in timeline and " 6 " not in timeline
    assert "2 events lost by the tracer" in text and "w1" in text
    assert "== timeline" not in report.render_report(pkts, max_timeline_packets=0)
    assert "no matching packets seen" in report.render_report([])


def test_write_json_round_trip():
    pkts = load("clone.jsonl", "lost.jsonl")
    out = io.StringIO()
    report.write_json(pkts, out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == pkts


# ---- the `report` subcommand, as a user runs it ----
def run_py(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_report(tmp_path):
    out = tmp_path / "v.jsonl"
    p = run_py("report", "tests/fixtures/netfilter.jsonl", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "== verdicts ==" in p.stdout and "NETFILTER_DROP" in p.stdout
    verdicts = p.stdout[p.stdout.index("== verdicts =="):]
    assert [line.split()[:2] for line in verdicts.splitlines()[3:7]] == \
        [["5", "dropped"], ["6", "delivered"], ["7", "dropped"], ["8", "delivered"]]
    got = {json.loads(line)["id"]: json.loads(line)["verdict"] for line in open(out)}
    assert got == {5: "dropped", 6: "delivered", 7: "dropped", 8: "delivered"}
    assert not os.path.exists(str(out) + ".tmp")


def test_cli_report_several_files_and_json_to_stdout():
    p = run_py("report", "tests/fixtures/no_socket.jsonl", "tests/fixtures/lost.jsonl",
               "--json", "-")
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads(line)["id"] for line in p.stdout.splitlines()) == [9, 10, 20, 21]


def test_cli_report_interrupted_recording_warns(tmp_path):
    rec = tmp_path / "r.jsonl"
    text = open(os.path.join(FIXTURES, "delivered.jsonl")).read().splitlines()
    rec.write_text("\n".join(text[:-1]) + "\n" + text[-1][:30])
    p = run_py("report", str(rec), "--timeline", "0")
    assert p.returncode == 0, p.stderr
    assert "truncated last line" in p.stdout and "no end line" in p.stdout


@pytest.mark.parametrize("content,problem", [
    ('{"type": "meta", "version": 1}\n{oops\n{"type": "end"}\n', ":2: not valid JSON"),
    ("", ": empty file"),
])
def test_cli_report_bad_file_is_one_line_exit_2(tmp_path, content, problem):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    p = run_py("report", str(bad))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith("pktpath: error: %s%s" % (bad, problem)), p.stderr


def test_cli_report_missing_file():
    p = run_py("report", "no/such.jsonl")
    assert p.returncode == 2
    assert p.stderr == "pktpath: error: no/such.jsonl: cannot read: No such file or directory\n"
