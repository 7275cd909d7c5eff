"""The packet JSON schema is declared once (events/schema.py): the records reconstruct builds,
the records of IDs whose events were all lost, and the fast DeliveredJSON lines follow it."""
import io
import json
import random

from pktpath.events import records
from pktpath.events import schema
from pktpath.output import report
from pktpath.process import reconstruct
from test_events import _random_delivered
from test_report_stream import NS, small_events


def test_reconstructed_packets_follow_the_schema():
    evs = [dict(e) for e in small_events()]
    packets = reconstruct.mark_incomplete(reconstruct.build_packets(evs, NS), {6: 2, 400: 1})
    kinds = {p["verdict"] for p in packets} | {k for p in packets for k in p
                                               if k in schema.PACKET_OPTIONAL}
    assert kinds >= {"delivered", "dropped", "lost", "incomplete", "clone_drops",
                     "freed_after_delivery"}
    assert any("stack" in (p["drop"] or {}) for p in packets)
    assert any("host" in h for p in packets for h in p["path"])
    for p in packets:
        assert schema.check(p) == [], p["id"]
    out = io.StringIO()
    report.write_json(packets, out)
    assert [schema.check(json.loads(line)) for line in out.getvalue().splitlines()] == \
        [[]] * len(packets)


def test_delivered_json_follows_the_schema():
    rng = random.Random(3)
    fast = records.DeliveredJSON(records.PathDecoder(["a", "b", "c"]))
    for pid in range(50):
        line = fast(_random_delivered(rng, pid), {4026531840: "root"})
        p = json.loads(line)
        assert schema.check(p) == []
        assert line == schema.packet_line(p)   # same separators and escapes as write_json


def test_check_finds_a_field_out_of_order():
    p = reconstruct.build_packets([{"t_ns": 1, "id": 1, "hook": "h", "kind": "pass"}])[0]
    assert schema.check(p) == []
    bad = dict(p)
    bad["events"] = bad.pop("events")
    assert schema.check(bad) and "packet" in schema.check(bad)[0]
    hop = dict(p["path"][0])
    hop["t_ns"] = hop.pop("t_ns")
    assert schema.check(dict(p, path=[hop]))
