"""The live status line of a long trace: on stderr when it is a terminal, one line updated in place
(carriage return) at most every `interval` seconds, and cleared before anything else is printed
(the report, a message). Never written when stderr is not a terminal (pipes, logs, tests).

It only reads counters the pipeline keeps anyway (process/stream.PacketStream, its Sampler) and
the tracer's counters map, from the poll loop's flush (4 times a second): nothing per event.
"""
import os
import sys
import time


def snapshot(stream, tracer_counters=None):
    """{packets, delivered, dropped, lost, open, events, events_lost} of a live PacketStream now:
    packets finished (delivered, dropped, or neither: lost from sight), packets still open, events
    read, and the events the tracer lost (`tracer_counters()`: the tracer's counters, or None)."""
    delivered = stream.kept_delivered + stream.streamed
    sampler = stream.sampler
    dropped = sampler.dropped
    lost = sampler.offered - dropped
    opened = len(stream.raw) + len(stream.pending)
    events_lost = 0
    if tracer_counters is not None:
        try:
            events_lost = tracer_counters().get("lost", 0)
        except Exception:   # a status line never stops a trace
            events_lost = 0
    return {"packets": delivered + dropped + lost + opened, "delivered": delivered,
            "dropped": dropped, "lost": lost, "open": opened, "events": stream.events,
            "events_lost": events_lost}


def _n(n):
    """A count in at most 5 characters: 1234, 12.3k, 4.56M."""
    n = int(n)
    if n < 10000:
        return "%d" % n
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return ("%.3g" % v if v < 100 else "%d" % v) + unit
    return "%d" % n


def format_status(s, rate):
    """The status line of snapshot `s` with `rate` events/s (packets still open are in the
    packet count, not in the verdicts)."""
    return ("%s packets: %s delivered, %s dropped, %s lost | %s events/s | tracer lost %s"
            % (_n(s["packets"]), _n(s["delivered"]), _n(s["dropped"]), _n(s["lost"]), _n(rate),
               _n(s["events_lost"])))


class Status:
    """The status line. `source()` gives a snapshot() dict; `out` (default sys.stderr) gets the
    line only if it is a terminal (and not `quiet`); the first line comes `delay` seconds after
    start (short traces print none)."""

    def __init__(self, source, out=None, quiet=False, interval=0.5, delay=1.0,
                 clock=time.monotonic):
        self.out = sys.stderr if out is None else out
        self.source, self.interval, self.clock = source, interval, clock
        try:
            tty = self.out.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty and not quiet
        self.shown = False
        now = clock()
        self._next = now + delay
        self._last = (now, None)      # (time, events) of the previous line

    def wrap(self, fn):
        """`fn` followed by tick(): for the poll loop's periodic flush (`fn` itself if off)."""
        if not self.enabled:
            return fn

        def ticking(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.tick()
            return result
        return ticking

    def tick(self):
        """Redraw the line if `interval` has passed since the last one."""
        if not self.enabled:
            return
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        s = self.source()
        t0, e0 = self._last
        rate = (s["events"] - e0) / (now - t0) if e0 is not None and now > t0 else 0.0
        self._last = (now, s["events"])
        line = format_status(s, rate)
        width = self._width()
        if len(line) > width - 1:       # a wrapped line could not be redrawn in place
            line = line[:width - 1]
        self._write("\r" + line + "\x1b[K")
        self.shown = True

    def clear(self):
        """Erase the line (before the report or any other message)."""
        if self.shown:
            self._write("\r\x1b[K")
            self.shown = False

    def _width(self):
        try:
            return os.get_terminal_size(self.out.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            return 80

    def _write(self, text):
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.enabled = False
