"""Recordings: write/read round trip, atomic rename, and one-line errors for corrupt files."""
import json
import os

import pytest

from pktpath.errors import UserError
from pktpath.events.recording import NO_END, RecordingError, RecordingWriter, read_recording

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
EVENT = {"t_ns": 100, "hook": "net_dev_queue", "kind": "pass", "id": 7, "skb": 1, "cpu": 0,
         "dev": "eth0", "ifindex": 2, "netns": 4026532301, "encap": False, "vni": None,
         "src": "198.51.100.1:40000", "dst": "198.51.100.2:5000", "outer_src": None,
         "outer_dst": None, "reason": None, "reason_code": None, "location": None, "port": None,
         "from_map": False}


def lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


META = {"type": "meta", "version": 1, "host": "h"}
END = {"type": "end", "lost": 0}


def ev_line(**kw):
    return dict(EVENT, type="event", **kw)


def error_of(path):
    with pytest.raises(RecordingError) as exc:
        read_recording(str(path))
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, UserError)
    return msg


def test_round_trip_and_atomic_rename(tmp_path):
    path = str(tmp_path / "rec.jsonl")
    w = RecordingWriter(path)
    w.meta({"host": "h", "netns_names": {"1": "a"}, "hooks": ("x", "y")})
    w.event(EVENT)
    w.event(dict(EVENT, id=8, t_ns=200))
    assert os.path.exists(path + ".tmp") and not os.path.exists(path)
    w.end({"lost": 3, "lost_ids": {8}})
    w.close()
    w.close()
    assert os.path.exists(path) and not os.path.exists(path + ".tmp")
    meta, events, end = read_recording(path)
    assert meta == {"version": 1, "host": "h", "netns_names": {"1": "a"}, "hooks": ["x", "y"]}
    assert events == [EVENT, dict(EVENT, id=8, t_ns=200)]
    assert end == {"lost": 3, "lost_ids": [8]}
    first = open(path).readline()
    assert json.loads(first)["type"] == "meta"


def test_interrupted_writer_leaves_only_tmp(tmp_path):
    path = str(tmp_path / "rec.jsonl")
    with pytest.raises(KeyboardInterrupt):
        with RecordingWriter(path) as w:
            w.meta({})
            w.event(EVENT)
            raise KeyboardInterrupt
    assert not os.path.exists(path) and os.path.exists(path + ".tmp")
    meta, events, end = read_recording(path + ".tmp")
    assert events == [EVENT] and end is None


def test_writer_to_stdout_and_file_objects(capsys, tmp_path):
    w = RecordingWriter("-")
    w.meta({"host": "h"})
    w.event(EVENT)
    w.end({})
    w.close()
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["type"] for x in out] == ["meta", "event", "end"]
    with open(tmp_path / "f.jsonl", "w") as fh:
        w = RecordingWriter(fh)
        w.meta({})
        w.close()
        assert not fh.closed
    assert read_recording(str(tmp_path / "f.jsonl")) == ({"version": 1}, [], None)


def test_unwritable_path(tmp_path):
    with pytest.raises(RecordingError, match="cannot write recording"):
        RecordingWriter(str(tmp_path / "no" / "such" / "dir.jsonl"))


@pytest.mark.parametrize("name", sorted(os.listdir(FIXTURES)))
def test_fixtures_load(name):
    meta, events, end = read_recording(os.path.join(FIXTURES, name))
    assert meta["version"] == 1 and meta["netns_names"]
    assert events and all("type" not in e for e in events)
    assert end["events"] == len(events)


def test_truncated_last_line_is_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    text = lines(META, ev_line(), ev_line(id=8))
    path.write_text(text + json.dumps(ev_line(id=9))[:40])
    meta, events, end = read_recording(str(path))
    assert [e["id"] for e in events] == [7, 8]
    assert end["warnings"][0] == "%s:4: truncated last line skipped (the trace stopped " \
                                 "mid-write?)" % path
    assert end["warnings"][1] == NO_END % path


def test_no_end_line_gives_none_and_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(lines(META, ev_line()) + "\n\n")
    assert read_recording(str(path)) == ({"version": 1, "host": "h"}, [EVENT], None)


@pytest.mark.parametrize("text,where,problem", [
    ("", "", "empty file, not a pktpath recording"),
    ("\n\n", "", "empty file"),
    (lines(ev_line()), ":1", "not a pktpath recording"),
    ('{"type": "me', ":1", "not valid JSON"),
    (lines({"type": "meta", "version": 2}), ":1", "unsupported recording version 2"),
    (lines(META) + "{not json\n" + lines(ev_line()), ":2", "not valid JSON"),
    (lines(META, ev_line()) + "[1, 2]\n", ":3", "not a JSON object"),
    (lines(META, {"type": "event", "t_ns": 1, "hook": "x"}), ":2", "event without id, kind"),
    (lines(META, END, ev_line()), ":3", "data after the end line"),
    (lines(META, ev_line(), META), ":3", "a second meta line"),
    (lines(META, {"type": "bogus"}), ":2", "unknown line type 'bogus'"),
])
def test_corrupt_files(tmp_path, text, where, problem):
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    msg = error_of(path)
    assert msg.startswith("%s%s: " % (path, where)) and problem in msg, msg


def test_unreadable(tmp_path):
    assert error_of(tmp_path / "nope") == "%s: cannot read: No such file or directory" % (
        tmp_path / "nope")
    assert error_of(tmp_path).startswith("%s: cannot read: " % tmp_path)


def test_recording_to_a_device_writes_in_place():
    """--record /dev/null must never replace the device node with a regular file."""
    from pktpath.events.recording import RecordingWriter
    w = RecordingWriter(os.devnull)
    w.meta({"host": "x"})
    w.close()
    assert not os.path.isfile(os.devnull) and not os.path.exists(os.devnull + ".tmp")


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_line = st.one_of(
    st.text(max_size=60),                                             # arbitrary text
    st.builds(lambda d: json.dumps(d), st.dictionaries(st.text(max_size=8),
                                                       st.integers() | st.text(max_size=8),
                                                       max_size=4)),
    st.just('{"type":"event","id":1,"t_ns":5,"hook":"x","kind":"pass"}'),
    st.just('{"type":"meta","version":1}'),
    st.just('{"type":"end","lost":0}'),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_line, max_size=12))
def test_any_file_reads_or_fails_with_one_line(tmp_path, lines):
    """Whatever a recording file holds, reading it returns or raises RecordingError with one
    line naming the file (property test)."""
    from pktpath.events.recording import RecordingError, read_recording
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        read_recording(str(path))
    except RecordingError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(path))
