"""Recordings: raw events as JSON Lines (docs/DESIGN.md), written during a trace, read by `report`.

Line 1 is `{"type": "meta", "version": 1, ...}`, then one `{"type": "event", ...}` per event, and
last `{"type": "end", ...}`. A file is written as PATH.tmp and renamed when closed, so a trace
that dies never leaves a file that looks complete.
"""
import gc
import json
import os
import sys

from pktpath.errors import UserError

VERSION = 1
EVENT_KEYS = frozenset(("t_ns", "hook", "kind", "id"))
NO_END = "%s: no end line: the trace was interrupted, the recording may be incomplete"


class RecordingError(UserError):
    """An unreadable or corrupt recording; str() is one line `FILE[:LINE]: problem`."""


def _jsonable(obj):
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    return str(obj)


class RecordingWriter:
    """Writes a recording to a path (via PATH.tmp, renamed by close()), "-" (stdout) or an open
    text file. Use as a context manager: on an exception the .tmp file is left, not renamed."""

    def __init__(self, path_or_file):
        self.path = None
        if path_or_file == "-":
            self._fh, self._own = sys.stdout, False
        elif isinstance(path_or_file, (str, bytes, os.PathLike)):
            self.path = os.fsdecode(path_or_file)
            # a device or fifo (/dev/null) is written in place: never rename over it
            self._tmp = self.path if os.path.exists(self.path) and \
                not os.path.isfile(self.path) else self.path + ".tmp"
            try:
                self._fh = open(self._tmp, "w", buffering=1 << 20)
            except OSError as e:
                raise RecordingError("cannot write recording %s: %s"
                                     % (self.path, e.strerror)) from None
            self._own = True
        else:
            self._fh, self._own = path_or_file, False
        self._dumps = json.JSONEncoder(separators=(",", ":"), default=_jsonable).encode

    def _write(self, kind, record):
        self._fh.write('{"type":"%s",%s\n' % (kind, self._dumps(record)[1:]) if record else
                       '{"type":"%s"}\n' % kind)

    def meta(self, meta):
        """The first line: trace metadata (version added when missing)."""
        self._write("meta", dict({"version": VERSION}, **meta))

    def event(self, event):
        """One event dict (docs/DESIGN.md)."""
        self._write("event", event)

    def end(self, end):
        """The last line: counters and netns names resolved at the end."""
        self._write("end", end)

    def close(self):
        """Flush, close and rename PATH.tmp -> PATH (idempotent)."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        if not self._own:
            fh.flush()
            return
        fh.close()
        if self._tmp != self.path:
            os.replace(self._tmp, self.path)

    def abort(self):
        """Close without renaming: PATH.tmp stays as the evidence of an interrupted run."""
        if self._fh is not None and self._own:
            self._fh.close()
        self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close() if exc_type is None else self.abort()


def read_recording(path):
    """(meta, events, end) from a recording file.

    `end` is None when the file has no end line (an interrupted trace) and nothing to warn about.
    A truncated last line (a crash mid-write) is skipped with a message in end["warnings"] (with
    the NO_END warning when there was no end line);
    any other bad line raises RecordingError `FILE:LINE: problem`.
    """
    events = []
    meta, end = scan_recording(path, events.append)
    return meta, events, end


def scan_recording(path, on_event):
    """(meta, end) of a recording, as read_recording() gives them; each event dict is passed
    to `on_event` instead of being collected (a caller can keep it in a compact form)."""
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        raise RecordingError("%s: cannot read: %s" % (path, e.strerror)) from None
    meta, end, warnings = None, None, []
    bad = None          # (line number, problem) of an unparseable line, fatal unless it is last
    bad_is_last = True
    gc_was_enabled = gc.isenabled()
    gc.disable()    # a million new dicts would trigger many useless full collections
    with f:
        try:
            for n, line in enumerate(f, 1):
                if bad is not None:
                    bad_is_last = False
                    break
                try:
                    rec = _parse(line)
                except ValueError as e:
                    if line.strip():
                        bad = (n, "not valid JSON (%s)" % str(e).split(":")[0])
                    continue
                if type(rec) is not dict:
                    raise RecordingError("%s:%d: not a JSON object" % (path, n))
                kind = rec.pop("type", None)
                if kind == "event" and meta is not None and end is None:
                    if not EVENT_KEYS <= rec.keys():
                        raise RecordingError("%s:%d: event without %s" % (
                            path, n, ", ".join(sorted(EVENT_KEYS - rec.keys()))))
                    on_event(rec)
                elif meta is None:
                    if kind != "meta":
                        raise RecordingError('%s:%d: not a pktpath recording (the first line must '
                                             'be {"type": "meta", ...})' % (path, n))
                    if rec.get("version") != VERSION:
                        raise RecordingError("%s:%d: unsupported recording version %r (this "
                                             "pktpath reads version %d)"
                                             % (path, n, rec.get("version"), VERSION))
                    meta = rec
                elif end is not None:
                    raise RecordingError("%s:%d: data after the end line" % (path, n))
                elif kind == "end":
                    end = rec
                elif kind == "meta":
                    raise RecordingError("%s:%d: a second meta line (several recordings "
                                         "concatenated? pass them as separate files)" % (path, n))
                else:
                    raise RecordingError("%s:%d: unknown line type %r" % (path, n, kind))
        except OSError as e:
            raise RecordingError("%s: cannot read: %s" % (path, e.strerror)) from None
        finally:
            if gc_was_enabled:
                gc.enable()
    if bad is not None:
        if not bad_is_last or meta is None:
            raise RecordingError("%s:%d: %s" % ((path,) + bad))
        warnings.append("%s:%d: truncated last line skipped (the trace stopped mid-write?)"
                        % (path, bad[0]))
    if meta is None:
        raise RecordingError("%s: empty file, not a pktpath recording" % path)
    if warnings:
        if end is None:
            end = {"warnings": [NO_END % path]}
        end.setdefault("warnings", [])[:0] = warnings
    return meta, end


_scan_once = json.JSONDecoder().scan_once


def _parse(line):
    """json.loads(line), faster: the scanner is called directly (loads() wraps it in layers
    that cost as much as parsing a short line); anything unusual goes through loads() itself,
    so that values and errors are exactly loads()'s."""
    try:
        rec, end = _scan_once(line, 0)
    except (StopIteration, ValueError):
        return json.loads(line)
    if end != len(line) and line[end:].strip(" \t\n\r"):
        return json.loads(line)  # extra data: raises
    return rec
