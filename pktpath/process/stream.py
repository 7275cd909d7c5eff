"""Live events -> finished packets with bounded memory (pure Python).

A long trace cannot keep every event. Events are grouped by packet ID as they arrive; once an ID
has been quiet for `settle_ns`, its packet is finished. The first `keep_delivered` delivered
packets are kept for the report (timeline, verdict table); later delivered packets are written
to the JSON output at once and only counted. Packets not delivered go to a sample.Sampler: a
bounded, deterministic sample is kept for the report, the rest is counted exactly into
sample.Aggregate (summary counts, drop/lost tables, latencies, funnel) and written to the JSON
output as it finishes (at the stop: after the report, see settle/write_backlog).

Summary mode hands over raw per-packet records instead of events (`add_record`). When nothing
needs their events while tracing (`fast`: no recording or namespace filter), they stay raw: a
delivered packet past the quota is just counted (or, with a JSON stream, written straight from
its record by `json_line`); a plain record not delivered is counted from its bytes
(sample.RawPaths, a few us) and expanded only if it stays in the sample. Expanding costs ~60 us
per packet in Python: that is what lets a live trace keep up with a flood of drops and print
its report within a second of Ctrl-C.

The records held unfinished are bounded (`max_raw`, MAX_RAW): a flood faster than the tracer
finishes packets would otherwise pile them up (gigabytes in half a minute) and make the stop
finish them all. Past the bound, a record of an ID not held is read from the ring and not kept
(`shed`, counted): its packet is missing from the report like one whose events the kernel could
not write, and the report says so (every `lost` verdict becomes `incomplete`: pipeline.SHED_NOTE).
A record of an ID held is always kept (its packet's verdict is never a guess).

Events mode hands over one event per hook (`add`), ~9 per packet on the lab, ~850 bytes each as a
dict: the events held unfinished are bounded the same way (`max_events`, MAX_EVENTS), counted in
the same `shed` with the same note. Past the bound an event of an ID not held is not kept; the
pipeline checks that on the record's bytes (records.event_key, `sheds`) before decoding it, so a
flood's surplus costs little to read. An event of an ID held is always kept.
"""
import collections
import time

from pktpath.process import reconstruct, sample
from pktpath.process.idruns import IdRuns
from pktpath.events import schema


# records held unfinished at most (~850 bytes each with their entries: ~200 MB); at a flood's
# ~83k records/s the settle window alone holds ~100k
MAX_RAW = 250_000

# events (events mode) held unfinished at most: ~850 bytes each as dicts (~85 MB), and finishing
# one at the stop costs 3-4 us (0.3-0.4 s for the bound: the report is due within 1 s of the
# signal, and a flood's report takes ~0.3-0.45 s more; 150k measured 0.43-0.64 s to settle on the
# lab, 100k 0.64-0.84 s under load, the report 1.18/1.29 s after the signal: so 40k).
# A trace the tracer keeps up with holds ~1.25 s of events (the settle window and a flush
# period): the bound is reached past ~3.5k packets/s of 9 events (events mode costs ~55 us of
# Python per such packet: ~18k/s on a whole CPU, a few thousand under a flood).
MAX_EVENTS = 40_000


class PacketStream:
    def __init__(self, netns_names, json_out=None, keep_delivered=10000, settle_ns=1_000_000_000,
                 clock=time.monotonic_ns, expand=None, fast=True, idle=None, json_line=None,
                 raw_paths=None, sample_first=sample.FIRST, metrics=None, lone_packet=None,
                 first_copies=None, stopping=None, max_raw=None, max_events=None):
        self.netns_names = netns_names      # callable -> {inode: name}
        self.json_out = json_out
        self.keep_delivered = keep_delivered
        self.settle_ns = settle_ns
        self.clock = clock
        self.pending = {}                   # id -> [events]
        self.held = 0                       # events in `pending`
        self.max_events = MAX_EVENTS if max_events is None else max_events
        self.arrived = {}                   # id -> clock of the last event, oldest first
        # Raw records (add_record) come at tens of thousands per second, so they are kept
        # cheaply: id -> the record itself when it is the ID's only one and a delivery (the
        # common case), else [(record, delivered), ...]; arrivals are noted in buckets (the IDs
        # that arrived between two flushes) instead of with a clock reading each.
        self.raw = {}
        self.max_raw = MAX_RAW if max_raw is None else max_raw
        self.shed = 0                       # records (events) not kept past max_raw
        #                                     (max_events): see the module doc
        self._ids = []                      # IDs that arrived since the last flush (this
        #                                     list object is kept: record_adder binds it)
        self._unplain = []                  # of them, the lone records not delivered (_preread)
        self._buckets = collections.deque() # (clock when closed, number, [ids]), oldest first
        self._nbucket = 0                   # number of the bucket being filled
        self._again = {}                    # id -> bucket of its latest record, if several
        self.expand = expand                # record -> [events]
        self.fast = fast
        # reconstruct.FirstCopies: TCP header keys finished, to mark a late retransmission (the
        # caller then passes fast=False: every packet is built, in _finish_packets)
        self.first_copies = first_copies
        self.json_line = json_line          # (record, names) -> JSON line, or None: see flush
        # (record, int-keyed names) -> the packet of a lone plain delivery, or None (see
        # _build_deferred; records.DeliveredJSON.packet)
        self.lone_packet = lone_packet
        self.idle = idle                    # called between batches of a long flush
        # callable -> True once the report is due (session.Stop.stopping): a flush under way
        # then stops short and leaves the rest to the stop's own (settle), which it does not
        # delay: what it would have finished is finished there either way
        self.stopping = stopping
        self.deferred = []                  # kept delivered packets still raw: record or [records]
        # packets not delivered: a bounded sample kept (raw or built), the rest aggregated and
        # streamed (sample.py); raw_paths (sample.RawPaths) aggregates plain records unexpanded
        self.raw_paths = raw_paths
        # a lone record not delivered is read (raw_paths.shape_of) at the first flush after it
        # arrived, not when it is due, so that the stop has less to do: id -> its Shape (False:
        # not plain), found with the names `_names` (read again if the names change)
        self._plain = {}
        self._names = None
        self.agg = sample.Aggregate()
        self.sampler = sample.Sampler(self._spill, first=sample_first)
        self.backlog = None                 # a list: JSON of spilled packets written later
        self.packets = []                   # finished packets kept for the report
        self.kept_delivered = 0
        self.streamed = 0                   # delivered packets written out and dropped
        self.streamed_ids = IdRuns()        # their IDs (the count of IDs not unique needs them)
        self.events = 0
        # output/metrics.Metrics (--metrics): told of each packet as it is finished, or None
        self.metrics = metrics

    def add(self, ev):
        arrived, pid = self.arrived, ev["id"]
        mine = self.pending.get(pid)
        if mine is None:
            if self.held >= self.max_events:
                self.shed += 1              # past the bound, an ID not held: not kept
                return
            mine = self.pending[pid] = []
        mine.append(ev)
        self.held += 1
        if pid in arrived:
            del arrived[pid]                # keep `arrived` ordered by last arrival
        arrived[pid] = self.clock()
        self.events += 1

    def sheds(self, pid):
        """add's bound, checked before an event of `pid` is decoded: True (counted in `shed`)
        when it is not to be kept (the events held are at the bound and `pid` is not held)."""
        if self.held >= self.max_events and pid not in self.pending:
            self.shed += 1
            return True
        return False

    def add_record(self, pid, record, hops, delivered):
        """A raw per-packet record (summary mode) of packet `pid` with `hops` events, final
        verdict delivered or not; `expand(record)` gives its events when they are needed."""
        self.events += hops
        prev = self.raw.get(pid)
        if prev is None:
            if len(self.raw) >= self.max_raw:
                self.events -= hops
                self.shed += 1
                return
            if delivered:
                self.raw[pid] = record
            else:
                self.raw[pid] = [(record, False)]
                self._unplain.append(pid)
        else:
            if prev.__class__ is not list:
                prev = self.raw[pid] = [(prev, True)]
            prev.append((record, delivered))
            self._again[pid] = self._nbucket
            if self._plain:
                self._plain.pop(pid, None)  # no longer a lone record
        self._ids.append(pid)

    def record_adder(self, key, deliver, fields=None):
        """A handler for raw records that does add_record(pid, record, hops, final == deliver)
        with (pid, hops, final) = key(record), in one call: the live path of summary mode, run
        for every packet (bench/records.py). `fields` (records.PATH_KEY_FIELDS): key's work
        done inline, (unpack_from, offset, header size, hop size) with unpack_from(record,
        offset) = (pid, final, nhops), hops = min(nhops, (len(record) - header size) // hop
        size), which saves a call and a tuple per record."""
        raw = self.raw
        get = raw.get
        append, unplain = self._ids.append, self._unplain.append
        if fields is None:
            def unpack(record, _off):   # key's (pid, hops, final) in the order of `fields`
                pid, hops, final = key(record)
                return pid, final, hops
            fields = (unpack, 0, -(1 << 62), 1)     # (hops never capped)
        unpack, off, hdr, hop = fields
        cap = self.max_raw

        def add(record):
            pid, final, hops = unpack(record, off)
            carried = (len(record) - hdr) // hop
            if carried < hops:
                hops = carried              # another CPU claimed more hops since (path_key)
            if get(pid) is not None:        # a second record of the ID: the general path
                return self.add_record(pid, record, hops, final == deliver)
            if len(raw) >= cap:             # the bound on records held: not kept (shed)
                self.shed += 1
                return
            self.events += hops
            if final == deliver:
                raw[pid] = record
            else:
                raw[pid] = [(record, False)]
                unplain(pid)
            append(pid)
        return add

    def _due(self, force):
        """IDs quiet for settle_ns (all of them with `force`), oldest first."""
        now = self.clock()
        self._buckets.append((now, self._nbucket, self._ids[:]))
        self._nbucket += 1
        self._ids.clear()
        done, raw, again = [], self.raw, self._again
        limit = now - self.settle_ns
        while self._buckets and (force or self._buckets[0][0] <= limit):
            _, n, ids = self._buckets.popleft()
            done += [pid for pid in ids if pid in raw and again.get(pid, n) <= n]
        for pid, t in self.arrived.items():
            if not force and t >= limit:
                break                       # ordered by arrival: the rest are newer
            done.append(pid)
        return done

    def flush(self, force=False):
        """Finish the packets of IDs quiet for settle_ns (all of them with `force`)."""
        done = self._due(force)
        if not done and (force or not self.raw):
            self._unplain.clear()
            return
        names = self.netns_names()
        int_names = reconstruct.ns_names(names)
        if int_names == self._names:
            int_names = self._names         # the same object: RawPaths keeps its shapes
        else:
            self._plain.clear()             # read with other names: read again below
            self._names = int_names
        eager, read = self._plain, self.raw_paths.read if self.raw_paths is not None else None
        evs, batch, plain = [], 0, 0
        # the per-ID work of a busy live trace (summary mode: `pending` and `arrived` are empty,
        # `_again` nearly so): dictionaries looked up once, empty ones not touched
        raw_pop, pending, arrived, again = self.raw.pop, self.pending, self.arrived, self._again
        offer = self.sampler.offer
        metrics = self.metrics
        # a plain record the sample would not keep goes straight into the aggregates (what
        # offer -> _spill does) when nothing else wants it (no JSON to write)
        passes = self.sampler.passes if self.json_out is None else _never
        add_shape = self.agg.add_shape
        # a delivered flood's common case, first: a lone delivery past the quota, with nothing
        # to write (no --json, no metrics): only counted
        count_only = self.fast and self.json_out is None and metrics is None
        full = self.kept_delivered >= self.keep_delivered
        counted, count = 0, self.streamed_ids.buf.append
        rest = iter(done)                   # what is left of `done` if the flush stops short
        short = False
        for pid in rest:
            raw = raw_pop(pid, None)
            if full and count_only and raw.__class__ is not list and raw is not None and \
                    not pending:
                if arrived:
                    arrived.pop(pid, None)
                if again:
                    again.pop(pid, None)
                counted += 1
                count(pid)
                continue
            got = eager.pop(pid, None) if eager else None
            mine = pending.pop(pid, None) if pending else None
            if mine:
                self.held -= len(mine)
            if raw is None and mine is None:
                continue                    # listed twice (two records in one bucket)
            if arrived:
                arrived.pop(pid, None)
            if again:
                again.pop(pid, None)
            if raw is not None and mine is None and self.fast:
                # nothing needs its events now: keep the compact record (expanded at the end if
                # kept), or count it from its bytes
                lone = raw.__class__ is not list
                if not lone and len(raw) == 1 and not raw[0][1] and read is not None:
                    got = read(raw[0][0], int_names) if got is None else \
                        got and self.raw_paths.read_as(raw[0][0], got)
                    if got:                 # plain: sampled or aggregated from its bytes
                        if passes(got[0], got[2].group):
                            # past its group's sample (a flood's common case): counted
                            add_shape(got[2], got[0], got[1], got[3])
                        else:
                            offer(got[0], got[1], got[2].group, ("raw", raw[0][0]) + got)
                        if metrics is not None:
                            metrics.record(raw[0][0], got[2].verdict, int_names)
                        plain += 1
                        if plain & 4095 == 0 and self._pause(force):
                            short = True    # (~10 ms of work between two pauses)
                            break
                        continue
                elif lone or any(d for _r, d in raw):
                    if self.kept_delivered < self.keep_delivered:
                        self.kept_delivered += 1
                        full = self.kept_delivered >= self.keep_delivered
                        self.deferred.append(raw)
                        if metrics is not None:
                            self._meter_delivered(raw, lone, int_names, names)
                        continue
                    if self.json_out is None:
                        self.streamed += 1  # delivered, nothing else to say: count it
                        self.streamed_ids.buf.append(pid)
                        if metrics is not None:
                            self._meter_delivered(raw, lone, int_names, names)
                        continue
                    line = self.json_line(raw, int_names) if lone and self.json_line else None
                    if line is not None:
                        self.json_out.write(line)   # straight from the record
                        self.streamed += 1
                        self.streamed_ids.buf.append(pid)
                        if metrics is not None:
                            self._meter_delivered(raw, lone, int_names, names)
                        continue
            if raw is not None:
                for record in _records(raw):
                    evs.extend(self.expand(record))
            if mine:
                evs.extend(mine)
            batch += 1
            if batch == self.BATCH:
                self._finish_packets(evs, names)
                full = self.kept_delivered >= self.keep_delivered
                evs, batch = [], 0
                if self._pause(force):
                    short = True
                    break
        self.streamed += counted
        self._finish_packets(evs, names)
        if short:                           # the report is due: the rest at the stop's flush
            self._ids.extend(rest)
        elif not force:
            # in bulk, a little at a time: less at the stop
            for ids in (self.streamed_ids, self.agg.ids):
                if ids.due():
                    ids.compact()           # the IDs counted, folded into runs: bounded
            if self.agg.fold(self.idle, self.stopping) and read is not None and self.fast:
                self._preread(self._unplain, int_names)
        self._unplain.clear()

    def _pause(self, force):
        """Between batches of a long flush: idle() (e.g. drain the ring buffer: it keeps
        filling) while tracing; True when the flush should stop short (the report is due). The
        stop's own flush (`force`) neither reads more records nor stops."""
        if force:
            return False
        if self.idle is not None:
            self.idle()
        return self.stopping is not None and self.stopping()

    def _preread(self, ids, names):
        """Read the lone records not delivered of `ids` (those that arrived since the last
        flush: only these are listed, a delivered flood's IDs are not walked) ahead of time
        (see _plain): reading costs a few us per record, which a flood's last second would
        otherwise add to the stop. Not done as records arrive: the ring buffer must be emptied
        quickly."""
        raw, plain, read = self.raw, self._plain, self.raw_paths.shape_of
        n = 0
        for pid in ids:
            r = raw.get(pid)
            if r.__class__ is list and len(r) == 1 and pid not in plain:
                plain[pid] = read(r[0][0], names) or False
                n += 1
                if n & 4095 == 0 and self._pause(False):
                    return                  # (only read ahead: the stop reads the rest)

    def settle(self, defer_json=False):
        """Finish every packet now, expanding the kept records (call while `expand` still
        works, e.g. before the tracer that reads drop stacks is closed). With `defer_json`, the
        JSON of packets spilled now waits in `backlog` (write_backlog(), after the report)."""
        if defer_json and self.json_out is not None:
            self.backlog = []
        self.flush(force=True)
        names = self.netns_names()
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            self.packets.extend(self._build_deferred(deferred, names))
        kept, self.sampler = self.sampler.kept(), sample.Sampler(self._spill)
        evs = [ev for item in kept if item[0] == "raw" for ev in self.expand(item[1])]
        self.packets.extend(reconstruct.build_packets(evs, names))
        self.packets.extend(item[1] for item in kept if item[0] == "pkt")

    def _build_deferred(self, deferred, names):
        """The kept delivered packets (up to keep_delivered, still raw): a lone plain record
        straight to its packet (`lone_packet`, a third of the cost of its events: this is most
        of a delivered flood's stop), the others through the events; an ID with more than one
        entry goes through the events whole (build_packets decides what its records make)."""
        fast = self.lone_packet if self.fast else None
        built, rest = [], deferred
        if fast is not None:
            int_names, rest = reconstruct.ns_names(names), []
            for raw in deferred:
                p = fast(raw, int_names) if raw.__class__ is not list else None
                if p is None:
                    rest.append(raw)
                else:
                    built.append((p, raw))
        evs = [ev for raw in rest for record in _records(raw) for ev in self.expand(record)]
        if built:
            ids = collections.Counter(p["id"] for p, _raw in built)
            ids.update({ev["id"] for ev in evs})
            if len(ids) < len(built) + len({ev["id"] for ev in evs}):    # an ID twice
                again = [raw for p, raw in built if ids[p["id"]] > 1]
                built = [b for b in built if ids[b[0]["id"]] == 1]
                evs += [ev for raw in again for record in _records(raw)
                        for ev in self.expand(record)]
        return [p for p, _raw in built] + reconstruct.build_packets(evs, names)

    def _spill(self, item):
        """A packet not delivered that leaves the sample: into the aggregates, to the JSON."""
        if item[0] == "raw":
            self.agg.add_shape(item[4], item[2], item[3], item[5])
        else:
            self.agg.add_packet(item[1])
        if self.json_out is not None:
            if self.backlog is not None:
                self.backlog.append(item)
            else:
                self._write(item)

    def _write(self, item):
        if item[0] == "raw":
            names = self.netns_names()
            for pkt in reconstruct.build_packets(self.expand(item[1]), names):
                self.json_out.write(schema.packet_line(pkt))
        else:
            self.json_out.write(schema.packet_line(item[1]))

    def write_backlog(self):
        """Write the JSON of the packets spilled at the end (see settle)."""
        backlog, self.backlog = self.backlog or [], None
        for item in backlog:
            self._write(item)

    BATCH = 64

    def _finish_packets(self, evs, names):
        mark = self.first_copies.mark if self.first_copies is not None else None
        for pkt in reconstruct.build_packets(evs, names):
            if mark is not None:
                mark(pkt)
            if self.metrics is not None:
                self.metrics.packet(pkt)
            if pkt["verdict"] == "delivered":
                if self.kept_delivered >= self.keep_delivered:
                    if self.json_out is not None:
                        self.json_out.write(schema.packet_line(pkt))
                    self.streamed += 1
                    self.streamed_ids.buf.append(pkt["id"])
                    continue
                self.kept_delivered += 1
                self.packets.append(pkt)
            else:
                self.sampler.offer(pkt["id"], pkt["first_ns"], sample.group_of(pkt),
                                   ("pkt", pkt))

    def _meter_delivered(self, raw, lone, int_names, names):
        """A delivered packet still raw, to the metrics: a lone record from its bytes; several
        records (an ID reused) as the packets they make."""
        if lone:
            self.metrics.record(raw, "delivered", int_names)
            return
        evs = [ev for record in _records(raw) for ev in self.expand(record)]
        for pkt in reconstruct.build_packets(evs, names):
            self.metrics.packet(pkt)

    def finish(self):
        """All packets kept, sorted by ID and time (call after the last add)."""
        self.settle()
        self.packets.sort(key=lambda p: (p["id"], p["first_ns"] or 0))
        return self.packets


def _never(_pid, _group):
    return False


def _records(raw):
    """The records of a raw entry (see PacketStream.raw)."""
    return [raw] if raw.__class__ is not list else [r for r, _d in raw]
