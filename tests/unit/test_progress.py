"""The live status line: on a terminal only, in place, at most every `interval` s, cleared."""
import io

from pktpath.output import progress
from pktpath.process.stream import PacketStream


class FakeTTY(io.StringIO):
    def __init__(self, tty=True):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty

    def fileno(self):
        raise io.UnsupportedOperation("no fd")   # width falls back to 80


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


SNAP = {"packets": 12, "delivered": 8, "dropped": 2, "lost": 1, "open": 1, "events": 0,
        "events_lost": 3}


def test_status_line_in_place_throttled_and_cleared():
    out, clock, snaps = FakeTTY(), Clock(), []

    def source():
        snaps.append(1)
        return dict(SNAP, events=len(snaps) * 1000)
    st = progress.Status(source, out=out, interval=0.5, delay=1.0, clock=clock)
    assert st.enabled
    st.tick()
    assert out.getvalue() == "" and not snaps       # nothing during the first second
    clock.now += 1.0
    st.tick()
    first = out.getvalue()
    assert first.startswith("\r") and first.endswith("\x1b[K") and "\n" not in first
    assert "12 packets: 8 delivered, 2 dropped, 1 lost |" in first
    assert first.endswith("| tracer lost 3\x1b[K")
    clock.now += 0.2
    st.tick()                                        # too soon: not redrawn, not even read
    assert out.getvalue() == first and len(snaps) == 1
    clock.now += 0.3
    st.tick()
    second = out.getvalue()[len(first):]
    assert second.startswith("\r") and "2000 events/s" in second   # 1000 events in 0.5 s
    st.clear()
    assert out.getvalue().endswith("\r\x1b[K") and not st.shown
    n = len(out.getvalue())
    st.clear()                                       # nothing shown: nothing to clear
    assert len(out.getvalue()) == n


def test_never_written_when_not_a_terminal_or_quiet():
    for out, quiet in ((FakeTTY(tty=False), False), (FakeTTY(), True), (io.StringIO(), False)):
        clock = Clock()
        st = progress.Status(lambda: dict(SNAP), out=out, quiet=quiet, clock=clock)
        assert not st.enabled
        flush = object()
        assert st.wrap(flush) is flush               # the poll loop's flush, untouched
        clock.now += 10
        st.tick()
        st.clear()
        assert out.getvalue() == ""


def test_wrap_ticks_after_the_flush_and_lines_fit_the_terminal():
    out, clock, calls = FakeTTY(), Clock(), []
    big = dict(SNAP, packets=123456789, delivered=98765432, dropped=12345, lost=99999, open=5000,
               events_lost=10 ** 12)
    assert progress.format_status(big, 2.5e6) == (
        "123M packets: 98.8M delivered, 12.3k dropped, 100k lost | 2.5M events/s | "
        "tracer lost 1000G")
    st = progress.Status(lambda: dict(SNAP, packets=10 ** 30), out=out, delay=0, clock=clock)
    flush = st.wrap(lambda force=False: calls.append(force) or "r")
    assert flush(force=True) == "r" and calls == [True]
    line = out.getvalue()
    assert line.startswith("\r") and len(line[1:-len("\x1b[K")]) <= 79


def test_snapshot_of_a_live_stream():
    s = PacketStream(lambda: {}, keep_delivered=1)
    s.kept_delivered, s.streamed = 1, 4
    s.sampler.offer(7, 0, ("dropped", "NO_SOCKET", "x", 1), ("pkt", {}))
    s.sampler.offer(8, 0, ("other", "net_dev_queue", "eth0", 1), ("pkt", {}))
    s.sampler.offer(9, 0, ("dropped", "NO_SOCKET", "x", 1), ("pkt", {}))
    s.raw[10] = b"rec"
    s.events = 42
    snap = progress.snapshot(s, lambda: {"lost": 5, "unreachable": 0})
    assert snap == {"packets": 9, "delivered": 5, "dropped": 2, "lost": 1, "open": 1,
                    "events": 42, "events_lost": 5}

    def broken():
        raise OSError("map gone")
    assert progress.snapshot(s, broken)["events_lost"] == 0
