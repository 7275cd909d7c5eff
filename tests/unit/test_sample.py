"""Bounded memory whatever the verdicts (process/sample.py): a flood of drops is aggregated
exactly, only a deterministic sample is kept, and the live report still equals the report of its
recording, byte for byte, whatever the arrival order."""
import io
import json
import random

from pktpath.events import records
from pktpath.events.recording import RecordingWriter
from pktpath.output import sinks
from pktpath.process import pipeline, sample
from tests.unit.test_pipeline import (DELIVER, DROP, HOOKS, META, NAMES, REASONS, path_record,
                                      report, symbolize)

COUNTERS = {"lost": 0, "unreachable": 0, "from_map": 0, "lost_paths_full": 0, "rescued": 0,
            "from_frags": 0}


def flood():
    """2600 packets: drops at two points (one rare), lost ones at two places, some delivered,
    and a few records that are not plain (a hop slot lost to a race)."""
    out = []
    for pid in range(1, 2601):
        if pid % 10 == 0:
            out.append(path_record(pid, 5, DELIVER))
        elif pid % 97 == 0:
            out.append(path_record(pid, 4, DROP, reason=6, location=0x1a0))    # rare point
        elif pid % 13 == 0:
            out.append(path_record(pid, 2 + pid % 2))                         # lost
        elif pid % 101 == 0:
            rec = bytearray(path_record(pid, 5, DROP, reason=3, location=0x9e))
            rec[records.PATH_HDR + 2 * records.HOP_SIZE + records.HOP.offset("flags")] = 0
            out.append(bytes(rec))                                            # not plain
        else:
            out.append(path_record(pid, 5, DROP, reason=3, location=0x9e))
    return out


def live(recs, lost_ids=None, counters=None, rec_path=None):
    rec = RecordingWriter(str(rec_path)) if rec_path else None
    out = io.StringIO()
    pipe = pipeline.LivePipeline(records.PathDecoder(HOOKS, REASONS, symbolize), lambda: NAMES,
                                 summary=True, json_out=out, rec=rec)
    if rec:
        rec.meta(META)
    for data in recs:
        pipe.on_record(data)
    pipe.flush()
    pipe.settle()
    kept = len(pipe.stream.packets)
    _packets, text = sinks.live_report(pipe, dict(COUNTERS, **(counters or {})), lost_ids or {}, META, 50)
    pipe.write_backlog()
    return text, out.getvalue(), kept


def test_a_flood_is_sampled_and_counted_exactly_in_any_order(tmp_path):
    recs = flood()
    text, js, kept = live(recs, rec_path=tmp_path / "rec.jsonl")
    rtext, rjs = report(tmp_path / "rec.jsonl")
    assert rtext == text + "\n"
    assert sorted(js.splitlines()) == sorted(rjs.splitlines())
    assert len(js.splitlines()) == 2600                    # every packet in the JSON
    # raw records, no recording: the plain ones aggregated from their bytes; shuffled
    for seed in (1, 2):
        shuffled = list(recs)
        random.Random(seed).shuffle(shuffled)
        text2, js2, kept2 = live(shuffled)
        assert text2 == text
        assert sorted(js2.splitlines()) == sorted(js.splitlines())
        # kept: the 260 delivered, the first 1000 others, 20 more of each drop point / place
        assert kept2 <= 260 + sample.FIRST + 5 * sample.PER_GROUP
    dropped = sum(1 for line in js.splitlines() if json.loads(line)["verdict"] == "dropped")
    assert "%d dropped" % dropped in text
    assert "verdicts (a sample: showing" in text and "of %d not delivered" % (2600 - 260) in text
    # the rare drop point has rows (its first 20) though their IDs are past the first 1000
    rare = [line for line in text.splitlines() if line.startswith("1455 ")]
    assert rare and "NETFILTER_DROP" in rare[0]


def test_the_policy_applies_to_aggregated_lost_packets(tmp_path):
    recs = flood()
    lost_ids = {2405: 1, 2418: 1, 5000: 2}     # 2405 and 2418 are lost packets, aggregated
    text, js, _ = live(recs, lost_ids, {"lost": 4}, tmp_path / "rec.jsonl")
    rtext, rjs = report(tmp_path / "rec.jsonl")
    assert rtext == text + "\n"
    assert "incomplete" in text
    # 5000 never seen: one record for it; 2405 seen (aggregated): none made up
    ids = [json.loads(line)["id"] for line in js.splitlines()]
    assert ids.count(5000) == 1 and ids.count(2405) == 1
    untied, *_ = live(recs, {}, {"lost": 3})   # losses not tied to IDs: no `lost` verdict left
    assert ", 0 lost" in untied


def test_sampler_keeps_the_lowest_ids_overall_and_per_group():
    spilled = []
    s = sample.Sampler(spilled.append, first=3, per_group=2)
    order = list(range(1, 21))
    random.Random(3).shuffle(order)
    for pid in order:
        s.offer(pid, 0, "a" if pid % 5 else "b", pid)
    assert s.kept() == [1, 2, 3, 5, 10]
    assert sorted(spilled + s.kept()) == list(range(1, 21))
