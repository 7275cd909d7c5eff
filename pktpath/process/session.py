"""A live trace's life around the pipeline: signals -> stop flag, the single-tracer lock, the traced
COMMAND, and the poll loop with its timers (sweep, drop-count interval, deadline, grace).

Nothing here decodes or judges packets (process/pipeline.py) or prints a report (output/).
"""
import os
import signal
import subprocess
import time

from pktpath.errors import UserError
from pktpath.kernel import netns

LOCK_DIR = "/run/pktpath"


class Stop:
    """SIGINT/SIGTERM set a flag; the poll loop notices at once: the signal is also written to a
    pipe (`fd`, signal.set_wakeup_fd) that the tracer's wait watches (Tracer.wake_on), since
    Python resumes an interrupted epoll_wait until its timeout. `end_at` (time.monotonic(), set
    by poll_loop): when the loop ends without a signal (duration, COMMAND's exit + grace);
    `stopping()` is true from the signal or that moment on (work under way then stops short:
    the report is due)."""

    def __init__(self):
        self.reason = None
        self.at = None          # time.monotonic() of the (first) signal
        self.end_at = None
        self.fd = None          # read end of the signal pipe (None: not watched)
        self._old = {}
        self._old_wake = None
        self._pipe = ()

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._old_wake = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.fd, self._pipe = r, (r, w)
        except ValueError:      # not the main thread: the loop notices within a poll timeout
            os.close(r)
            os.close(w)
        return self

    def _handler(self, signum, _frame):
        if self.reason is None:
            self.at = time.monotonic()
        self.reason = signal.Signals(signum).name

    def stopping(self):
        return self.reason is not None or (self.end_at is not None and
                                           time.monotonic() >= self.end_at)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._pipe:
            signal.set_wakeup_fd(self._old_wake)
            for fd in self._pipe:
                os.close(fd)
            self._pipe, self.fd = (), None


def single_tracer_lock(cfg):
    """One tracer per (host label, netns filter): two identical tracers would both attach and
    double every cost. Tracers restricted to different namespaces (two lab "hosts") may run
    side by side. Returns the open, locked file (keep it while tracing); raises UserError if
    another holds it."""
    import fcntl
    import hashlib
    key = hashlib.sha1(repr((cfg.host, sorted(map(str, cfg.netns or ())))).encode()).hexdigest()
    os.makedirs(LOCK_DIR, exist_ok=True)
    f = open(os.path.join(LOCK_DIR, "trace-%s.lock" % key[:12]), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise UserError("another pktpath tracer with the same filter is running (pid %s)" % pid)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Child:
    """The traced COMMAND (None: no command): started once the probes are attached, ended when
    the trace ends."""

    def __init__(self):
        self.proc = None

    def start(self, command):
        try:
            self.proc = subprocess.Popen(command)
        except OSError as e:
            raise UserError("cannot run %s: %s" % (command[0], e.strerror)) from None

    def exited(self):
        return self.proc is not None and self.proc.poll() is not None

    def terminate(self):
        """Ask the command to end if it still runs (SIGTERM), without waiting: see stop()."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def stop(self):
        """Terminate the command if it still runs (killed after 5 s)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def poll_loop(t, stop, child, on_record, flush, summary, lost_after, duration=None, grace=0.5,
              interval=5.0, on_drops=None):
    """Poll tracer `t` until a signal (`stop`), the deadline, or the child's exit (then `grace`
    seconds more, flushing as before). Once a second: summary-mode paths quiet for `lost_after`
    s are swept into `on_record`; 4 times a second `flush()` (what is left for the stop is then
    at most ~1.25 s of traffic: the report comes soon after a signal; a flush under way at the
    stop stops short, see Stop.stopping); every `interval` s with --drops all:
    `on_drops(counts)`."""
    if duration:
        stop.end_at = time.monotonic() + duration
    if stop.fd is not None and hasattr(t, "wake_on"):
        t.wake_on(stop.fd)
    next_drops = time.monotonic() + interval
    next_sweep = next_flush = time.monotonic() + 1.0
    timeout = 100
    while stop.reason is None:
        t.poll(timeout)
        t.drain()  # records queued without a wake-up (see pp_wakeup) are taken too
        if time.monotonic() >= next_flush:
            if summary and time.monotonic() >= next_sweep:
                for data in t.sweep(int(lost_after * 1e9)):
                    on_record(data)
                next_sweep += 1.0
            if stop.stopping():
                break
            flush()
            next_flush += 0.25
        if t.drops_all and time.monotonic() >= next_drops:
            on_drops(t.drop_counts())
            next_drops += interval
        if stop.end_at is not None and time.monotonic() >= stop.end_at:
            break
        if timeout == 100 and child.exited():
            end = time.monotonic() + grace
            stop.end_at = end if stop.end_at is None else min(stop.end_at, end)
            timeout = 50


# the records waiting in the ring buffer when the loop ends are read until this long after the
# signal (or the loop's end); those left then are counted (`unread`), not read: the report is
# due within a second of the signal, and each record read must be finished too (a few us)
READ_FOR_S = 0.3


# and the latencies of the packets finished at the stop are sorted until this long after it;
# those of packets left then are not in the latency table (counted all the same: the report says
# how many, see sample.Aggregate.close)
FOLD_BY_S = 0.7


def drain(t, on_record, since=None, budget=READ_FOR_S):
    """Take the records still in the tracer: those in the ring buffer (until `budget` s after
    `since`, time.monotonic(), if given), then every open path. Returns how many complete
    records were left in the ring unread (0 when it was emptied); records written while it
    is read are not waited for."""
    left = t.unread() if since is not None else None
    until = since + budget if since is not None else None
    while True:
        n = t.drain(4096)
        if left is None:
            if not n:
                break
            continue
        left -= n
        if left <= 0 or (not n and not t.unread()):
            left = 0
            break
        if time.monotonic() >= until:
            left = min(left, t.unread())
            break
    for data in t.sweep():
        on_record(data)
    return left or 0


def netns_filter(wanted):
    """Set of netns inodes from the config's `netns` list (names or inodes); empty = all."""
    return {n if isinstance(n, int) else netns.netns_inode(n) for n in wanted or ()}


def netns_names():
    """{inode (str): name} of the named network namespaces now."""
    return {str(k): v for k, v in netns.netns_names().items()}


def clock_pair():
    """Monotonic (the BPF clock) and wall-clock now, to place kernel times on a wall clock."""
    return {"mono_ns": time.monotonic_ns(), "wall_ns": time.time_ns()}


def clean_stack(frames):
    """Drop the tracer's own frames (BPF program, bpf_trace_run*) from the top of a stack."""
    def own(f):
        name, _, off = f.partition("+0x")
        return name.startswith("bpf_trace_run") or not off or int(off, 16) > 0x100000
    i = 0
    while i < len(frames) and own(frames[i]):
        i += 1
    return frames[i:]
