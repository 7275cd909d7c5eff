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
    """SIGINT/SIGTERM set a flag; the poll loop notices within one poll timeout."""

    def __init__(self):
        self.reason = None
        self.at = None          # time.monotonic() of the (first) signal
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, _frame):
        if self.reason is None:
            self.at = time.monotonic()
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


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
    seconds more). Once a second: summary-mode paths quiet for `lost_after` s are swept into
    `on_record`; 4 times a second `flush()` (what is left for the stop is then at most
    ~1.25 s of traffic: the report comes soon after a signal); every `interval` s with --drops
    all: `on_drops(counts)`."""
    deadline = time.monotonic() + duration if duration else None
    next_drops = time.monotonic() + interval
    next_sweep = next_flush = time.monotonic() + 1.0
    while stop.reason is None:
        t.poll(100)
        t.drain()  # records queued without a wake-up (see pp_wakeup) are taken too
        if time.monotonic() >= next_flush:
            if summary and time.monotonic() >= next_sweep:
                for data in t.sweep(int(lost_after * 1e9)):
                    on_record(data)
                next_sweep += 1.0
            flush()
            next_flush += 0.25
        if t.drops_all and time.monotonic() >= next_drops:
            on_drops(t.drop_counts())
            next_drops += interval
        if deadline and time.monotonic() >= deadline:
            break
        if child.exited():
            end = time.monotonic() + grace
            while time.monotonic() < end and stop.reason is None:
                t.poll(50)
            break


def drain(t, on_record):
    """Take every record still in the tracer: the ring buffer, then every open path."""
    t.drain()
    for data in t.sweep():
        on_record(data)


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
