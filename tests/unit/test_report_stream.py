"""`run.py report` reads a recording into compact form and builds its report packet by packet:
the text and the JSON must stay exactly what the list-based path (build_packets,
mark_incomplete, render_report, write_json) produced.

tests/golden/ holds the outputs of `run.py report` made by the list-based code (before the
streaming path existed) for the recordings written here and for the fixtures.
"""
import io
import json
import os
import subprocess
import sys

import pytest

from pktpath.process import reconstruct
from pktpath.output import report
from pktpath.process import pipeline
from pktpath.process.reconstruct import build_packets, mark_incomplete
from pktpath.events.recording import read_recording

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
GOLDEN = os.path.join(ROOT, "tests", "golden")
NS = {"4026532301": "pp-ctrA", "4026532302": "pp-hostA", "4026532303": "pp-hostB"}
S = 1_000_000_000


def event(pid, t_ns, hook, kind="pass", skb=None, netns=4026532301, dev="eth0", encap=False,
          **kw):
    ev = {"type": "event", "t_ns": t_ns, "hook": hook, "kind": kind, "id": pid,
          "skb": 0xffff888000000000 + pid * 256 if skb is None else skb, "cpu": pid % 2,
          "dev": dev, "ifindex": 2, "netns": netns, "encap": encap, "vni": 42 if encap else None,
          "src": "198.51.100.1:40000", "dst": "198.51.100.2:5000",
          "outer_src": "192.0.2.1:51000" if encap else None,
          "outer_dst": "192.0.2.2:4789" if encap else None, "reason": None, "reason_code": None,
          "location": None, "port": None, "from_map": False}
    ev.update(kw)
    return ev


def drop(pid, t_ns, reason, location, **kw):
    return event(pid, t_ns, "kfree_skb", "drop", reason=reason, reason_code=7,
                 location=location, **kw)


def deliver(pid, t_ns, **kw):
    return event(pid, t_ns, "sk_data_ready", "deliver", dev="", port=5000, **kw)


def overlay(pid, t0, **kw):
    """The hops of a packet from container A through the VXLAN underlay to host B."""
    return [event(pid, t0, "net_dev_queue", **kw),
            event(pid, t0 + 7000, "net_dev_queue", dev="pp-ul", netns=4026532302, encap=True,
                  **kw),
            event(pid, t0 + 9000, "netif_receive_skb", dev="pp-ul", netns=4026532303,
                  encap=True, **kw),
            event(pid, t0 + 15000, "netif_receive_skb", dev="pp-vx", netns=4026532303, **kw)]


def small_events():
    """A few packets, in the order a trace records them: every verdict and its corner cases."""
    t = 5 * S
    evs = []
    evs += overlay(1, t) + [deliver(1, t + 20000)]                           # delivered
    evs += overlay(2, t + 1000) + [drop(2, t + 21000, "NETFILTER_DROP", "nf_hook_slow+0x9e",
                                        stack=["nf_hook_slow+0x9e", "ip_rcv+0x31"])]
    evs += overlay(3, t + 2000) + [deliver(3, t + 22000),                    # clone dropped
                                   drop(3, t + 22000, "NOT_SPECIFIED", "skb_release+0x1")]
    evs += overlay(4, t + 3000) + [deliver(4, t + 23000),                    # freed unread
                                   drop(4, t + 2 * S, "NOT_SPECIFIED", "skb_release+0x1")]
    evs += overlay(5, t + 4000)[:2]                                          # lost
    evs += overlay(6, t + 5000)[:3]                                          # lost -> incomplete
    evs += overlay(7, t + 6000) + [deliver(7, t + 26000)]                    # lost_ids, delivered
    evs += overlay(8, t + 7000) + [deliver(8, t + 27000)]                    # 8 reused later
    evs += overlay(8, t + 3 * S, skb=77) + [drop(8, t + 3 * S + 20000, "NO_SOCKET",
                                                 "__udp4_lib_rcv+0x2f1", netns=4026532304)]
    evs += [event(9, t + 9000, "net_dev_queue", host="a"),                   # same t_ns twice
            event(9, t + 9000, "qdisc_enqueue", netns=99, dev="")]
    evs += [drop(10, t + 500, None, None, netns=None, dev=None)]             # unknown reason
    evs.sort(key=lambda e: e["t_ns"])
    evs.insert(3, event(2, t + 900, "netif_rx"))                             # recorded late
    return evs


def write_recording(path, events, lost_ids=(), end=True):
    meta = {"type": "meta", "version": 1, "host": "lab", "netns_names": NS,
            "coverage": [{"hook": "net_dev_queue", "method": "raw_tracepoint",
                          "status": "attached", "why": "tracepoint"}]}
    with open(path, "w") as f:
        f.write(json.dumps(meta) + "\n")
        for ev in events:
            f.write(json.dumps(ev) + "\n")
        if end:
            f.write(json.dumps({"type": "end", "lost": 3, "unreachable": 2,
                                "netns_names": dict(NS, **{"4026532304": "pp-ctrB"}),
                                "lost_ids": list(lost_ids)}) + "\n")


def small_recording(path):
    write_recording(path, small_events(), lost_ids=[0, 6, 7, 11, 400])


def medium_recording(path):
    """More than report.MAX_VERDICT_ROWS packets: the verdict table shows non-delivered ones."""
    evs = []
    for pid in range(1, 1301):
        t = pid * 3000
        hops = overlay(pid, t)
        if pid % 97 == 0:
            evs += hops[:pid % 4 + 1]
        elif pid % 41 == 0:
            evs += hops + [drop(pid, t + 16000 + pid, "NO_SOCKET", "__udp4_lib_rcv+0x2f1")]
        else:
            evs += hops + [deliver(pid, t + 20000 + pid % 13)]
    evs.sort(key=lambda e: e["t_ns"])
    write_recording(path, evs, lost_ids=[97, 2000])


def truncated_recording(path):
    """A trace that died mid-write: no end line, half a last line."""
    small_recording(path)
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-2]) + "\n" + lines[-2][:25])


RECORDINGS = {"small": small_recording, "medium": medium_recording,
              "truncated": truncated_recording}
# golden name -> (recordings: made here by name or fixture files, extra arguments)
CASES = {
    "small": (["small"], ["--timeline", "5"]),
    "small_no_timeline": (["small"], ["--timeline", "0"]),
    "medium": (["medium"], ["--timeline", "3"]),
    "truncated": (["truncated"], []),
    "two_hosts": (["no_socket.jsonl", "lost.jsonl"], []),
    "two_hosts_small": (["small", "vni.jsonl"], ["--timeline", "2"]),
}
CASES.update({"fixture_" + f[:-len(".jsonl")]: ([f], []) for f in sorted(os.listdir(FIXTURES))})


def make_files(tmp_path, recs):
    files = []
    for r in recs:
        if r in RECORDINGS:
            files.append(str(tmp_path / (r + ".jsonl")))
            RECORDINGS[r](files[-1])
        else:
            files.append(os.path.join(FIXTURES, r))
    return files


def list_path(files, timeline):
    """(text, JSON) the way `report` made them before the streaming path: every event dict and
    every packet record in memory at once."""
    events, meta, end = pipeline.load(files)
    packets = mark_incomplete(build_packets(events, meta["netns_names"]),
                              pipeline.lost_counts(end["lost_ids"]),
                              all_lost_suspect=pipeline.untied(end) > 0)
    end["duplicate_ids"] = len(packets) - len({p["id"] for p in packets})
    out = io.StringIO()
    report.write_json(packets, out)
    return report.render_report(packets, meta, end, max_timeline_packets=timeline), out.getvalue()


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_matches_golden(tmp_path, case):
    recs, extra = CASES[case]
    files = make_files(tmp_path, recs)
    out = tmp_path / "out.jsonl"
    p = subprocess.run([sys.executable, "run.py", "report"] + files + extra + ["--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr, p.stderr
    with open(os.path.join(GOLDEN, case + ".txt")) as f:
        assert p.stdout.replace(str(tmp_path) + "/", "TMP/") == f.read()
    golden_json = os.path.join(GOLDEN, case + ".jsonl")
    if os.path.exists(golden_json):
        with open(golden_json) as f:
            assert out.read_text() == f.read()
    else:  # too big to keep: the list-based functions make the reference
        timeline = int(extra[extra.index("--timeline") + 1]) if extra else 50
        assert out.read_text() == list_path(files, timeline)[1]


def streaming_path(files, timeline):
    """(text, JSON) of the streaming path, in process: what `run.py report` prints."""
    store, meta, end = pipeline.load_store(files)
    packets = pipeline.finish(store.packets(meta["netns_names"]), end)
    builder, out = report.ReportBuilder(timeline), io.StringIO()
    for p in packets:
        builder.add(p)
        report.write_json([p], out)
    return builder.render(meta, end), out.getvalue()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("timeline", [0, 1, 3, 50])
def test_streaming_path_is_the_list_path(tmp_path, case, timeline):
    files = make_files(tmp_path, CASES[case][0])
    assert streaming_path(files, timeline) == list_path(files, timeline)


def test_event_store_gives_what_build_packets_gives():
    evs = [dict(e) for e in small_events()]
    for e in evs:
        e.pop("type")
    store = reconstruct.EventStore()
    for e in evs:
        store.add(e)
    assert store.events == len(evs)
    assert list(store.packets(NS)) == build_packets(evs, NS)
    assert list(store.packets(NS, reuse_gap_ns=10 * S)) == build_packets(evs, NS, 10 * S)


def test_event_store_keeps_json_types_apart():
    """Events alike but for 1 / 1.0 / true share no shape: the JSON would change."""
    base = {"t_ns": 1, "id": 1, "hook": "h", "kind": "pass", "cpu": 1, "encap": False,
            "netns": 5}
    evs = [base, dict(base, t_ns=2, cpu=1.0), dict(base, t_ns=3, cpu=True, encap=0),
           dict(base, t_ns=4, host="b"), dict(base, t_ns=5, host=None),
           dict(base, t_ns=6, kind="drop", stack=["f+0x1"], reason="R"),
           {"t_ns": 7, "id": 1, "hook": ["odd"], "kind": "pass"}]
    store = reconstruct.EventStore()
    for e in evs:
        store.add(e)
    out = io.StringIO()
    report.write_json(store.packets(), out)
    ref = io.StringIO()
    report.write_json(build_packets(evs), ref)
    assert out.getvalue() == ref.getvalue()
    assert '"cpu":1.0' in out.getvalue() and '"cpu":true' in out.getvalue()


@pytest.mark.parametrize("lost_ids", [[], [1], [0, 1, 2, 3], {"2": 5, "9": 1}, [5, 6, 7]])
def test_mark_incomplete_sorted_is_mark_incomplete(lost_ids):
    evs = [{"t_ns": t, "id": pid, "hook": "h", "kind": "pass", "skb": t}
           for pid, t in [(1, 10), (1, 5 * S), (3, 20), (4, 30), (6, 40)]]
    packets = build_packets(evs)
    for suspect in (False, True):
        assert list(reconstruct.mark_incomplete_sorted(packets, lost_ids, suspect)) == \
            mark_incomplete(list(reversed(packets)), lost_ids, suspect)


def test_builder_without_packets_or_with_only_lost_ids():
    text = report.ReportBuilder().render({}, {"lost": 2})
    assert "no matching packets seen" in text and "2 events lost by the tracer" in text
    builder = report.ReportBuilder(max_timeline_packets=1)
    for p in mark_incomplete([], [3, 1]):
        builder.add(p)
    text = builder.render()
    assert "== timeline (first 1 of 2 packets; see --timeline) ==" in text
    assert "2 packets: 0 delivered, 0 dropped, 0 lost, 2 incomplete" in text


def test_json_to_stdout_streams_without_the_report(tmp_path):
    files = make_files(tmp_path, ["small"])
    p = subprocess.run([sys.executable, "run.py", "report"] + files + ["--json", "-"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == list_path(files, 50)[1]
