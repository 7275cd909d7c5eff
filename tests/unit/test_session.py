"""The pure parts around a live trace: the --json file, stack cleaning, interval drop tables."""
import sys

import pytest

from pktpath.errors import UserError
from pktpath.output import drops, jsonfile
from pktpath.process import session


def test_json_file_is_renamed_when_complete(tmp_path):
    path = str(tmp_path / "v.jsonl")
    fh = jsonfile.open_json(path)
    fh.write("{}\n")
    assert not (tmp_path / "v.jsonl").exists() and (tmp_path / "v.jsonl.tmp").exists()
    jsonfile.close_json(fh, path)
    assert (tmp_path / "v.jsonl").read_text() == "{}\n"
    assert not (tmp_path / "v.jsonl.tmp").exists()


def test_json_to_stdout_devices_and_nowhere(tmp_path):
    assert jsonfile.open_json(None) is None and jsonfile.open_json("-") is sys.stdout
    jsonfile.close_json(sys.stdout, "-")
    assert not sys.stdout.closed
    fh = jsonfile.open_json("/dev/null")
    assert fh.name == "/dev/null"
    jsonfile.close_json(fh, "/dev/null")
    with pytest.raises(UserError, match="cannot write --json"):
        jsonfile.open_json(str(tmp_path / "no" / "such" / "dir"))


def test_clean_stack_drops_the_tracers_own_frames():
    frames = ["bpf_prog_1234", "bpf_trace_run3+0x5a", "kfree_skb_reason+0x1a", "ip_rcv+0x31"]
    assert session.clean_stack(frames) == frames[2:]
    assert session.clean_stack(["f+0x200000", "g+0x1"]) == ["g+0x1"]


def test_interval_table_shows_what_changed():
    table = drops.IntervalTable(lambda a: "f+0x%x" % a, {2: "NOT_SPECIFIED"}, lambda: {"5": "ns"})
    assert "NOT_SPECIFIED" in table([(0x10, 2, 5, 3)])
    assert table([(0x10, 2, 5, 3)]) == "no drops"
    assert table([(0x10, 2, 5, 7)]).splitlines()[-1].split()[0] == "4"
