#!/usr/bin/env python3
"""User-space cost per summary record, without the kernel: what a live trace spends in Python
for each packet (ring buffer read, record handling, the periodic flush), measured on a file laid
out like the BPF ring buffer map, so the figure does not drift with the machine's load.

--drops: a flood of drops instead (every 5th packet lost on the way): each record is read from
its bytes (sample.RawPaths) and counted into the aggregates (sample.Aggregate: verdict and drop
tables, per-hop latencies, funnel), what a drop flood costs; --resident also prints the
process's peak RSS (ru_maxrss) after the run.

Usage: python3 bench/records.py [--records N] [--drops] [--resident] [--json]  (no root, no lab)
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
from pktpath.process import sample  # noqa: E402


DROP_HOOKS = ["net_dev_queue", "netif_receive_skb", "net_dev_xmit", "kfree_skb"]


def record(pid, hops=9, drops=False):
    """A delivered packet's pp_path record with `hops` hops, as the kernel emits it; `drops`:
    one dropped after `hops` hops (kfree_skb), every 5th lost after hops - 3 (its latencies
    spread: a few us per hop, a tail)."""
    final = records.KIND_DELIVER
    if drops:
        lost = pid % 5 == 0
        final = 0 if lost else records.KINDS.index("drop")
        hops = hops - 3 if lost else hops + 1
    head = records.PATH.pack({"inner.family": 4, "inner.protocol": 17,
                              "inner.saddr": bytes([198, 51, 100, 1]) + bytes(12),
                              "inner.daddr": bytes([198, 51, 100, 2]) + bytes(12),
                              "inner.sport": 40000, "inner.dport": 5000},
                             first_ts=10 ** 12 + pid, id=pid, final_kind=final,
                             port=5000, nhops=hops, stack_id=-1, reason=3 if drops else 0,
                             location=0x9e if drops and final else 0)
    if not drops:
        return head + b"".join(records.HOP.pack(dt=i * 1000, hook=i % 3, kind=0,
                                                flags=records.F_HOP_SET, dev=b"eth0")
                               for i in range(hops))
    t, out = 0, []
    for i in range(hops):
        last = final and i == hops - 1
        out.append(records.HOP.pack(dt=t, hook=3 if last else i % 3, kind=final if last else 0,
                                    flags=records.F_HOP_SET, dev=b"" if last else b"eth0",
                                    netns=4026531840 + i // 3))
        t += 1000 + (pid * 7919 + i * 104729) % (3000 if pid % 100 else 90000)
    return head + b"".join(out)


def ring_file(path, n, size, drops=False):
    """A ring of `size` bytes holding records for IDs 1..n (as many as fit); returns count."""
    data, pos, count = bytearray(size), 0, 0
    for pid in range(1, n + 1):
        rec = record(pid, drops=drops)
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


def _rss_anon():
    """This process's anonymous resident memory (kB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--drops", action="store_true", help="a flood of drops (and losses)")
    ap.add_argument("--resident", action="store_true", help="print the peak RSS too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = 1 << 27
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ring")
        n = ring_file(path, args.records, size, args.drops)
        anon = _rss_anon()
        raw_paths = sample.RawPaths(records.PathDecoder(DROP_HOOKS, {3: "NO_SOCKET"})) \
            if args.drops else None
        st = stream_mod.PacketStream(lambda: {}, keep_delivered=10000, expand=lambda r: [],
                                     raw_paths=raw_paths)
        handle = pipeline.summary_handler(st)
        with open(path, "r+b") as fh:
            reader = ringbuf.RingReader(fh.fileno(), size, wait=False)
            t0, c0 = time.perf_counter(), time.process_time()
            done = 0
            while done < n:
                done += reader.consume(handle, limit=4096)   # as polls take them
                st.flush()
            st.flush(force=True)
            st.agg.fold()                   # (the stop's: see sample.Aggregate.close)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            reader.close()
    out = {"records": n, "us_per_record": elapsed / n * 1e6, "cpu_us_per_record": cpu / n * 1e6,
           "kept": st.kept_delivered + len(st.sampler), "counted": st.streamed + st.agg.packets}
    if args.resident:     # anonymous memory only: the ring file's pages are not the tracer's
        out["rss_anon_growth_mb"] = (_rss_anon() - anon) / 1024
    print(json.dumps(out) if args.json else
          "%d records: %.2f us per record (%d kept for the report, %d counted)%s"
          % (n, out["us_per_record"], out["kept"], out["counted"],
             ", anonymous RSS +%.1f MB" % out["rss_anon_growth_mb"] if args.resident else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
