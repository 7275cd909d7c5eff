"""Live events -> finished packets with bounded memory (pure Python).

A long trace cannot keep every event. Events are grouped by packet ID as they arrive; once an ID
has been quiet for `settle_ns`, its packet is finished. The first `keep_delivered` delivered
packets are kept for the report (timeline, verdict table); later delivered packets are written
to the JSON output at once and only counted. Dropped, lost and incomplete packets are always
kept: they are what the report is for.
"""
import time

from pktpath import reconstruct, report


class PacketStream:
    def __init__(self, netns_names, json_out=None, keep_delivered=10000, settle_ns=1_000_000_000,
                 clock=time.monotonic_ns):
        self.netns_names = netns_names      # callable -> {inode: name}
        self.json_out = json_out
        self.keep_delivered = keep_delivered
        self.settle_ns = settle_ns
        self.clock = clock
        self.pending = {}                   # id -> [events]
        self.arrived = {}                   # id -> clock of the last event's arrival
        self.packets = []                   # finished packets kept for the report
        self.kept_delivered = 0
        self.streamed = 0                   # delivered packets written out and dropped
        self.events = 0

    def add(self, ev):
        self.pending.setdefault(ev["id"], []).append(ev)
        self.arrived[ev["id"]] = self.clock()
        self.events += 1

    def flush(self, force=False):
        """Finish the packets of IDs quiet for settle_ns (all of them with `force`)."""
        limit = self.clock() - self.settle_ns
        done = [pid for pid, t in self.arrived.items() if force or t < limit]
        if not done:
            return
        evs = []
        for pid in done:
            evs.extend(self.pending.pop(pid))
            del self.arrived[pid]
        for pkt in reconstruct.build_packets(evs, self.netns_names()):
            if pkt["verdict"] == "delivered":
                if self.kept_delivered >= self.keep_delivered:
                    if self.json_out is not None:
                        report.write_json([pkt], self.json_out)
                    self.streamed += 1
                    continue
                self.kept_delivered += 1
            self.packets.append(pkt)

    def finish(self):
        """All packets kept, sorted by ID and time (call after the last add)."""
        self.flush(force=True)
        self.packets.sort(key=lambda p: (p["id"], p["first_ns"] or 0))
        return self.packets
