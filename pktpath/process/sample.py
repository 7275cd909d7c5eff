"""Bounded memory whatever the verdicts: exact aggregates of every packet, a deterministic sample
of whole packets (pure Python).

A flood of dropped packets used to be kept whole until the end of the trace (~60 us each to
expand, gigabytes of dicts). Now every finished packet that is not delivered is offered to a
`Sampler`, which keeps only

  - the `first` lowest (ID, first_ns) packets not delivered (the verdict table's first rows and
    the timeline), and
  - the `per_group` lowest ones of each group: a drop point (reason, location, netns) or the
    last sighting of a lost packet (hook, device, netns);

the same rule output/report.ReportBuilder applies to a recording's packets in ID order, so that
a live report and the report of its recording agree whatever the arrival order. A packet that
leaves the sample (or never enters it) is `spilled`: counted into the exact aggregates the report
prints (verdict counts, drop and lost tables, per-hop latencies, stage funnel) and written to the
--json output, then forgotten.

A summary-mode record is aggregated straight from its bytes when it is plain (`RawPaths`: every
hop slot set, hops in time order, the only drop the last hop): a few microseconds instead of
the ~60 us of building its event and packet dicts.
"""
import bisect
import heapq
import itertools
import operator
import struct
import time
from array import array

from pktpath.events import records
from pktpath.process import analysis
from pktpath.process import reconstruct
from pktpath.process.idruns import IdRuns
from pktpath.process.reconstruct import Summary

PER_GROUP = 20          # packets kept per drop point / lost place
FIRST = 1000            # the first packets not delivered kept (output/report.MAX_VERDICT_ROWS)


def group_of(p):
    """The sample group of a packet record that is not delivered: invariant under the
    finishing policy (which only turns `lost` into `incomplete`)."""
    if p["verdict"] == "dropped":
        d = p["drop"]
        return ("dropped", d["reason"], d["location"], d["netns"])
    last = p["last"]
    return ("other", last["hook"], last["dev"], last["netns"])


class Aggregate:
    """The exact parts of a report over packets not held: summary counts and groups
    (reconstruct.Summary), latencies and stages (analysis.PathStats), the first sighting.
    Lost packets are counted only at the end (`close`): the finishing policy may make them
    `incomplete`. Plain records come by `Shape` (add_shape): their latencies are kept as hop
    times per shape and folded into PathStats in bulk (`fold`)."""

    def __init__(self):
        self.summary = Summary()
        self.paths = analysis.PathStats()
        self.t0 = None
        self.lost = {}          # group key -> LostGroup: the spilled `lost` packets
        self.ids = IdRuns()     # IDs (64-bit keys) of the spilled packets (the policy's `seen`)
        self.packets = 0
        self._shapes = set()    # shapes with packets not folded yet
        self.unmeasured = 0     # packets counted without their latencies (close's `by`)
        self.lost_held = 0      # IDs the LostGroups keep (LOST_IDS at most)
        self.unchecked = 0      # `lost` packets made `incomplete` at close for want of their ID

    def _keep_lost(self):
        """True while the spilled `lost` packets' IDs are within LOST_IDS."""
        if self.lost_held < LOST_IDS:
            self.lost_held += 1
            return True
        return False

    def add_packet(self, p):
        """A packet record (reconstruct) not delivered."""
        self.packets += 1
        self.ids.buf.append(p["id"] & 0xffffffffffffffff)
        if p["first_ns"] is not None and (self.t0 is None or p["first_ns"] < self.t0):
            self.t0 = p["first_ns"]
        self.paths.add(p)
        if p["verdict"] == "lost":
            last = p["last"]
            key = (last["hook"], last["dev"], last["netns"])
            group = self.lost.get(key)
            if group is None:
                group = self.lost[key] = LostGroup(
                    {"hook": last["hook"], "dev": last["dev"], "netns": last["netns"],
                     "netns_name": last["netns_name"]})
            group.add(p["id"], self._keep_lost())
        else:
            self.summary.add(p)

    def add_shape(self, shape, pid, first, dts):
        """A plain record of `shape` (RawPaths.read): counted by shape, folded later."""
        self.ids.buf.append(pid)
        if shape.count == 0:
            self._shapes.add(shape)
            shape.rank, shape.t0, shape.ids = (pid, first), first, [pid]
        else:
            if first < shape.t0:
                shape.t0 = first
            ids = shape.ids
            if pid < ids[-1] or len(ids) < 5:
                if pid < ids[0]:
                    shape.rank = (pid, first)
                elif pid == ids[0] and first < shape.rank[1]:
                    shape.rank = (pid, first)
                bisect.insort(ids, pid)
                if len(ids) > 5:
                    ids.pop()
        shape.count += 1
        shape.dts.extend(dts)
        if shape.verdict == "lost":
            group = self.lost.get(shape.key)
            if group is None:
                group = self.lost[shape.key] = LostGroup(shape.fields)
            group.add(pid, self._keep_lost())

    def fold(self, idle=None, stopping=None, by=None):
        """Move the shapes' packets into PathStats, Summary (and t0); `idle`: see
        PathStats.add_bulk. With `stopping` (a callable), stops short between two shapes once
        it is true (the rest is folded by the next fold); returns True when all are folded.
        `by` (time.monotonic()): from then on, packets are folded without their latencies
        (sorting them is most of a fold: see close)."""
        shapes = self._shapes
        while shapes:
            shape = shapes.pop()
            self.packets += shape.count
            if self.t0 is None or shape.t0 < self.t0:
                self.t0 = shape.t0
            if by is None:
                self.paths.add_bulk(shape.rank, shape.stages, shape.counted, shape.dts,
                                    shape.count, idle, shape.verdict)
            else:
                self._fold_by(shape, by)
            if shape.verdict != "lost":
                self.summary.add_groups(shape.ids, shape.count, shape.verdict, shape.key,
                                        shape.fields)
            shape.count, shape.dts, shape.t0, shape.ids = 0, array("q"), None, None
            if stopping is not None and shapes and stopping():
                return False
        return True

    FOLD_CHUNK = 8192   # packets of one shape folded between two looks at the clock (`by`)

    def _fold_by(self, shape, by):
        """fold() of one shape, a chunk of packets at a time while time.monotonic() < `by`;
        the packets left then go in without their latencies (`unmeasured`)."""
        n, step, done, dts = shape.n, self.FOLD_CHUNK, 0, shape.dts
        while done < shape.count and (n < 2 or time.monotonic() < by):
            k = min(step, shape.count - done)
            self.paths.add_bulk(shape.rank, shape.stages, shape.counted,
                                dts[done * n:(done + k) * n], k, None, shape.verdict)
            done += k
        if done < shape.count:
            self.unmeasured += shape.count - done
            self.paths.add_bulk(shape.rank, shape.stages, shape.counted, None,
                                shape.count - done, None, shape.verdict)

    def close(self, lost_ids, suspect, by=None):
        """fold(), and count the spilled `lost` packets after the policy: `incomplete` when
        their ID is in `lost_ids` or every lost verdict is `suspect`. Returns the IDs of
        `lost_ids` spilled (seen: the policy must not invent a record for them). `by`: a live
        trace's deadline for the latencies (fold): the packets finished at the stop of a flood
        are counted whole (verdicts, groups, funnel), but past `by` their hop latencies are
        left out (`unmeasured`, which the report says) so that the report comes in time."""
        self.fold(by=by)
        s = self.summary
        for key, group in self.lost.items():
            lost, low, incomplete = (0, (), group.count) if suspect else group.split(lost_ids)
            if incomplete:
                s.add_count("incomplete", incomplete)
                if lost_ids and group.unchecked and not suspect:
                    self.unchecked += group.unchecked
            if lost:
                s.add_groups(low, lost, "lost", key, group.fields)
        self.lost = {}
        if not lost_ids or not self.ids:
            return set()
        return {pid for pid in lost_ids if pid in self.ids}


class LostGroup:
    """The spilled `lost` packets of one group (last sighting), for the finishing policy at the
    stop (Aggregate.close: those whose ID is in `lost_ids` become `incomplete`): the count and
    the 5 lowest IDs exact, the IDs themselves (8 bytes each) while the aggregate's budget
    (LOST_IDS) lasts; past it a packet is only counted (`unchecked`): at the stop it is `lost`
    when the tracer lost no event of a known ID, else `incomplete` (the policy's doubt)."""

    __slots__ = ("fields", "count", "ids", "low", "unchecked")

    def __init__(self, fields):
        self.fields = fields        # the group's fields (reconstruct.Summary.add_group)
        self.count = 0              # packets (exact)
        self.ids = array("Q")       # their IDs, while the budget lasts
        self.low = []               # the 5 lowest IDs (with repeats), sorted
        self.unchecked = 0          # packets whose ID was not kept (past the budget)

    def add(self, pid, keep):
        self.count += 1
        low = self.low
        if len(low) < 5:
            bisect.insort(low, pid)
        elif pid < low[-1]:
            bisect.insort(low, pid)
            low.pop()
        if keep:
            self.ids.append(pid)
        else:
            self.unchecked += 1

    def split(self, lost_ids):
        """(packets `lost`, their 5 lowest IDs, packets `incomplete`) under the policy."""
        if not lost_ids:
            return self.count, self.low, 0
        hits = sum(map(lost_ids.__contains__, self.ids))
        low = heapq.nsmallest(5, itertools.filterfalse(lost_ids.__contains__, self.ids))
        return len(self.ids) - hits, low, hits + self.unchecked


LOST_IDS = 1 << 20      # IDs of spilled `lost` packets an Aggregate keeps (8 MB), then counts


class Sampler:
    """Keeps the sample (see the module's doc) of packets offered; `spill(item)` gets every
    packet that is not (or no longer) in it. Items are opaque (a raw record or a packet)."""

    def __init__(self, spill, first=FIRST, per_group=PER_GROUP):
        self.spill = spill
        self.first, self.per_group = first, per_group
        self._first = []        # max-heap by (id, first_ns): [(-id, -first, seq, entry)]
        self._groups = {}       # group -> max-heap as above
        self._seq = 0
        self.offered = 0
        self.dropped = 0        # offered with a drop group (the live status line counts them)

    def offer(self, pid, first_ns, group, item):
        self.offered += 1
        if group[0] == "dropped":
            self.dropped += 1
        top, heap = self._first, self._groups.get(group)
        if top and heap and len(top) == self.first and len(heap) == self.per_group and \
                -pid < top[0][0] and -pid < heap[0][0]:
            self.spill(item)        # a higher ID than all kept: the common case of a flood
            return
        self._seq += 1
        entry = [0, item]
        neg = (-pid, -(first_ns or 0), -self._seq, entry)
        self._push(self._first, self.first, neg)
        heap = self._groups.get(group)
        if heap is None:
            heap = self._groups[group] = []
        self._push(heap, self.per_group, neg)
        if entry[0] == 0:
            self.spill(item)

    def passes(self, pid, group):
        """offer()'s common case of a flood, for a caller that then does what `spill` would:
        True (the packet counted as offered) when a packet of ID `pid` in `group` would not
        enter the sample (a higher ID than every packet kept, its group's and the first ones
        full); False: offer() it."""
        top, heap = self._first, self._groups.get(group)
        if top and heap and len(top) == self.first and len(heap) == self.per_group and \
                -pid < top[0][0] and -pid < heap[0][0]:
            self.offered += 1
            if group[0] == "dropped":
                self.dropped += 1
            return True
        return False

    def _push(self, heap, size, neg):
        if len(heap) < size:
            heapq.heappush(heap, neg)
            neg[3][0] += 1
        elif size and neg[:3] > heap[0][:3]:
            out = heapq.heapreplace(heap, neg)
            neg[3][0] += 1
            out[3][0] -= 1
            if out[3][0] == 0:
                self.spill(out[3][1])

    def kept(self):
        """The items in the sample (each once), lowest (id, first_ns) first."""
        seen, out = set(), []
        for heap in [self._first] + list(self._groups.values()):
            for neg in heap:
                if id(neg[3]) not in seen:
                    seen.add(id(neg[3]))
                    out.append(neg)
        out.sort(reverse=True)
        return [neg[3][1] for neg in out]

    def __len__(self):
        return len(self.kept())


# ---- plain summary-mode records aggregated from their bytes ----

class Shape:
    """What plain records alike share: the same hops (hook, device, netns, kind) and the same
    end (drop reason and location, or last sighting)."""
    __slots__ = ("verdict", "group", "key", "fields", "stages", "counted", "n", "count",
                 "dts", "rank", "t0", "ids")

    def __init__(self, verdict, group, fields, stages, counted):
        self.verdict, self.group, self.fields = verdict, group, fields
        self.key = group[1:]            # reconstruct.Summary's group key
        self.stages, self.counted, self.n = stages, counted, len(stages)
        self.count, self.dts, self.rank, self.t0, self.ids = 0, array("q"), None, None, None


def _hop_format():
    """struct format of one pp_hop (its layout derived from bpf/pktpath.h, no byte order mark)
    and the index in its unpacked tuple of each field."""
    return records.HOP.fmt.format.lstrip("<"), {n: i for i, n in enumerate(records.HOP.names)}


_HDR = ("first_ts", "location", "id", "reason", "final_kind", "nhops")


class RawPaths:
    """`read(record, names)` of a plain pp_path record that is not a delivery: (id, first_ns,
    Shape, hop times), exactly what the record's packet would give (analysis.stage,
    reconstruct.Summary), or None when the record needs the general path (a hop slot lost to a
    race, hops out of time order, a drop before the last hop, truncated hops)."""

    def __init__(self, decoder):
        self.d = decoder
        self._hdr, order = _fmt(records.PATH, _HDR)
        self._hdr_get = operator.itemgetter(*[order.index(n) for n in _HDR])
        fmt, idx = _hop_format()
        self._hop_fmt, self._k = fmt, len(idx)
        self._at = [idx[n] for n in ("dt", "hook", "kind", "flags", "netns", "dev")]
        self._structs = {}      # hops -> struct of that many hops
        self._hops_off = records.PATH_HDR
        self._hop_size = records.HOP_SIZE
        self._drop = records.KINDS.index("drop")
        self._shapes = {}       # static fields (shape_of's key) -> Shape (None: not plain)
        self._keys = {}         # hops -> struct of the static fields (_key_struct)
        self._names = None
        self._first_id, order = _fmt(records.PATH, ("first_ts", "id"))
        assert order == ["first_ts", "id"]
        dt = dict((n, (off, size)) for n, off, size, _c in records.HOP.fields)["dt"]
        assert dt[1] == 4
        self._dt_at = (dt[0], self._hop_size - dt[0] - 4)   # bytes before / after a hop's dt
        self._dts = {}          # hops -> struct of their dt fields only

    def read(self, data, names):
        shape = self.shape_of(data, names)
        return self.read_as(data, shape) if shape is not None else None

    def shape_of(self, data, names):
        """The Shape of `data`'s static fields (the header's final kind, reason, location and
        hop count, each hop's hook, kind, flags, netns and device), None when they make it
        not plain; read_as() then checks the hops' order. One unpack of those fields only and a
        dictionary lookup (a flood's records share a few shapes): the shape is worked out
        (_static) once per distinct key."""
        if data.__class__ is not bytes:
            return None
        n = (len(data) - self._hops_off) // self._hop_size
        if n <= 0 or n > records.MAX_HOPS:
            return None
        if names is not self._names:
            self._shapes.clear()
            self._names = names
        ks = self._keys.get(n)
        if ks is None:
            ks = self._keys[n] = self._key_struct(n)
        key = ks.unpack_from(data)
        shape = self._shapes.get(key, False)
        if shape is False:
            if len(self._shapes) > 65536:
                self._shapes.clear()
            shape = self._shapes[key] = self._static(data, names)
        return shape

    def _key_struct(self, n):
        """A struct of the static fields shape_of() keys on, for a record of `n` hops."""
        at = {name: (off, size, code) for name, off, size, code in records.PATH.fields}
        fields = [at[name] for name in ("location", "reason", "final_kind", "nhops")]
        hop = {name: (off, size, code) for name, off, size, code in records.HOP.fields}
        for j in range(n):
            base = self._hops_off + j * self._hop_size
            fields += [(base + hop[name][0],) + hop[name][1:]
                       for name in ("hook", "kind", "flags", "netns", "dev")]
        fmt, pos = "<", 0
        for off, size, code in sorted(fields):
            fmt += ("%dx" % (off - pos) if off > pos else "") + code
            pos = off + size
        return struct.Struct(fmt)

    def _static(self, data, names):
        """The Shape of a record's static fields (see shape_of), worked out from its hops."""
        try:
            h = self._hdr.unpack_from(data)
        except struct.error:
            return None
        _first_ts, location, _pid, reason, final_kind, nhops = self._hdr_get(h)
        n = (len(data) - self._hops_off) // self._hop_size
        if nhops != n or n == 0 or n > records.MAX_HOPS:
            return None
        hops = self._structs.get(n)
        if hops is None:
            hops = self._structs[n] = struct.Struct("<" + self._hop_fmt * n)
        flat = hops.unpack_from(data, self._hops_off)
        k, (_idt, ihook, ikind, iflags, inetns, idev) = self._k, self._at
        return self._shape((final_kind, reason, location, flat[ihook::k], flat[ikind::k],
                            flat[iflags::k], flat[inetns::k], flat[idev::k]), names)

    def read_as(self, data, shape):
        """read() of a record whose Shape shape_of() found (with the same names): only the
        ID and times are unpacked; None when its hops are not in time order."""
        first_ts, pid = self._first_id.unpack_from(data)
        dts = self._dts.get(shape.n)
        if dts is None:
            dts = self._dts[shape.n] = struct.Struct(
                "<" + ("%dxI%dx" % self._dt_at) * shape.n)
        dts = dts.unpack_from(data, self._hops_off)
        if shape.n > 1 and sorted(dts) != list(dts):
            return None
        return pid, first_ts + dts[0], shape, dts

    def _shape(self, key, names):
        final_kind, reason, location, hooks, kinds, flags, netns, devs = key
        n, drop = len(hooks), self._drop
        if final_kind == records.KIND_DELIVER:
            return None
        for j in range(n):
            if not flags[j] & records.F_HOP_SET:
                return None
            if kinds[j] != 0 and not (j == n - 1 and kinds[j] == final_kind == drop):
                return None
        stages, counted = [], []
        for j in range(n):
            hook = self.d.hook_name(hooks[j])
            if hook == reconstruct.SEGMENT_HOOK:
                return None   # a TCP verdict to infer (reconstruct._infer_tcp)
            hop = {"hook": hook, "dev": records._dev(devs[j]), "netns": netns[j],
                   "netns_name": names.get(netns[j])}
            stages.append(analysis.stage(hop))
            counted.append(hook not in analysis.DROP_HOOKS)
        ns, nsname = netns[-1], names.get(netns[-1])
        if final_kind == drop:
            rname = self.d.reasons.get(reason, str(reason))
            loc = self.d.symbolize(location)
            group = ("dropped", rname, loc, ns)
            fields = {"reason": rname, "location": loc, "netns": ns, "netns_name": nsname}
            verdict = "dropped"
        else:
            hook, dev = self.d.hook_name(hooks[-1]), records._dev(devs[-1])
            group = ("other", hook, dev, ns)
            fields = {"hook": hook, "dev": dev, "netns": ns, "netns_name": nsname}
            verdict = "lost"
        return Shape(verdict, group, fields, stages, counted)


def _fmt(layout, names):
    """A struct for fields `names` of record `layout` (events/records.py), by their offsets, and
    the field names in its order."""
    fields = sorted((off, size, n, code) for n, off, size, code in layout.fields if n in names)
    fmt, pos, order = "<", 0, []
    for off, size, n, code in fields:
        fmt += "%dx" % (off - pos) if off > pos else ""
        fmt += code
        pos = off + size
        order.append(n)
    return struct.Struct(fmt), order
