"""Events -> one record per packet ID, with its path and verdict (pure functions).

The record's fields and their order are declared in events/schema.py (tests/unit/test_schema.py).

Verdict (docs/DESIGN.md): `delivered` if any event is a delivery (clones share the ID: one
delivered copy wins, drops of other clones are kept as `clone_drops`); else `dropped` (the last
drop); else `lost`, reported with its last sighting; `incomplete` instead of `lost` when the
tracer itself lost events of that packet (never blame the network for the tracer's losses).

A packet ID is not unique: a restarted sender reuses IDs, two senders may send the same IDs at
once, identical payloads share their payload ID. `generations` splits an ID's events into its
packets (skb continuity, where each packet began, one delivery each): each gets its own record.
"""
from bisect import insort
from collections import defaultdict
from operator import itemgetter

VERDICTS = ("delivered", "dropped", "lost", "incomplete")   # + "consumed" (TCP) when seen
# the hook whose hop tells a TCP segment reached its (established) socket (configs/hooks.yaml)
SEGMENT_HOOK = "tcp_probe"
STATE_HOOK = "tcp_state"
REUSE_GAP_NS = 1_000_000_000  # a packet crosses the stack in far less; a reused ID comes later


def ns_names(netns_names):
    """{inode (int): name} from a mapping whose keys may be ints or strings (JSON)."""
    out = {}
    for k, v in (netns_names or {}).items():
        try:
            out[int(k)] = v
        except (TypeError, ValueError):
            continue
    return out


def _drop(ev, names):
    netns = ev.get("netns")
    return {"reason": ev.get("reason"), "reason_code": ev.get("reason_code"),
            "location": ev.get("location"), "dev": ev.get("dev"), "netns": netns,
            "netns_name": names.get(netns)}


UNPARSED_FLOW = "0.0.0.0:0"   # a sighting whose headers were not parsed (ID from the skb map)


def nat_hops(path):
    """The rewrites (NAT) along `path` (hop dicts): [{"hop": i, "from": "src > dst", "to": ...}]
    for each parsed hop whose flow differs from the parsed hop before it."""
    out, prev = [], None
    for i, h in enumerate(path):
        src, dst = h["src"], h["dst"]
        if not src or (src == UNPARSED_FLOW and dst == UNPARSED_FLOW):
            continue
        flow = "%s > %s" % (src, dst)
        if prev is not None and flow != prev:
            out.append({"hop": i, "from": prev, "to": flow})
        prev = flow
    return out


def _packet(pid, evs, names):
    """The record of packet `pid` from its events `evs`, already in time order."""
    path = []
    delivers, drops, consumes = [], [], []
    reported = set()    # (skb, netns, port) of the deliveries seen
    kept = 0
    for ev in evs:
        get = ev.get
        netns = get("netns")
        if get("kind") == "deliver":
            # events mode reports a datagram again at each later callback of its socket while
            # it waits unread (the kernel side keeps no state there): the same datagram on the
            # same socket is one delivery
            key = (get("skb"), netns, get("port"))
            if key in reported:
                continue
            reported.add(key)
        kept += 1
        hop = {"t_ns": ev["t_ns"], "hook": get("hook"), "dev": get("dev"), "netns": netns,
               "netns_name": names.get(netns), "cpu": get("cpu"), "encap": get("encap"),
               # recorded before Geneve (no "tunnel"): every encapsulated sighting was VXLAN
               "tunnel": get("tunnel") or ("vxlan" if get("encap") else None),
               "vni": get("vni"), "src": get("src"), "dst": get("dst"),
               "outer_src": get("outer_src"), "outer_dst": get("outer_dst")}
        if "host" in ev:
            hop["host"] = ev["host"]
        path.append(hop)
        kind = get("kind")
        if kind == "deliver":
            delivers.append(ev)
        elif kind == "drop":
            drops.append(ev)
        elif kind == "consume":
            consumes.append(ev)
    last = evs[-1]
    pkt = {"id": pid, "verdict": "lost", "events": kept, "first_ns": evs[0]["t_ns"],
           "last_ns": last["t_ns"],
           "last": {"hook": last.get("hook"), "dev": last.get("dev"),
                    "ifindex": last.get("ifindex"), "netns": last.get("netns"),
                    "netns_name": names.get(last.get("netns"))},
           "drop": None, "delivered": None, "path": path}
    first = evs[0]
    if first.get("key"):    # (recordings made before keys came from headers have none)
        pkt["key"] = first["key"]
        pkt["proto"] = first.get("proto")
        pkt["src"] = first.get("src")
        pkt["dst"] = first.get("dst")
    nat = nat_hops(path)
    if nat:
        pkt["nat"] = nat
    if delivers:
        d = delivers[0]
        pkt["verdict"] = "delivered"
        pkt["delivered"] = {"netns": d.get("netns"), "netns_name": names.get(d.get("netns")),
                            "port": d.get("port")}
        clone_drops = drops
        if drops and all(ev["t_ns"] > d["t_ns"] for ev in drops):
            pkt["freed_after_delivery"] = True  # e.g. left unread in a socket that closed
    elif drops:
        pkt["verdict"] = "dropped"
        pkt["drop"] = _drop(drops[-1], names)
        if drops[-1].get("stack"):
            pkt["drop"]["stack"] = drops[-1]["stack"]
        clone_drops = drops[:-1]
    elif consumes:
        clone_drops = ()
        pkt["verdict"] = "consumed"
        if consumes[-1].get("hook") == STATE_HOOK:
            pkt["inferred"] = "its socket changed state (inet_sock_set_state, no skb) on the " \
                              "CPU that saw the segment moments before, in its namespace"
    else:
        clone_drops = ()
        _infer_tcp(pkt, evs, names)
    if clone_drops:
        pkt["clone_drops"] = [_drop(ev, names) for ev in clone_drops]
    return pkt


def _infer_tcp(pkt, evs, names):
    """A TCP segment last seen at tcp_probe was processed by its established socket: it is
    never `lost`. With data (or a FIN) and no delivery seen, its data was merged into the
    socket queue's tail (tcp_try_coalesce) and its skb freed unseen: `delivered`; without, a pure
    ACK freed by __kfree_skb (no tracepoint): `consumed`. Both inferred, and the record says so."""
    last = evs[-1]
    if last.get("hook") != SEGMENT_HOOK or last.get("kind") != "pass":
        return
    if last.get("tcp_data"):
        pkt["verdict"] = "delivered"
        dst = last.get("dst") or ""
        port = dst.rsplit(":", 1)[-1]
        # tcp_probe has no device (netns 0): the socket's netns is where the segment was last
        netns = next((ev.get("netns") for ev in reversed(evs) if ev.get("netns")), None)
        pkt["delivered"] = {"netns": netns, "netns_name": names.get(netns),
                            "port": int(port) if port.isdigit() else None}
        pkt["inferred"] = "data processed by its socket (tcp_probe) and no skb of its own " \
                          "queued: merged into the queue's tail (coalesced)"
    else:
        pkt["verdict"] = "consumed"
        pkt["inferred"] = "no data, processed by its socket (tcp_probe): an ACK, freed " \
                          "by __kfree_skb (no tracepoint)"


def _hop_id(path, ev):
    """A hop of a kernel-built path: two hops of one path never share the time stamp, hook,
    kind and CPU (one CPU's clock moves between two hooks)."""
    get = ev.get
    return path, ev["t_ns"], get("hook"), get("kind"), get("cpu")


class _Gen:
    """One packet being built from an ID's events (see generations)."""
    __slots__ = ("evs", "start", "skbs", "done", "last_skb", "positions", "delivered", "final",
                 "paths", "hops", "recycled")

    def __init__(self, start):
        self.evs, self.start, self.paths, self.hops = [], start, set(), set()
        self.skbs, self.done, self.positions = set(), set(), set()
        self.recycled = set()   # its skbs seen carrying a reply (see _is_reply)
        self.last_skb = None
        self.delivered = None   # (skb, netns, port) of its delivery
        self.final = False      # delivered, or dropped on the skb it travelled on last

    def repeats(self, ev, kind):
        """True if `ev` is a hop of a kernel-built path this packet has already: the kernel
        emitted that path twice (two CPUs delivered its datagram at once: a batch's walk and the
        datagram's own callback; or user space swept it as quiet while it was delivered). Both
        copies have the path's first time stamp; the second repeats the first one's hops and
        may add a second delivery of the same datagram (a path never holds two deliveries)."""
        path = ev.get("path")
        if path is None or path not in self.paths:
            return False
        if kind == "deliver" and self.delivered is not None:
            return True
        return _hop_id(path, ev) in self.hops

    def add(self, ev, skb, kind, pos):
        self.evs.append(ev)
        self.positions.add(pos)
        path = ev.get("path")
        if path is not None:
            self.paths.add(path)
            self.hops.add(_hop_id(path, ev))
        if skb is not None:
            self.skbs.add(skb)
        if kind == "pass":
            self.last_skb = skb
            return
        if skb is not None:
            self.done.add(skb)
        if kind == "deliver":
            if self.delivered is None:
                self.delivered = (skb, ev.get("netns"), ev.get("port"))
            self.final = True
        elif kind == "drop" and (skb is None or skb == self.last_skb or self.last_skb is None):
            self.final = True
        elif kind == "consume":
            # the stack finished with it (a SYN's consume_skb, a socket state change): done,
            # as summary mode's kernel path ends there; a later sighting of the key known only
            # by the skb map (the skb recycled for the server's next segment) continues nothing
            self.final = True
            if not skb and self.last_skb:       # a state change has no skb (0): the last one
                self.done.add(self.last_skb)


def _ports(ev):
    src, dst = ev.get("src"), ev.get("dst")
    if not src or not dst:
        return None
    return src.rpartition(":")[2], dst.rpartition(":")[2]


def _is_reply(ev, first):
    """`ev`'s ports are those of `first` (a packet's first sighting) swapped (and differ)."""
    a, b = _ports(ev), _ports(first)
    return a is not None and b is not None and b[0] != b[1] and a == (b[1], b[0])


def _place(live, ev, skb, kind, pos):
    """The generation of `live` that `ev` continues, or None: it starts a new packet."""
    path = ev.get("path")
    if path is not None:                # summary mode: the kernel built this path
        for g in live:
            if path in g.paths:
                return g
    if skb is not None:
        for g in reversed(live):        # skb continuity, newest generation first
            if skb not in g.skbs:
                continue
            if skb in g.recycled:
                return None
            if ev.get("rewritten") and _is_reply(ev, g.evs[0]):
                # the packet's own ports swapped: a reply on the recycled skb (a segment
                # coalesced at the server, freed unseen, its skb and buffer reused for the
                # server's ACK), never a NAT rewrite (summary mode's kernel rule, pp_summary):
                # it and whatever follows on that skb continue nothing
                g.recycled.add(skb)
                return None
            if kind == "pass":
                # the skb was delivered or dropped, or the packet is back where it began: the
                # skb was recycled for another packet of the same ID
                return None if skb in g.done or pos == g.start else g
            if kind == "deliver" and g.delivered is not None and \
                    g.delivered != (skb, ev.get("netns"), ev.get("port")):
                break                   # a path never holds two deliveries
            return g
    if kind == "pass":
        if any(g.start == pos for g in live):
            return None                 # where a packet of this ID began: another packet
        for g in live:                  # the oldest packet still under way not seen here yet
            if not g.final and pos not in g.positions:
                return g
        return None
    for g in live:
        if not g.final and (kind != "deliver" or g.delivered is None):
            return g
    if kind == "drop" and live:
        return live[-1]                 # a clone freed after the delivery
    return None


def generations(evs, gap_ns=REUSE_GAP_NS):
    """Split one ID's time-ordered events into packets (an ID is not unique: a restarted sender
    reuses IDs, two senders may send the same ones at once, identical payloads share their
    payload ID). An event continues the packet whose skb it is on, unless that skb was
    delivered or dropped already or the event is where that packet began (the skb was
    recycled); an event on another skb continues the oldest packet under way that has not been
    seen at that hook + device + namespace yet, unless a packet of the ID began there. A packet
    never holds two deliveries; an event known only by the skb map begins none. Events of one
    kernel-built path (summary mode: `path`, the
    record's first time stamp) stay one packet. After a quiet gap of more than `gap_ns` every packet is done,
    except for events on their skbs (a datagram freed from a socket queue long after its
    delivery is still the same packet)."""
    out, live, last_t = [], [], None
    for ev in evs:
        get = ev.get
        skb, kind = get("skb"), get("kind")
        t = ev["t_ns"]
        if last_t is not None and t - last_t > gap_ns and \
                (skb is None or not any(skb in g.skbs for g in live)):
            live = []
        last_t = t
        pos = (get("host"), get("hook"), get("dev"), get("netns"), get("encap"))
        try:
            hash(pos)
        except TypeError:
            pos = repr(pos)
        g = _place(live, ev, skb, kind, pos)
        if g is not None and g.repeats(ev, kind):
            continue
        if g is None and get("path") is None and (get("from_map") or get("rewritten") or
                                                  kind == "consume"):
            # known only by the skb map (headers not parsed, or a flow the filter rejects):
            # never a packet's first sighting. It continues no packet under way: the skb and
            # buffer were recycled for another packet (the server's ACK on the skb of a
            # dropped retransmission), whose ID the map still gave. Nor does a consume begin
            # one (summary mode's rule: the stack finishing with an skb ends a packet seen on
            # it; the sender's copy of a TCP segment, freed when acknowledged, is not one).
            continue
        if g is None:
            g = _Gen(pos)
            live.append(g)
            out.append(g.evs)
        g.add(ev, skb, kind, pos)
    return out


def build_packets(events, netns_names=None, reuse_gap_ns=REUSE_GAP_NS):
    """One record per packet (sorted by ID, then time) from event dicts in any order.

    Each packet's events are ordered by `t_ns`, ties keeping their input order.
    `netns_names` maps netns inode (int or str) -> name.
    """
    names = ns_names(netns_names)
    by_id = defaultdict(list)
    for ev in events:
        by_id[ev["id"]].append(ev)
    key = itemgetter("t_ns")
    return [p for pid, evs in sorted(by_id.items())
            for p in retransmissions([_packet(pid, gen, names) for gen in
                                      generations(sorted(evs, key=key), reuse_gap_ns)])]


def retransmissions(pkts):
    """Mark TCP retransmissions among the packets of one ID (in time order), and return them.
    A header key of a TCP segment that occupies sequence space (SYN, FIN, data) is its flow,
    sequence number, flags and length (bpf/pktpath.c, pp_key_headers: not the IP ID nor the
    ACK number): a later packet of the key and flow is a retransmission of the first one, a
    packet of its own (the split rules of `generations`) with `"retransmission_of":
    {"first_ns": ...}`. Pure ACKs keep IP ID and ACK number in their key: theirs are distinct.
    Payload IDs are not marked: a TCP payload's bytes at the ID offset may repeat in segments
    that are not retransmissions (only the duplicate-ID warning applies)."""
    if len(pkts) < 2:
        return pkts
    first = pkts[0]
    for p in pkts[1:]:
        if p.get("key") == "headers" and p.get("proto") == "tcp" and \
                first.get("key") == "headers" and (p.get("src"), p.get("dst")) == \
                (first.get("src"), first.get("dst")) and first["first_ns"] is not None:
            p["retransmission_of"] = {"first_ns": first["first_ns"]}
    return pkts


# what _packet and generations read of an event besides t_ns and skb: an event is kept as
# (t_ns, skb, shape) where the shape (a dict of these keys) is shared by all events alike
SHAPE_KEYS = ("hook", "kind", "cpu", "dev", "ifindex", "netns", "encap", "tunnel", "vni", "src", "dst",
              "outer_src", "outer_dst", "reason", "reason_code", "location", "port", "stack",
              "key", "proto", "tcp_data", "from_map", "rewritten")



class FirstCopies:
    """The TCP segments (header keys) a live trace has finished, so that a retransmission
    finished in a later flush (more than the settle window after its first copy: an RTO's
    backoff doubles, 0.2, 0.4, 0.8, 1.6 s...) is marked as `retransmissions` marks one finished
    with it, as `report` of the recording marks it. Bounded: the newest `size` keys; an older
    one's retransmission is then not marked (the report notes nothing: it is not a verdict)."""

    __slots__ = ("first", "size")

    def __init__(self, size=1 << 17):
        self.first, self.size = {}, size

    def mark(self, p):
        """Mark packet `p` (finished now) if an earlier packet of its key and flow was seen."""
        if p.get("key") != "headers" or p.get("proto") != "tcp" or p["first_ns"] is None:
            return
        k = (p["id"], p.get("src"), p.get("dst"))
        first = self.first.get(k)
        if first is None:
            first = self.first[k] = p["first_ns"]
            if len(self.first) > self.size:
                del self.first[next(iter(self.first))]   # the oldest
        if first < p["first_ns"] and "retransmission_of" not in p:
            p["retransmission_of"] = {"first_ns": first}

class EventStore:
    """Events grouped by packet ID in compact form, for recordings too big to hold as dicts.

    A million event dicts take gigabytes; here an event is a 3-tuple whose shape (hook, device,
    namespace, addresses, ...) is shared with every event alike: a trace has few distinct
    shapes. `packets()` expands one ID at a time and gives what build_packets() gives.
    """

    def __init__(self):
        self._by_id = {}
        self._shapes = {}
        self.events = 0

    def add(self, ev):
        """Keep one event dict (it is not kept itself, nor modified)."""
        get = ev.get
        shape = tuple(map(get, SHAPE_KEYS))
        if "host" in ev:
            shape += (ev["host"],)
        try:  # types in the key: 1, 1.0 and true are equal but are not written alike
            key = (shape, tuple(map(type, shape)))
            tmpl = self._shapes.get(key)
            if tmpl is None:
                tmpl = self._shapes[key] = _shape_dict(shape)
        except TypeError:  # a list (a drop stack) in it: not shared
            tmpl = _shape_dict(shape)
        evs = self._by_id.get(ev["id"])
        if evs is None:
            evs = self._by_id[ev["id"]] = []
        evs.append((ev["t_ns"], get("skb"), tmpl, get("path")))
        self.events += 1

    def packets(self, netns_names=None, reuse_gap_ns=REUSE_GAP_NS):
        """Packet records, sorted by ID then time, as build_packets() over the same events
        would give them, built one ID at a time."""
        names = ns_names(netns_names)
        for pid, evs in sorted(self._by_id.items()):
            evs.sort(key=_T_NS)
            dicts = [dict(tmpl, t_ns=t, skb=skb) if path is None else
                     dict(tmpl, t_ns=t, skb=skb, path=path) for t, skb, tmpl, path in evs]
            yield from retransmissions([_packet(pid, gen, names)
                                        for gen in generations(dicts, reuse_gap_ns)])


_T_NS = itemgetter(0)


def _shape_dict(shape):
    d = dict(zip(SHAPE_KEYS, shape))
    if len(shape) > len(SHAPE_KEYS):
        d["host"] = shape[-1]
    return d


def mark_incomplete(packets, lost_ids, all_lost_suspect=False):
    """Account for what the tracer itself lost (ring buffer full).

    `lost_ids` is {id: events lost} or an iterable of IDs. Their packets get
    `"incomplete": <events lost, or true>`, and the verdict `incomplete` where it would have been
    `lost` (a seen delivery or drop stays: it happened). IDs whose every event was lost get a
    record of their own. With `all_lost_suspect` (the tracer lost events it could not attribute
    to IDs) every `lost` verdict becomes `incomplete`. Returns a new list.
    """
    return list(mark_incomplete_sorted(sorted(packets, key=_order), lost_ids, all_lost_suspect))


def _order(p):
    return p["id"], p["first_ns"] or 0


def mark_incomplete_sorted(packets, lost_ids, all_lost_suspect=False, also_seen=()):
    """mark_incomplete() over packets already sorted by (ID, first_ns), one at a time: the
    records of lost IDs never seen are merged in at their place, so a recording's packets can
    be reported without holding them all. IDs in `also_seen` were seen in packets not given
    (a live trace's aggregated ones): no record is made for them."""
    lost = lost_ids if isinstance(lost_ids, dict) else dict.fromkeys(lost_ids or (), True)
    lost = {int(k): v for k, v in lost.items()}
    unseen = sorted(lost)  # those seen are skipped on the way
    i, seen = 0, set(also_seen)
    for p in packets:
        pid = p["id"]
        while i < len(unseen) and unseen[i] < pid:
            if unseen[i] not in seen:
                yield _lost_record(unseen[i], lost[unseen[i]])
            i += 1
        if pid in lost:
            seen.add(pid)
        if pid in lost or (all_lost_suspect and p["verdict"] == "lost"):
            p = dict(p, incomplete=lost.get(pid, True))
            if p["verdict"] == "lost":
                p["verdict"] = "incomplete"
        yield p
    for pid in unseen[i:]:
        if pid not in seen:
            yield _lost_record(pid, lost[pid])


def _lost_record(pid, n_lost):
    """The record of a packet ID whose every event the tracer lost."""
    return {"id": pid, "verdict": "incomplete", "events": 0, "first_ns": None, "last_ns": None,
            "last": {"hook": None, "dev": None, "ifindex": None, "netns": None,
                     "netns_name": None},
            "drop": None, "delivered": None, "path": [], "incomplete": n_lost}


def summarize(packets):
    """Counts by verdict, and drops (by reason, location, netns) and lost packets (by last
    sighting) grouped, most frequent first, each with up to 5 example IDs."""
    summary = Summary()
    for p in packets:
        summary.add(p)
    return summary.result()


class Summary:
    """summarize() fed one packet at a time (a report need not hold every packet)."""

    def __init__(self):
        self.packets = 0
        self._counts = dict.fromkeys(VERDICTS, 0)
        self._drops, self._lost = {}, {}

    def add(self, p):
        v = p["verdict"]
        if v == "dropped":
            d = p["drop"]
            self.add_group(p["id"], v, (d["reason"], d["location"], d["netns"]), d)
        elif v == "lost":
            last = p["last"]
            self.add_group(p["id"], v, (last["hook"], last["dev"], last["netns"]), last)
        else:
            self.add_group(p["id"], v, None, None)

    def add_group(self, pid, verdict, key, fields):
        """One packet of `verdict`; dropped and lost ones in group `key` ((reason, location,
        netns) or (hook, dev, netns)), made from `fields` when new. A group lists its 5 lowest
        IDs (what the first 5 added are when packets come in ID order; any order gives the
        same)."""
        self.packets += 1
        self._counts[verdict] = self._counts.get(verdict, 0) + 1
        if key is None:
            return
        groups = self._drops if verdict == "dropped" else self._lost
        group = groups.get(key)
        if group is None:
            if verdict == "dropped":
                group = {"reason": fields["reason"], "location": fields["location"],
                         "netns": fields["netns"], "netns_name": fields["netns_name"],
                         "count": 0, "ids": []}
            else:
                group = {"hook": fields["hook"], "dev": fields["dev"],
                         "netns": fields["netns"], "netns_name": fields["netns_name"],
                         "count": 0, "ids": []}
            groups[key] = group
        group["count"] += 1
        ids = group["ids"]
        if len(ids) < 5:
            insort(ids, pid)
        elif pid < ids[-1]:
            insort(ids, pid)
            ids.pop()

    def add_count(self, verdict, count):
        """`count` packets of `verdict` in no group (delivered, incomplete...)."""
        self.packets += count
        self._counts[verdict] = self._counts.get(verdict, 0) + count

    def add_groups(self, ids, count, verdict, key, fields):
        """add_group() of `count` packets whose lowest IDs are `ids` (up to 5, sorted)."""
        self.packets += count
        self._counts[verdict] = self._counts.get(verdict, 0) + count
        self.add_group(ids[0], verdict, key, fields)
        self.packets -= 1
        self._counts[verdict] -= 1
        group = (self._drops if verdict == "dropped" else self._lost)[key]
        group["count"] += count - 1
        group["ids"] = sorted(group["ids"] + list(ids[1:]))[:5]

    def result(self):
        """{packets, verdicts: {verdict: count}, drops: [group], lost: [group]} (a new dict:
        the caller may change it)."""
        def ranked(groups):
            return sorted((dict(g, ids=list(g["ids"])) for g in groups.values()),
                          key=lambda g: (-g["count"], g["ids"][0]))
        return {"packets": self.packets, "verdicts": dict(self._counts),
                "drops": ranked(self._drops), "lost": ranked(self._lost)}
