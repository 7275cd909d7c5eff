"""One pipeline for a live trace and for `report`: the same packets and the same report both ways.

    live:      kernel records -> decode -> netns filter -> record -> PacketStream ---+
    recorded:  recording(s) -> (merge clocks) -> EventStore ------------------------+
                                                                                     v
               finish(packets, end): ONE finishing policy (settle_end + mark incomplete)
                                                                                     v
               output/sinks.py: emit() (--json lines, report builder, drop stacks)

The finishing policy needs the tracer's loss counters and its per-ID losses; a live trace writes
them to the recording's end line (`lost_ids` as {id: records lost}), so `report` on that
recording applies the same policy to the same facts. Older recordings list the IDs only: each
then counts for one lost record, the least it can have been (never blame the network for the
tracer's losses: a doubt makes a `lost` verdict `incomplete`).
"""
import sys

from pktpath.events import records
from pktpath.events.recording import NO_END, scan_recording
from pktpath.process import merge, reconstruct, sample
from pktpath.process.idruns import IdRuns
from pktpath.process.stream import PacketStream

# ---- the finishing policy (live and recorded) ----

FRAGS_NOTE = ("%d hook firings read the packet ID from page fragments (payload not in the "
              "linear skb data)")
IP6_EXT_NOTE = ("%d hook firings saw an IPv6 packet whose extension header chain is longer than "
                "the tracer walks (or runs past the header bytes it reads): not followed")
GENEVE_OPTS_NOTE = ("%d hook firings saw a Geneve packet whose options run past the header "
                    "bytes the tracer reads: its inner packet was not parsed")
BLIND_NOTE = ("no delivery hook was attached (%d hooks): a packet not seen dropped may have "
              "been delivered, so no packet is reported `lost` (those are `incomplete`)")
UNTIED_NOTE = ("%d lost records could not be tied to a packet ID: packets may be missing from "
               "this report, and every `lost` verdict is reported as `incomplete`")
UNMEASURED_NOTE = ("latencies: %d packets finished at the stop (a flood's last second) are "
                   "counted but not in the latency table (sorting them would have delayed "
                   "the report)")
UNCHECKED_NOTE = ("%d lost packets past the bound on the IDs a live trace keeps (sample.LOST_IDS) "
                  "could not be checked against the IDs the tracer lost events of: reported "
                  "`incomplete` (`report` of the recording checks each)")
UNREAD_NOTE = ("%d records were still waiting in the ring buffer when the report was due and "
               "were not read: packets may be missing from this report, and every `lost` "
               "verdict is reported as `incomplete`")
SHED_NOTE = ("%d records were read past the bound on packets held unfinished (a flood faster "
             "than the tracer finishes them) and not kept: packets may be missing from this "
             "report, and every `lost` verdict is reported as `incomplete`")

RECURSION_NOTE = ("the kernel skipped %d runs of pktpath's programs (the same program already "
                  "running on that CPU): hops or packets may be missing from this report, and "
                  "every `lost` verdict is reported as `incomplete`")


def lost_counts(lost_ids):
    """{id (int): records lost} from an end record's `lost_ids`: a mapping (JSON keys are
    strings), or a list of IDs (older recordings: `true` each, counted as 1, the least it
    can be)."""
    if isinstance(lost_ids, dict):
        return {int(k): v for k, v in lost_ids.items()}
    return dict.fromkeys((int(k) for k in lost_ids or ()), True)


def untied(end):
    """How many records the tracer lost without knowing their packet ID (0 or more), those left
    unread at the stop (`unread`, see session.drain) and those read but not kept (`shed`, see
    stream.MAX_RAW) included."""
    return max(0, (end.get("lost") or 0) - sum(lost_counts(end.get("lost_ids")).values())) + \
        (end.get("unread") or 0) + (end.get("shed") or 0)


def _note(end, template, n):
    """Add the warning template % n to end["warnings"] unless one like it is there (a
    recording's end line carries the notes of the live run that wrote it)."""
    warnings = end.setdefault("warnings", [])
    tail = template.split("%d", 1)[1]
    if not any(w.endswith(tail) for w in warnings):
        warnings.append(template % n)


def delivery_blind(coverage):
    """True when the trace could not see deliveries: hooks are known by kind (recordings from
    before kinds were kept are not judged) and none of the delivery hooks was attached."""
    rows = [c for c in coverage or () if "kind" in c]
    return bool(rows) and not any(c["kind"] == "deliver" and c["status"] == "attached"
                                  for c in rows)


def settle_end(end):
    """The finishing policy's notes on one trace's end record (in place; applying it twice
    changes nothing): IDs read from page fragments, losses not tied to an ID."""
    if end.get("from_frags"):
        _note(end, FRAGS_NOTE, end["from_frags"])
    if end.get("ip6_ext_unwalked"):
        _note(end, IP6_EXT_NOTE, end["ip6_ext_unwalked"])
    if end.get("geneve_opts_unread"):
        _note(end, GENEVE_OPTS_NOTE, end["geneve_opts_unread"])
    if end.get("unread"):
        _note(end, UNREAD_NOTE, end["unread"])
    if end.get("shed"):
        _note(end, SHED_NOTE, end["shed"])
    own = (end.get("unread") or 0) + (end.get("shed") or 0)
    if untied(end) - own:
        _note(end, UNTIED_NOTE, untied(end) - own)
    if end.get("no_delivery_hook"):
        _note(end, BLIND_NOTE, end["no_delivery_hook"])
    if end.get("recursion_misses"):
        _note(end, RECURSION_NOTE, end["recursion_misses"])
    return end


def finish(packets, end, aggregate=None, streamed_ids=(), by=None):
    """Packets (sorted by ID, then first_ns) after the policy: IDs the tracer lost events of are
    `incomplete` where they would be `lost` (and get a record when it lost them all); when it
    lost records it could not tie to an ID, or the kernel skipped runs of its programs
    (`recursion_misses`), every `lost` verdict is `incomplete`. A live
    trace's `aggregate` (sample.Aggregate: packets counted, not held) gets the same policy
    (`by`: its deadline for latencies, see Aggregate.close).
    end["duplicate_ids"] counts the packets whose ID an earlier packet had (see
    count_duplicates; `streamed_ids`: the IDs of a live trace's delivered packets not held)."""
    lost = lost_counts(end.get("lost_ids"))
    suspect = untied(end) > 0 or bool(end.get("no_delivery_hook")) or \
        bool(end.get("recursion_misses"))   # a skipped run at a delivery hook: "lost" unsure
    seen = aggregate.close(lost, suspect, by) if aggregate is not None else ()
    if aggregate is not None and aggregate.unmeasured:
        _note(end, UNMEASURED_NOTE, aggregate.unmeasured)
    if aggregate is not None and aggregate.unchecked:
        _note(end, UNCHECKED_NOTE, aggregate.unchecked)
    others = IdRuns.union(aggregate.ids if aggregate is not None else (), streamed_ids)
    return count_duplicates(
        reconstruct.mark_incomplete_sorted(packets, lost, all_lost_suspect=suspect,
                                           also_seen=seen), end, others)


def count_duplicates(packets, end, other_ids=()):
    """`packets` (sorted by ID) passed through, while end["duplicate_ids"] counts the packets
    that share their ID with another packet (packets - distinct IDs), over them and the IDs
    `other_ids` of packets not given (a live trace's aggregated and streamed ones). Packet IDs
    are not unique (identical payloads, restarted or concurrent senders): each such packet is
    followed on its own, and the report says how many there were. `other_ids`: an
    idruns.IdRuns (or IDs): past its bound the count is a lower bound (end["duplicate_ids_at_least"])."""
    others = other_ids if isinstance(other_ids, IdRuns) else IdRuns.union(other_ids)
    dup = others.dups
    end["duplicate_ids"] = dup
    if others.capped:
        end["duplicate_ids_at_least"] = True
    prev = None
    for p in packets:
        pid = p["id"]
        if pid == prev or (others.count and pid in others):
            dup += 1
            end["duplicate_ids"] = dup
        prev = pid
        yield p


def live_end(counters, lost_ids, netns_names, events, streamed, coverage=()):
    """The end record of a live trace (the recording's end line, the report's notes)."""
    end = dict(counters, netns_names=netns_names, events=events,
               lost_ids={str(k): v for k, v in sorted(lost_ids.items())})
    if delivery_blind(coverage):
        end["no_delivery_hook"] = sum(c["status"] == "attached" for c in coverage)
    settle_end(end)
    if streamed:
        end["streamed_delivered"] = streamed
    return end


# ---- live: kernel records in ----

def summary_handler(stream):
    """The live handler of summary records: each goes to `stream` raw (bench/records.py
    measures what it costs per record)."""
    return stream.record_adder(records.path_key, records.KIND_DELIVER, records.PATH_KEY_FIELDS)


class LivePipeline:
    """decode -> netns filter -> record -> PacketStream, fed by the tracer's callbacks.

    `decoder`: records.PathDecoder; `netns_names`: callable -> {inode: name}; `rec`: a
    recording.RecordingWriter or None; `only_netns`: set of inodes (empty: all); `stack`:
    stack_id -> [frames] (None: no stacks); `idle`: called between batches of a long flush;
    `metrics`: output/metrics.Metrics (--metrics) told of each packet finished, or None;
    `tcp_keys`: TCP traced with header keys: every packet is built as it finishes, so that a
    retransmission finished after its first copy's flush is still marked (FirstCopies).
    `stopping`: callable, true once the report is due (session.Stop.stopping).
    """

    def __init__(self, decoder, netns_names, summary=True, json_out=None, rec=None,
                 only_netns=(), keep_delivered=10000, stack=None, idle=None, metrics=None,
                 tcp_keys=False, stopping=None):
        self.decoder, self.netns_names = decoder, netns_names
        self.json_out, self.rec = json_out, rec
        self.only_netns, self.stack = only_netns, stack
        delivered = records.DeliveredJSON(decoder)
        self.stream = PacketStream(netns_names, json_out, keep_delivered=keep_delivered,
                                   expand=self._expand,
                                   fast=not (rec or only_netns or tcp_keys), idle=idle,
                                   json_line=delivered, lone_packet=delivered.packet,
                                   raw_paths=sample.RawPaths(decoder) if summary else None,
                                   metrics=metrics, stopping=stopping,
                                   first_copies=reconstruct.FirstCopies() if tcp_keys else None)
        self.summary = summary
        self.on_record = summary_handler(self.stream) if summary else self._on_event

    def _keep(self, ev):
        if self.only_netns and ev["netns"] not in self.only_netns:
            return False
        if "stack_id" in ev and self.stack is not None:
            ev["stack"] = self.stack(ev["stack_id"])
        if self.rec:
            self.rec.event(ev)
        return True

    def _expand(self, data):
        """A summary record's events (decoded only when needed, see stream.py)."""
        return [ev for ev in self.decoder.decode_path(data) if self._keep(ev)]

    def _on_event(self, data):
        stream = self.stream
        if stream.held >= stream.max_events:    # past the bound: shed undecoded (stream.py)
            pid, netns = records.event_key(data)
            if self.only_netns and netns not in self.only_netns:
                return                      # filtered out (_keep), not shed
            if stream.sheds(pid):
                return
        ev = self.decoder.decode(data)
        if self._keep(ev):
            self.stream.add(ev)

    @property
    def events(self):
        return self.stream.events

    def flush(self):
        """Finish the packets quiet for a while (called once a second)."""
        self.stream.flush()

    def settle(self):
        """Finish every packet (while drop stacks can still be read). The JSON of packets
        finished only now and not kept for the report is written after it (write_backlog),
        unless it needs drop stacks."""
        self.stream.settle(defer_json=self.stack is None and self.json_out is not sys.stdout)

    def write_backlog(self):
        """The --json lines settle() left for after the report."""
        self.stream.write_backlog()

    def end(self, counters, lost_ids, coverage=(), by=None):
        """(packets, end record) once the last record is in: the policy applied, the recording
        (if any) ended and closed. `by` (time.monotonic()): when the report is due (the
        latencies of packets not folded by then are left out, see Aggregate.close)."""
        if self.stream.shed:
            counters = dict(counters, shed=self.stream.shed)
        end = live_end(counters, lost_ids, self.netns_names(), self.stream.events,
                       self.stream.streamed, coverage)
        packets = list(finish(self.stream.finish(), end, self.stream.agg,
                              self.stream.streamed_ids, by))
        if self.rec:
            self.rec.end(end)
            self.rec.close()
        return packets, end


# ---- recorded: recordings in ----

def load(paths):
    """(events, meta, end) merged over the recordings `paths`, each end settled."""
    events = []
    meta, end = _load(paths, events.append)
    if len(paths) > 1:
        end["warnings"] += merge.correct_clocks(events)
    return events, meta, end


def load_store(paths):
    """(store, meta, end): load() with the events in a reconstruct.EventStore, which holds a
    million events in a few hundred MB where their dicts would take gigabytes."""
    store = reconstruct.EventStore()
    if len(paths) > 1:  # merging shifts times by causality, on dicts: small two-host recordings
        events, meta, end = load(paths)
        for ev in events:
            store.add(ev)
        return store, meta, end
    meta, end = _load(paths, store.add)
    return store, meta, end


def _load(paths, on_event):
    """(meta, end) merged over the recordings `paths`; `on_event` gets every event (placed on
    its host's wall clock when there are several recordings)."""
    names, coverage, lost = {}, [], {}
    end = {"lost": 0, "unreachable": 0, "warnings": []}
    for path in paths:
        if len(paths) > 1:
            evs = []
            m, e = scan_recording(path, evs.append)
            for ev in merge.to_wall(m, evs):
                on_event(ev)
        else:
            m, e = scan_recording(path, on_event)
        names.update(m.get("netns_names") or {})
        if e is None:
            e = {"warnings": [NO_END % path]}
        settle_end(e)
        names.update(e.get("netns_names") or {})
        for key in ("lost", "unreachable"):
            end[key] += e.get(key) or 0
        for key in ("unread", "shed"):  # left in the ring at the stop, or read and not
            if e.get(key):              # kept: like records lost untied
                end[key] = end.get(key, 0) + e[key]
        if e.get("recursion_misses"):   # runs the kernel skipped, on any host: like untied
            end["recursion_misses"] = end.get("recursion_misses", 0) + e["recursion_misses"]
        if e.get("no_delivery_hook"):   # one blind host: no `lost` in the merged report
            end["no_delivery_hook"] = end.get("no_delivery_hook", 0) + e["no_delivery_hook"]
        end["warnings"] += e.get("warnings", [])
        for pid, n in lost_counts(e.get("lost_ids")).items():
            lost[pid] = n if pid not in lost else lost[pid] + n
        host = m.get("host") if len(paths) > 1 else None
        coverage += [dict(c, host=host) if host else c for c in m.get("coverage") or ()]
    end.update(netns_names=names, lost_ids=dict(sorted(lost.items())))
    return {"coverage": coverage, "netns_names": names}, end


def recorded(paths):
    """(packets, meta, end) of recordings: packets one at a time, in ID order, finished by the
    policy (never all held at once)."""
    store, meta, end = load_store(paths)
    return finish(store.packets(meta["netns_names"]), end), meta, end
