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
"""
import mmap
import os
import select
import struct

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

    def consume(self, handle, limit=None):
        """Hand every complete record to `handle(bytes)`, in order; returns how many.
        At most `limit` records if given (the rest stay for the next call)."""
        data, mask, page = self._data, self.mask, self.page
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(data, 0)[0]
        n = 0
        stop = (1 << 62) if limit is None else limit
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
        self.records += n
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
        return _U64.unpack_from(self._data, 0)[0] > _U64.unpack_from(self._cons, 0)[0]

    def waiting(self):
        """How many complete records wait to be read (their headers walked, none consumed)."""
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
        return n

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

    def __init__(self, maps, pages, rescue_pages, snaps=None):
        self.events = RingReader(maps["events"].fd, pages * mmap.PAGESIZE)
        self.snaps, self._on_snap = None, None
        try:
            self.rescue = RingReader(maps["rescue"].fd, rescue_pages * mmap.PAGESIZE)
            if snaps is not None:
                self.snaps = RingReader(maps["snaps"].fd, snaps[0] * mmap.PAGESIZE, wait=False)
                self._on_snap = snaps[1]
        except BaseException:
            self.close()
            raise

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
        for r in (self.events, getattr(self, "rescue", None), self.snaps):
            if r is not None:
                r.close()
