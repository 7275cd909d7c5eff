#!/usr/bin/env python3
"""User-space cost per summary record, without the kernel: what a live trace spends in Python
for each packet (ring buffer read, record handling, the periodic flush), measured on a file laid
out like the BPF ring buffer map, so the figure does not drift with the machine's load.

Usage: python3 bench/records.py [--records N] [--json]     (no root, no lab)
"""
import argparse
import json
import mmap
import os
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pktpath.events import records
from pktpath.collect import ringbuf
from pktpath.process import stream as stream_mod
from pktpath.process import pipeline  # noqa: E402


def record(pid, hops=9):
    """A delivered packet's pp_path record with `hops` hops, as the kernel emits it."""
    head = records.PATH.pack({"inner.family": 4, "inner.protocol": 17,
                              "inner.saddr": bytes([198, 51, 100, 1]) + bytes(12),
                              "inner.daddr": bytes([198, 51, 100, 2]) + bytes(12),
                              "inner.sport": 40000, "inner.dport": 5000},
                             first_ts=10 ** 12 + pid, id=pid, final_kind=records.KIND_DELIVER,
                             port=5000, nhops=hops, stack_id=-1)
    return head + b"".join(records.HOP.pack(dt=i * 1000, hook=i % 3, kind=0,
                                            flags=records.F_HOP_SET, dev=b"eth0")
                           for i in range(hops))


def ring_file(path, n, size):
    """A ring of `size` bytes holding records for IDs 1..n (as many as fit); returns count."""
    data, pos, count = bytearray(size), 0, 0
    for pid in range(1, n + 1):
        rec = record(pid)
        step = (len(rec) + 8 + 7) & ~7
        if pos + step > size:
            break
        data[pos:pos + 8] = struct.pack("<II", len(rec), 0)
        data[pos + 8:pos + 8 + len(rec)] = rec
        pos += step
        count += 1
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 0).ljust(mmap.PAGESIZE, b"\0") +
                struct.pack("<Q", pos).ljust(mmap.PAGESIZE, b"\0") + bytes(data) * 2)
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = 1 << 27
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ring")
        n = ring_file(path, args.records, size)
        st = stream_mod.PacketStream(lambda: {}, keep_delivered=10000, expand=lambda r: [])
        handle = pipeline.summary_handler(st)
        with open(path, "r+b") as fh:
            reader = ringbuf.RingReader(fh.fileno(), size, wait=False)
            t0 = time.perf_counter()
            done = 0
            while done < n:
                done += reader.consume(handle, limit=4096)   # as polls take them
                st.flush()
            st.flush(force=True)
            elapsed = time.perf_counter() - t0
            reader.close()
    out = {"records": n, "us_per_record": elapsed / n * 1e6,
           "kept": st.kept_delivered, "counted": st.streamed}
    print(json.dumps(out) if args.json else
          "%d records: %.2f us per record (%d kept for the report, %d counted)"
          % (n, out["us_per_record"], out["kept"], out["counted"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
