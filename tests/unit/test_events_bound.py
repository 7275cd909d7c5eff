"""Events mode under a flood (#17): the events held unfinished are bounded (stream.MAX_EVENTS).
Past the bound an event of an ID not held is shed before it is decoded, counted in the same
`shed` as summary mode's records, and the report says so (every `lost` becomes `incomplete`);
an event of an ID held is always kept. Pure logic on recorded events."""
import io
import re

from pktpath.events import records
from pktpath.events.recording import RecordingWriter
from pktpath.output import sinks
from pktpath.process import pipeline
from pktpath.process.stream import MAX_EVENTS, PacketStream
from tests.unit.test_pipeline import (HOOKS, META, NAMES, REASONS, event_records, report,
                                      symbolize)
from tests.unit.test_sample import COUNTERS, flood
from tests.unit.test_stream import Clock, ev


class CountingDecoder(records.PathDecoder):
    """A PathDecoder that counts the events it decodes."""
    decoded = 0

    def decode(self, data):
        self.decoded += 1
        return super().decode(data)


def flood_events():
    """The events of tests/unit/test_sample.flood's 2600 packets (~6 each), in time order."""
    return event_records(flood())


def events_pipe(bound, rec=None, json_out=None, only_netns=()):
    dec = CountingDecoder(HOOKS, REASONS, symbolize)
    pipe = pipeline.LivePipeline(dec, lambda: NAMES, summary=False, rec=rec, json_out=json_out,
                                 only_netns=only_netns)
    pipe.stream.max_events = bound
    return pipe, dec


def test_the_stream_holds_at_most_its_bound_of_events_of_new_ids():
    clock = Clock()
    s = PacketStream(lambda: {}, settle_ns=10, clock=clock, max_events=5)
    for pid in (1, 2):
        for t in range(3):
            s.add(ev(pid, t))
    assert s.held == 6 and s.shed == 0          # ID 2 came in under the bound: all of it kept
    s.add(ev(3, 5))
    s.add(ev(3, 6))
    assert s.shed == 2 and 3 not in s.pending and s.held == 6
    assert s.sheds(4) and s.shed == 3           # the check before decoding: the same rule
    s.add(ev(1, 7, kind="drop"))                # an ID held: kept past the bound
    assert not s.sheds(2)
    assert s.held == 7 and len(s.pending[1]) == 4 and s.shed == 3
    assert s.events == 7                        # shed events are not counted as traced
    clock.t = 100
    s.flush()                                   # finished: room again
    assert s.held == 0 and not s.pending
    s.add(ev(3, 101))
    assert s.held == 1 and s.shed == 3
    assert {p["id"] for p in s.finish()} == {1, 2, 3}


def test_past_the_bound_events_of_new_ids_are_shed_undecoded_and_the_report_says_so(tmp_path):
    evs = flood_events()
    rec = RecordingWriter(str(tmp_path / "rec.jsonl"))
    rec.meta(META)
    out = io.StringIO()
    pipe, dec = events_pipe(600, rec=rec, json_out=out)
    held = set()
    for data in evs:
        pid, _ns = records.event_key(data)
        if pipe.stream.held < 600 or pid in pipe.stream.pending:
            held.add(pid)
        pipe.on_record(data)
    st = pipe.stream
    assert st.held >= 600 and set(st.pending) == held
    assert st.shed == len(evs) - st.held > 10000
    assert dec.decoded == st.events == st.held  # the shed ones were never decoded
    pipe.flush()
    pipe.settle()
    _packets, text = sinks.live_report(pipe, COUNTERS, {}, META, 50)
    pipe.write_backlog()
    assert "%d records were read past the bound" % st.shed in text
    # a doubt: no `lost` verdict (the packets lost on the way, held, are `incomplete`)
    head = re.search(r"^(\d+) packets: \d+ delivered, \d+ dropped, (\d+) lost, (\d+) incomplete",
                     text, re.M)
    assert head and int(head.group(1)) == len(held) and head.group(2) == "0"
    assert int(head.group(3)) > 0
    js = out.getvalue().splitlines()
    assert len(js) == len(held)                     # the packets of the IDs held, each once
    # the recording holds what was kept, and its end the count: `report` says the same
    assert report(tmp_path / "rec.jsonl") == (text + "\n", out.getvalue())


def test_under_the_bound_nothing_is_shed_and_the_report_is_unchanged(tmp_path):
    evs = flood_events()
    texts = []
    assert len(evs) < MAX_EVENTS
    for bound in (MAX_EVENTS, len(evs)):
        pipe, dec = events_pipe(bound)
        for data in evs:
            pipe.on_record(data)
        pipe.flush()
        pipe.settle()
        assert pipe.stream.shed == 0 and dec.decoded == len(evs)
        texts.append(sinks.live_report(pipe, COUNTERS, {}, META, 50)[1])
    assert texts[0] == texts[1] and "past the bound" not in texts[0]
    assert re.search(r"^\d+ packets: \d+ delivered, \d+ dropped, [1-9]\d* lost", texts[0], re.M)


def test_events_filtered_out_by_namespace_are_not_counted_as_shed():
    evs = flood_events()
    only = {4026532303}                             # one of the route's namespaces
    pipe, _dec = events_pipe(50, only_netns=only)
    for data in evs:
        pipe.on_record(data)
    st = pipe.stream
    kept = sum(len(v) for v in st.pending.values())
    assert kept == st.held and all(e["netns"] in only for v in st.pending.values() for e in v)
    ours = sum(1 for data in evs if records.event_key(data)[1] in only)
    assert st.shed == ours - st.held > 0
