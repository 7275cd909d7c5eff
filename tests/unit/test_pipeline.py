"""Live and recorded give the same answer: kernel records fed through the live pipeline (the code
commands/trace.py runs, without root or a tracer) and `run.py report` on the recording it wrote
must print the same report and write the same JSON, byte for byte, whatever the tracer lost."""
import io
import json
import os
import subprocess
import sys

import pytest

from pktpath.events import records
from pktpath.events.recording import RecordingWriter
from pktpath.output import sinks
from pktpath.process import pipeline, sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = ["net_dev_queue", "netif_receive_skb", "kfree_skb", "sk_data_ready"]
NAMES = {"4026532301": "pp-ctrA", "4026532302": "pp-hostA", "4026532303": "pp-hostB",
         "4026532304": "pp-ctrB"}
REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 6: "NETFILTER_DROP"}
PASS, DROP, DELIVER = 0, 1, 2
T0 = 7 * 10 ** 12


def symbolize(addr):
    return "nf_hook_slow+0x%x" % (addr & 0xfff)


# (netns, hook, dev, encap): the hops of a packet from container A to container B
ROUTE = [(4026532301, 0, b"eth0", False), (4026532302, 0, b"pp-ul", True),
         (4026532303, 1, b"pp-ul", True), (4026532303, 1, b"pp-vx", False),
         (4026532304, 1, b"eth0", False)]


IN_SRC, IN_DST = bytes([10, 0, 1, 1]) + bytes(12), bytes([10, 0, 1, 2]) + bytes(12)
OUT_SRC, OUT_DST = bytes([192, 0, 2, 1]) + bytes(12), bytes([192, 0, 2, 2]) + bytes(12)


def flows(encap=True, vni=42):
    """The inner flow and (if `encap`) the VXLAN tunnel of the test packets, as record fields."""
    f = {"inner.family": 4, "inner.protocol": 17, "inner.saddr": IN_SRC,
         "inner.daddr": IN_DST, "inner.sport": 40000, "inner.dport": 5000}
    if encap:
        f.update({"tun.type": 1, "tun.vni": vni, "tun.outer.family": 4,
                  "tun.outer.protocol": 17, "tun.outer.saddr": OUT_SRC,
                  "tun.outer.daddr": OUT_DST, "tun.outer.sport": 51000,
                  "tun.outer.dport": 4789})
    return f


def path_record(pid, hops, final=PASS, reason=0, location=0, t=None, skb=None):
    """A summary-mode pp_path record of packet `pid`: the first `hops` hops of ROUTE, then the
    final drop or delivery (if any)."""
    steps = [(ns, hook, dev, encap, PASS) for ns, hook, dev, encap in ROUTE[:hops]]
    if final == DROP:
        steps.append((ROUTE[hops - 1][0], 2, b"", False, DROP))
    elif final == DELIVER:
        steps.append((4026532304, 3, b"", False, DELIVER))
    head = records.PATH.pack(flows(), first_ts=t or T0 + pid * 50_000, id=pid,
                             final_kind=final,
                             skb=skb or 0xffff888000000000 + pid * 256 + (t is not None),
                             port=5000 if final == DELIVER else 0, reason=reason,
                             location=location, stack_id=-1, nhops=len(steps))
    hops_bytes = b"".join(
        records.HOP.pack(dt=i * 3000 + pid % 7, hook=hook, kind=kind, netns=ns, dev=dev,
                         cpu=pid % 2, ifindex=2 + i,
                         flags=records.F_HOP_SET | (records.F_ENCAP if encap else 0))
        for i, (ns, hook, dev, encap, kind) in enumerate(steps))
    return head + hops_bytes


def summary_records():
    out = []
    for pid in range(1, 13):
        if pid % 4 == 1:
            out.append(path_record(pid, 5, DROP, reason=6 if pid % 8 == 1 else 3,
                                   location=0x9e + pid))
        elif pid % 4 == 2:
            out.append(path_record(pid, 2 + pid % 3))          # lost on the way
        else:
            out.append(path_record(pid, 5, DELIVER))
    out.append(path_record(3, 2, t=T0 + 5 * 10 ** 9))          # ID 3 reused later, lost
    # issue #18: two senders send ID 20 at once (two skbs, interleaved hops; as captured on
    # the lab ~1 ID in 100, both paths begun in the same nanosecond on two CPUs), and ID 21
    # twice on one recycled skb, the first one superseded on the way (emitted open)
    out.append(path_record(20, 5, DELIVER, t=T0 + 10 ** 9, skb=0xffff888000a00000))
    out.append(path_record(20, 5, DELIVER, t=T0 + 10 ** 9, skb=0xffff888000b00000))
    out.append(path_record(21, 3, t=T0 + 2 * 10 ** 9, skb=0xffff888000c00000))
    out.append(path_record(21, 5, DELIVER, t=T0 + 2 * 10 ** 9 + 40_000, skb=0xffff888000c00000))
    return out


def event_records(paths=None):
    """Events mode: one pp_event per hop, made from the summary records' hops (those of
    `paths`, pp_path records, if given)."""
    dec = records.PathDecoder(HOOKS, REASONS, symbolize)
    out = []
    for data in summary_records() if paths is None else paths:
        for ev in dec.decode_path(data):
            out.append(records.EVENT.pack(
                flows(ev["encap"], ev["vni"] or 0), ts=ev["t_ns"], skb=ev["skb"], id=ev["id"],
                netns=ev["netns"], ifindex=ev["ifindex"], hook=HOOKS.index(ev["hook"]),
                cpu=ev["cpu"], kind=records.KINDS.index(ev["kind"]),
                flags=records.F_ENCAP if ev["encap"] else 0, port=ev["port"] or 0,
                dev=ev["dev"].encode(), reason=ev["reason_code"] or 0, stack_id=-1,
                location=int(ev["location"].split("+0x")[1], 16) if ev["location"] else 0))
    out.sort(key=lambda b: records.EVENT.unpack(b)["ts"])
    return out


META = {"version": 1, "host": "lab", "config": {}, "hooks": HOOKS, "netns_names": NAMES,
        "clock": {"mono_ns": 0, "wall_ns": 0},
        "coverage": [{"hook": h, "method": "tp_btf", "status": "attached", "why": ""}
                     for h in HOOKS]}


def live(tmp_path, counters, lost_ids, mode="summary", record=True, timeline=50,
         keep_delivered=10000, meta=META):
    """(report text, JSON text, recording path) of a live trace that saw the records."""
    rec_path = tmp_path / ("rec-%s.jsonl" % mode)
    rec = RecordingWriter(str(rec_path)) if record else None
    out = io.StringIO()
    pipe = pipeline.LivePipeline(records.PathDecoder(HOOKS, REASONS, symbolize), lambda: NAMES,
                                 summary=mode == "summary", json_out=out, rec=rec,
                                 keep_delivered=keep_delivered)
    if rec:
        rec.meta(meta)
    for data in summary_records() if mode == "summary" else event_records():
        pipe.on_record(data)
    pipe.flush()
    pipe.settle()
    _packets, text = sinks.live_report(pipe, dict({"lost": 0, "unreachable": 0, "from_map": 0,
                                       "lost_paths_full": 0, "rescued": 0, "from_frags": 0},
                                      **counters), lost_ids, meta, timeline)
    return text, out.getvalue(), rec_path


def report(path, timeline=50):
    """(report text, JSON text) of `run.py report` on a recording."""
    out = str(path) + ".out.jsonl"
    p = subprocess.run([sys.executable, "run.py", "report", str(path), "--timeline",
                        str(timeline), "--json", out], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and not p.stderr, p.stderr
    with open(out) as f:
        return p.stdout, f.read()


LOSSES = {
    "none": ({}, {}),
    "untied": ({"lost": 5}, {}),                           # the end line "lost":5,"lost_ids":{}
    "per_id": ({"lost": 4}, {3: 2, 6: 1, 99: 1}),          # every lost record tied to its ID
    "per_id_and_untied": ({"lost": 9}, {3: 2, 99: 1}),
    "frags": ({"from_frags": 7, "unreachable": 2}, {}),
    "recursion": ({"recursion_misses": 3, "recursion_misses_hooks": {"netif_receive_skb": 3}},
                  {}),
}


@pytest.mark.parametrize("mode", ["summary", "events"])
@pytest.mark.parametrize("case", sorted(LOSSES))
def test_live_and_recorded_reports_are_the_same(tmp_path, case, mode):
    counters, lost_ids = LOSSES[case]
    text, js, rec = live(tmp_path, counters, lost_ids, mode)
    assert report(rec) == (text + "\n", js)
    # and without a recording (summary mode then keeps records raw, DeliveredJSON writes)
    assert live(tmp_path, counters, lost_ids, mode, record=False)[:2] == (text, js)


def verdicts(js):
    return {(p["id"], p["first_ns"]): (p["verdict"], p.get("incomplete"))
            for p in map(json.loads, js.splitlines())}


def test_untied_losses_make_lost_incomplete_both_ways(tmp_path):
    _text, js, rec = live(tmp_path, {"lost": 5}, {})
    v = verdicts(js)
    assert ("lost", None) not in v.values()
    assert v[(2, T0 + 2 * 50_000 + 2)] == ("incomplete", True)
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["lost"] == 5 and end["lost_ids"] == {}
    assert "5 lost records could not be tied" in end["warnings"][0]


def _coverage(deliver_status):
    return [{"hook": h, "kind": "deliver" if h == "sk_data_ready" else "pass",
             "method": "tp_btf", "status": deliver_status if h == "sk_data_ready" else "attached",
             "why": ""} for h in HOOKS]


def test_without_a_delivery_hook_nothing_is_lost_both_ways(tmp_path):
    """A trace whose delivery hook could not be attached cannot tell delivered from lost: no
    packet is `lost` (incomplete, with a note), live and from the recording."""
    text, js, rec = live(tmp_path, {}, {}, meta=dict(META, coverage=_coverage("skipped")))
    seen = {v for v, _ in verdicts(js).values()}
    assert "lost" not in seen and "incomplete" in seen, seen
    assert "no delivery hook was attached" in text
    assert report(rec) == (text + "\n", js)
    # the same records with the delivery hook attached: some are lost
    _text, js, _rec = live(tmp_path, {}, {}, meta=dict(META, coverage=_coverage("attached")))
    assert "lost" in {v for v, _ in verdicts(js).values()}


def test_per_id_losses_are_kept_in_the_recording(tmp_path):
    _text, js, rec = live(tmp_path, {"lost": 4}, {3: 2, 6: 1, 99: 1})
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["lost_ids"] == {"3": 2, "6": 1, "99": 1}
    v = verdicts(js)
    assert v[(6, T0 + 6 * 50_000 + 6)] == ("incomplete", 1)
    assert v[(99, None)] == ("incomplete", 1)
    assert ("lost", None) in v.values()                   # not suspect: all losses tied


def old_recording(path, rec, lost, lost_ids):
    """`rec` rewritten with the end line an older pktpath wrote: lost_ids a sorted list, no
    notes."""
    lines = rec.read_text().splitlines()
    end = {"type": "end", "lost": lost, "unreachable": 0, "from_map": 0,
           "netns_names": NAMES, "events": 0, "lost_ids": sorted(lost_ids)}
    path.write_text("\n".join(lines[:-1] + [json.dumps(end)]) + "\n")


def test_an_old_recording_with_untied_losses_reports_what_the_live_run_did(tmp_path):
    """An older recording ending "lost":5,"lost_ids":[] was reported `lost` by `report` and
    `incomplete` live."""
    text, js, rec = live(tmp_path, {"lost": 5}, {})
    old = tmp_path / "old.jsonl"
    old_recording(old, rec, 5, [])
    assert report(old) == (text + "\n", js)


def test_an_old_recording_lists_ids_each_counted_once(tmp_path):
    _text, js, rec = live(tmp_path, {"lost": 2}, {3: 1, 6: 1})
    old = tmp_path / "old.jsonl"
    old_recording(old, rec, 2, [3, 6])          # every loss tied: `lost` stays lost
    v = verdicts(report(old)[1])
    assert v[(6, T0 + 6 * 50_000 + 6)] == ("incomplete", True)
    assert ("lost", None) in v.values()
    old_recording(old, rec, 3, [3, 6])          # one more than listed: suspect
    assert ("lost", None) not in verdicts(report(old)[1]).values()


def test_the_policy_is_idempotent():
    end = {"lost": 3, "lost_ids": {"1": 1}, "from_frags": 2}
    once = pipeline.settle_end(dict(end))
    assert len(once["warnings"]) == 2
    assert pipeline.settle_end(json.loads(json.dumps(once))) == once


def test_delivered_past_the_quota_are_streamed_and_counted_both_ways(tmp_path):
    """Past --keep-delivered the live report counts delivered packets it no longer holds; the
    JSON has them all, as the recording's report does (in ID order there)."""
    text, js, rec = live(tmp_path, {}, {}, keep_delivered=2)
    rtext, rjs = report(rec)
    assert sorted(js.splitlines()) == sorted(rjs.splitlines())
    summary = [line for line in text.splitlines() if " packets: " in line]
    assert summary and summary[0] in rtext


def test_unparsed_ipv6_and_geneve_counts_are_notes():
    end = pipeline.settle_end({"ip6_ext_unwalked": 3, "geneve_opts_unread": 2})
    assert any(w.startswith("3 hook firings saw an IPv6 packet whose extension header chain")
               for w in end["warnings"])
    assert any(w.startswith("2 hook firings saw a Geneve packet whose options")
               for w in end["warnings"])
    assert pipeline.settle_end(dict(end))["warnings"] == end["warnings"]   # once only


@pytest.mark.parametrize("mode", ["summary", "events"])
def test_packets_sharing_an_id_are_counted_both_ways(tmp_path, mode):
    """Issue #18: two packets of ID 20 sent at once, two of ID 21 one after the other: four
    packets, one delivery each (never two in one path); the report says how many packets had
    an ID already used (IDs 3, 20, 21: 3), live and from the recording alike, and the
    recording's end line has the count."""
    text, js, rec = live(tmp_path, {}, {}, mode)
    pkts = [json.loads(line) for line in js.splitlines()]
    got = sorted((p["id"], p["verdict"], p["events"]) for p in pkts if p["id"] in (20, 21))
    assert got == [(20, "delivered", 6), (20, "delivered", 6), (21, "delivered", 6),
                   (21, "lost", 3)]
    for p in pkts:
        assert sum(h["hook"] == "sk_data_ready" for h in p["path"]) <= 1
    assert "packet IDs are not unique: 3 packets had the ID of another packet" in text
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["duplicate_ids"] == 3
    assert report(rec) == (text + "\n", js)


def _flood(n, stopping=None, by=None, settle_ns=None):
    """The report of a live trace that saw `n` plain dropped packets (the flood of
    tests/root/test_flood.py), finished in the loop (settle_ns 0) or at the stop."""
    import time
    pipe = pipeline.LivePipeline(records.PathDecoder(HOOKS, REASONS, symbolize), lambda: NAMES,
                                 stopping=stopping)
    if settle_ns is not None:
        pipe.stream.settle_ns = settle_ns
    for pid in range(1, n + 1):
        pipe.on_record(path_record(pid, 5, DROP, reason=3, location=0x9e))
    time.sleep(0.001)
    pipe.flush()
    left = len(pipe.stream.raw)
    pipe.settle()
    counters = {"lost": 0, "unreachable": 0, "from_map": 0, "lost_paths_full": 0,
                "rescued": 0, "from_frags": 0}
    return sinks.live_report(pipe, counters, {}, META, 5, by=by)[1], left


def test_a_flush_under_way_at_the_stop_stops_short_and_the_stop_finishes_the_rest():
    whole, left = _flood(10000, settle_ns=0)
    assert left == 0
    stopped, left = _flood(10000, stopping=lambda: True, settle_ns=0)
    assert 0 < left < 10000           # stopped short after a batch: the rest at the stop
    assert stopped == whole


def test_past_the_deadline_the_stop_counts_packets_without_their_latencies():
    import re
    import time
    whole, _ = _flood(6000)
    late, _ = _flood(6000, by=time.monotonic() - 1)
    head = re.compile(r"^\d+ packets?: .*$", re.M)
    assert head.search(late).group(0) == head.search(whole).group(0)   # the same verdicts
    # (the first 1000, kept in the sample, are reported whole)
    assert "latencies: %d packets finished at the stop" % (6000 - sample.FIRST) in late
    assert re.search(r"kfree_skb/pp-ctrB +%d " % sample.FIRST, late)
    assert "latencies:" not in whole
    assert re.search(r"NO_SOCKET .* 6000 ", late) and re.search(r"NO_SOCKET .* 6000 ", whole)


SKIPPED = "the kernel skipped"


def test_runs_the_kernel_skipped_are_a_note_and_make_lost_incomplete_both_ways(tmp_path):
    """recursion_misses in the end record (runs of pktpath's programs the kernel skipped, the
    same program already running on that CPU): a note, and no `lost` verdict (a skipped run at
    the delivery hook looks like a loss), live and from the recording."""
    text, js, rec = live(tmp_path, {"recursion_misses": 3,
                                    "recursion_misses_hooks": {"sk_data_ready": 3}}, {})
    assert "the kernel skipped 3 runs of pktpath's programs (the same program already " \
           "running on that CPU)" in text
    assert ("lost", None) not in verdicts(js).values()
    assert v_incomplete(js)
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["recursion_misses"] == 3 and end["recursion_misses_hooks"] == {"sk_data_ready": 3}
    assert sum(SKIPPED in w for w in end["warnings"]) == 1
    assert report(rec) == (text + "\n", js)
    # what `report` prints comes from the end record: with it removed, no note
    lines = rec.read_text().splitlines()
    bare = dict(end, warnings=[w for w in end["warnings"] if SKIPPED not in w])
    bare.pop("recursion_misses")
    (tmp_path / "bare.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(bare)]) + "\n")
    assert SKIPPED not in report(tmp_path / "bare.jsonl")[0]


def v_incomplete(js):
    return ("incomplete", True) in verdicts(js).values()


def test_no_runs_skipped_no_note(tmp_path):
    """Zero (the figure read, nothing skipped) and absent (an old recording, or a kernel whose
    bpf_prog_info has no recursion_misses): no note, `lost` stays lost."""
    text, js, rec = live(tmp_path, {"recursion_misses": 0}, {})
    assert SKIPPED not in text and ("lost", None) in verdicts(js).values()
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["recursion_misses"] == 0
    old = tmp_path / "old.jsonl"
    old_recording(old, rec, 0, [])
    text, js = report(old)
    assert SKIPPED not in text and ("lost", None) in verdicts(js).values()


def test_runs_skipped_on_one_host_of_two_make_the_merged_report_unsure(tmp_path):
    """`report` of two hosts' recordings: the skipped runs of one are counted, noted once, and
    every `lost` verdict is `incomplete`."""
    _text, _js, rec_a = live(tmp_path, {"recursion_misses": 2}, {})
    _text, _js, rec_b = live(tmp_path, {"recursion_misses": 0}, {}, mode="events")
    _events, _meta, end = pipeline.load([str(rec_a), str(rec_b)])
    assert end["recursion_misses"] == 2
    assert sum(SKIPPED in w for w in end["warnings"]) == 1
    packets = [{"id": 1, "first_ns": 1, "verdict": "lost", "path": []}]
    assert [p["verdict"] for p in pipeline.finish(packets, end)] == ["incomplete"]
    assert [p["verdict"] for p in pipeline.finish(
        [dict(packets[0])], {"lost": 0, "recursion_misses": 0})] == ["lost"]
    assert pipeline.settle_end(dict(end)) == end                       # idempotent
