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


def test_a_signal_ends_the_wait_at_once_and_stopping_follows_it():
    """Python resumes an interrupted epoll_wait until its timeout: the Stop's pipe (what the
    tracer's wait watches) is readable as soon as the signal comes."""
    import os
    import select
    import signal
    import time
    with session.Stop() as stop:
        assert not stop.stopping()
        ep = select.epoll()
        ep.register(stop.fd, select.EPOLLIN)
        os.kill(os.getpid(), signal.SIGTERM)
        t0 = time.monotonic()
        assert ep.poll(5.0) and time.monotonic() - t0 < 1.0
        assert stop.reason == "SIGTERM" and stop.stopping() and stop.at <= time.monotonic()
        ep.close()
    assert stop.fd is None
    later = session.Stop()
    later.end_at = time.monotonic() - 1       # the duration is over, no signal
    assert later.stopping()


class FakeTracer:
    """A tracer whose ring holds `n` records and whose open paths are `paths`."""

    def __init__(self, n, paths=()):
        self.left, self.paths = n, list(paths)

    def drain(self, limit=None):
        k = self.left if limit is None else min(limit, self.left)
        self.left -= k
        self.got = getattr(self, "got", 0) + k
        return k

    def unread(self):
        return self.left

    def sweep(self, older_than_ns=None):
        out, self.paths = self.paths, []
        return out


def test_drain_reads_the_ring_until_the_budget_then_counts_what_is_left():
    import time
    swept = []
    t = FakeTracer(10000, [b"open"])
    assert session.drain(t, swept.append, since=time.monotonic()) == 0      # in time: all
    assert t.got == 10000 and swept == [b"open"]
    t = FakeTracer(10000, [b"open"])
    left = session.drain(t, swept.append, since=time.monotonic() - 10)    # already due
    assert 0 < left == t.left == 10000 - t.got and swept == [b"open", b"open"]
    t = FakeTracer(10000)
    assert session.drain(t, swept.append) == 0 and t.got == 10000           # no budget
