"""RingReader on a file laid out like a BPF ring buffer map (consumer page, producer page, data
mapped twice): records in order, discarded ones skipped, a record still being written stops the
pass, the consumer position advances, and a record that wraps around the end reads whole."""
import mmap
import struct

from pktpath.collect import ringbuf

PAGE = mmap.PAGESIZE
SIZE = PAGE                           # the smallest ring: one data page


def layout(tmp_path, records, cons=0, start=0):
    """A file with `records` ([(payload, flags)]) written from position `start`; returns
    (file, producer position)."""
    data = bytearray(SIZE)
    pos = start
    for payload, flags in records:
        hdr = struct.pack("<II", len(payload) | flags, 0)
        for i, b in enumerate(hdr + payload):
            data[(pos + i) % SIZE] = b
        pos += (len(payload) + 8 + 7) & ~7
    f = tmp_path / "ring"
    f.write_bytes(struct.pack("<Q", cons).ljust(PAGE, b"\0") +
                  struct.pack("<Q", pos).ljust(PAGE, b"\0") + bytes(data) * 2)
    return f, pos


def reader(f):
    fh = open(f, "r+b")
    return fh, ringbuf.RingReader(fh.fileno(), SIZE, wait=False)


def cons_pos(f):
    return struct.unpack_from("<Q", f.read_bytes(), 0)[0]


def test_records_in_order_discarded_skipped(tmp_path):
    f, prod = layout(tmp_path, [(b"one", 0), (b"two-discarded", ringbuf.DISCARD), (b"three", 0)])
    fh, r = reader(f)
    got = []
    assert r.consume(got.append) == 2
    assert got == [b"one", b"three"]
    r.close()
    fh.close()
    assert cons_pos(f) == prod


def test_busy_record_stops_the_pass(tmp_path):
    f, _ = layout(tmp_path, [(b"done", 0), (b"busy", ringbuf.BUSY), (b"after", 0)])
    fh, r = reader(f)
    got = []
    r.consume(got.append)
    assert got == [b"done"]
    r.close()
    fh.close()
    assert cons_pos(f) == 16          # past "done" only: the rest is read next time


def test_wrapping_record_reads_whole(tmp_path):
    start = SIZE - 16                 # header + 8 bytes fit before the end, the rest wraps
    payload = bytes(range(40))
    f, prod = layout(tmp_path, [(payload, 0)], cons=start, start=start)
    fh, r = reader(f)
    got = []
    r.consume(got.append)
    assert got == [payload]
    r.close()
    fh.close()
    assert cons_pos(f) == prod


def test_waiting_counts_complete_records_and_consume_takes_a_limit(tmp_path):
    """The stop counts what it leaves unread (waiting: complete records, not consumed) and
    reads in bounded chunks (limit)."""
    f, prod = layout(tmp_path, [(b"a", 0), (b"b-discarded", ringbuf.DISCARD), (b"c", 0),
                                (b"d", 0), (b"busy", ringbuf.BUSY), (b"e", 0)])
    fh, r = reader(f)
    assert r.waiting() == 3           # a, c, d: a discarded one is no record, a busy one ends
    assert r.waiting() == 3           # nothing consumed
    got = []
    assert r.consume(got.append, limit=2) == 2 and got == [b"a", b"c"]
    assert r.waiting() == 1


def test_drainer_take_holds_records_in_order(tmp_path):
    """What the drainer thread takes out of the ring (freeing it for the kernel) is handed over
    first by the next pass, in order, and counted once."""
    f, prod = layout(tmp_path, [(b"one", 0), (b"two", 0), (b"three", 0)])
    fh, r = reader(f)
    assert r.take(prod) == 0          # not more than min_fill waiting: left in the ring
    assert r.take(0) == 3
    assert cons_pos(f) == prod and r.fill() == 0 and r.pending() and r.records == 0
    assert r.waiting() == 3           # held, not read: the stop counts them unread
    got = []
    assert r.consume(got.append, limit=2) == 2
    assert r.consume(got.append) == 1
    assert got == [b"one", b"two", b"three"] and r.records == 3 and not r.pending()
    r.close()
    fh.close()
