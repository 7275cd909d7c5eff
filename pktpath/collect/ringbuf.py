"""A BPF ring buffer consumer that reads the map's memory directly (no per-record callback).

bcc's ring_buffer_poll calls a Python function through ctypes for every record (~15 us each);
at tens of thousands of packets per second that alone saturates a core and the buffer overflows.
Here the map is mmap()ed as the kernel lays it out (Documentation/bpf/ringbuf.rst):

    page 0                consumer position (u64), writable by user space
    page 1                producer position (u64), read-only
    page 2 ...            data, 2 x size: the data pages are mapped twice in a row, so a
                          record that wraps around the end can be read as one slice

Each record starts with an 8-byte header: u32 length (bit 31: still being written, bit 30:
discarded) and u32 page offset; the next record starts at the length + 8, rounded up to 8.
Records are taken in one pass and handed over as bytes; the consumer position is advanced once
per pass. Waiting uses epoll on the map fd (the kernel signals it on a wake-up).

A drop flood fills the ring while the main thread does other work: the pipeline finishes the
packets gone quiet 4 times a second (`flush`: ~85 ms of Python per quarter second of a 75k/s
drop flood, ~195 ms for the first), and reads nothing meanwhile. Measured on the 2-CPU VM
(2026-11-30, tests/root/test_flood.py under a CPU hog): the 16 MiB ring up to 48-78% full,
always right after such a gap; a machine loaded a little more lost records. So `Rings` runs a
drainer thread: every 20 ms, a ring more than 1/8 full is emptied into a queue in memory (a
bytes copy per record: the GIL is taken from the flush for that long), which the next pass
hands over first, in order. Normally the main thread keeps the rings below that and the
drainer only looks.
"""
import collections
import mmap
import os
import select
import struct
import threading

BUSY = 1 << 31
DISCARD = 1 << 30
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingReader:
    def __init__(self, map_fd, size, wait=True):
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError("ring buffer size must be a power of two multiple of the page size")
        page = mmap.PAGESIZE
        self.size, self.mask, self.page = size, size - 1, page
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._ep = select.epoll()
        if wait:    # (tests read a file laid out like the map: no epoll on regular files)
            self._ep.register(map_fd, select.EPOLLIN)
        self.records = 0
        self._wake = None
        self.held_max = 0               # most records the drainer held at once
        self._held = collections.deque()    # records taken out by take(), not yet handed over
        self._lock = threading.Lock()

    def fill(self):
        """Bytes waiting in the ring (not counting what take() holds)."""
        return _U64.unpack_from(self._data, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

    def take(self, min_fill):
        """(Drainer thread) if more than `min_fill` bytes wait in the ring, move the records
        out of it into memory, for the next consume(); returns how many."""
        if self.fill() <= min_fill:
            return 0
        with self._lock:
            n = self._read(self._held.append, 1 << 62)
            if len(self._held) > self.held_max:
                self.held_max = len(self._held)
            return n

    def consume(self, handle, limit=None):
        """Hand every complete record to `handle(bytes)`, in order; returns how many.
        At most `limit` records if given (the rest stay for the next call)."""
        stop = (1 << 62) if limit is None else limit
        with self._lock:
            n = 0
            held = self._held
            if held:
                pop = held.popleft
                while held and n < stop:
                    handle(pop())
                    n += 1
            if n < stop:
                n += self._read(handle, stop - n)
            self.records += n
            return n

    def _read(self, handle, stop):
        """Up to `stop` records out of the ring, to `handle`; the consumer position advanced."""
        data, mask, page = self._data, self.mask, self.page
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(data, 0)[0]
        n = 0
        unpack = _U32.unpack_from
        while cons < prod:
            off = page + (cons & mask)
            hdr = unpack(data, off)[0]
            if hdr >> 30:                   # busy or discarded (rare)
                if hdr & BUSY:
                    break
                cons += ((hdr & ~DISCARD) + 15) & ~7
                continue
            off += 8
            handle(data[off:off + hdr])
            n += 1
            cons += (hdr + 15) & ~7         # header + length, rounded up to 8
            if n >= stop:
                break
        if n or cons != _U64.unpack_from(self._cons, 0)[0]:
            _U64.pack_into(self._cons, 0, cons)
        return n

    def watch(self, fd):
        """Also end a wait when `fd` (a non-blocking pipe, e.g. signal.set_wakeup_fd's) becomes
        readable: a signal then ends the wait at once (an interrupted epoll_wait is resumed by
        Python until its timeout). What is written to it is read and discarded."""
        self._ep.register(fd, select.EPOLLIN)
        self._wake = fd

    def poll(self, handle, timeout_ms):
        """Wait up to `timeout_ms` for a wake-up (records may also arrive without one), then
        consume everything available."""
        if not self.pending():
            for fd, _ev in self._ep.poll(timeout_ms / 1000.0):
                if fd == self._wake:
                    try:
                        os.read(fd, 512)
                    except OSError:
                        pass
        return self.consume(handle)

    def pending(self):
        """True if records are waiting."""
        return bool(self._held) or self.fill() > 0

    def waiting(self):
        """How many complete records wait to be read (those the drainer holds, and those in
        the ring: their headers walked, none consumed)."""
        data, mask, page = self._data, self.mask, self.page
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(data, 0)[0]
        n, unpack = 0, _U32.unpack_from
        while cons < prod:
            hdr = unpack(data, page + (cons & mask))[0]
            if hdr & BUSY:
                break
            if not hdr & DISCARD:
                n += 1
            cons += ((hdr & ~DISCARD) + 15) & ~7
        return n + len(self._held)

    def close(self):
        for m in (self._cons, self._data):
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        self._ep.close()


class Rings:
    """The program's two ring buffers read as one: `events` (cfg.ringbuf_pages) and `rescue`
    (the fallback ring a record goes to when `events` is full, program.RESCUE_PAGES).
    `snaps`: (pages, handler) of the --pcap program's `snaps` ring (header copies, handed to
    their own handler whenever the others are read), or None."""

    DRAIN_S = 0.02      # how often the drainer looks
    DRAIN_AT = 8        # ... and takes what waits in a ring more than 1/DRAIN_AT full

    def __init__(self, maps, pages, rescue_pages, snaps=None, drainer=True):
        self.events = RingReader(maps["events"].fd, pages * mmap.PAGESIZE)
        self.snaps, self._on_snap = None, None
        self._stop, self._drainer = threading.Event(), None
        try:
            self.rescue = RingReader(maps["rescue"].fd, rescue_pages * mmap.PAGESIZE)
            if snaps is not None:
                self.snaps = RingReader(maps["snaps"].fd, snaps[0] * mmap.PAGESIZE, wait=False)
                self._on_snap = snaps[1]
        except BaseException:
            self.close()
            raise
        if drainer:
            self._drainer = threading.Thread(target=self._drain, name="pktpath-ring-drainer",
                                             daemon=True)
            self._drainer.start()

    def _drain(self):
        rings = [(r, r.size // self.DRAIN_AT) for r in (self.events, self.rescue)]
        while not self._stop.wait(self.DRAIN_S):
            for r, at in rings:
                r.take(at)

    def _snaps(self):
        return self.snaps.consume(self._on_snap) if self.snaps is not None else 0

    def poll(self, handle, timeout_ms):
        """Wait for records (up to timeout_ms) and hand each to `handle`; returns how many."""
        n = self.events.poll(handle, timeout_ms) + self.rescue.consume(handle)
        self._snaps()
        return n

    def consume(self, handle, limit=None):
        """Hand every waiting record to `handle`, without waiting; returns how many. At most
        `limit` records of each ring if given."""
        n = self.events.consume(handle, limit) + self.rescue.consume(handle, limit)
        self._snaps()
        return n

    def waiting(self):
        """How many complete records wait in `events` and `rescue`."""
        return self.events.waiting() + self.rescue.waiting()

    def close(self):
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(5)
            self._drainer = None
        for r in (self.events, getattr(self, "rescue", None), self.snaps):
            if r is not None:
                r.close()
