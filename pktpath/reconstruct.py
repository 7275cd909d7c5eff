"""Events -> one record per packet ID, with its path and verdict (pure functions).

Verdict (docs/DESIGN.md): `delivered` if any event is a delivery (clones share the ID: one
delivered copy wins, drops of other clones are kept as `clone_drops`); else `dropped` (the last
drop); else `lost`, reported with its last sighting; `incomplete` instead of `lost` when the
tracer itself lost events of that packet (never blame the network for the tracer's losses).

A packet ID seen again after a quiet gap, on another skb, is another packet (a restarted sender
reuses IDs): each such generation gets its own record.
"""
from collections import defaultdict
from operator import itemgetter

VERDICTS = ("delivered", "dropped", "lost", "incomplete")
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


def _packet(pid, evs, names):
    """The record of packet `pid` from its events `evs`, already in time order."""
    path = []
    delivers, drops = [], []
    for ev in evs:
        get = ev.get
        netns = get("netns")
        hop = {"t_ns": ev["t_ns"], "hook": get("hook"), "dev": get("dev"), "netns": netns,
               "netns_name": names.get(netns), "cpu": get("cpu"), "encap": get("encap"),
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
    last = evs[-1]
    pkt = {"id": pid, "verdict": "lost", "events": len(evs), "first_ns": evs[0]["t_ns"],
           "last_ns": last["t_ns"],
           "last": {"hook": last.get("hook"), "dev": last.get("dev"),
                    "ifindex": last.get("ifindex"), "netns": last.get("netns"),
                    "netns_name": names.get(last.get("netns"))},
           "drop": None, "delivered": None, "path": path}
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
    else:
        clone_drops = ()
    if clone_drops:
        pkt["clone_drops"] = [_drop(ev, names) for ev in clone_drops]
    return pkt


def generations(evs, gap_ns=REUSE_GAP_NS):
    """Split one ID's time-ordered events into packets: a new one starts after a quiet gap of
    more than `gap_ns`, unless the event is on an skb already seen (a datagram freed from a
    socket queue long after its delivery is still the same packet)."""
    out, skbs, last_t = [], set(), None
    for ev in evs:
        if last_t is not None and ev["t_ns"] - last_t > gap_ns and ev.get("skb") not in skbs:
            out.append([])
            skbs = set()
        if not out:
            out.append([])
        out[-1].append(ev)
        skbs.add(ev.get("skb"))
        last_t = ev["t_ns"]
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
    return [_packet(pid, gen, names) for pid, evs in sorted(by_id.items())
            for gen in generations(sorted(evs, key=key), reuse_gap_ns)]


def mark_incomplete(packets, lost_ids, all_lost_suspect=False):
    """Account for what the tracer itself lost (ring buffer full).

    `lost_ids` is {id: events lost} or an iterable of IDs. Their packets get
    `"incomplete": <events lost, or true>`, and the verdict `incomplete` where it would have been
    `lost` (a seen delivery or drop stays: it happened). IDs whose every event was lost get a
    record of their own. With `all_lost_suspect` (the tracer lost events it could not attribute
    to IDs) every `lost` verdict becomes `incomplete`. Returns a new list.
    """
    lost = lost_ids if isinstance(lost_ids, dict) else dict.fromkeys(lost_ids or (), True)
    lost = {int(k): v for k, v in lost.items()}
    out, seen = [], set()
    for p in packets:
        seen.add(p["id"])
        if p["id"] in lost or (all_lost_suspect and p["verdict"] == "lost"):
            p = dict(p, incomplete=lost.get(p["id"], True))
            if p["verdict"] == "lost":
                p["verdict"] = "incomplete"
        out.append(p)
    for pid in sorted(set(lost) - seen):
        out.append({"id": pid, "verdict": "incomplete", "incomplete": lost[pid], "events": 0,
                    "first_ns": None, "last_ns": None,
                    "last": {"hook": None, "dev": None, "ifindex": None, "netns": None,
                             "netns_name": None},
                    "drop": None, "delivered": None, "path": []})
    out.sort(key=lambda p: (p["id"], p["first_ns"] or 0))
    return out


def summarize(packets):
    """Counts by verdict, and drops (by reason, location, netns) and lost packets (by last
    sighting) grouped, most frequent first, each with up to 5 example IDs."""
    counts = dict.fromkeys(VERDICTS, 0)
    drops, lost = {}, {}
    for p in packets:
        counts[p["verdict"]] = counts.get(p["verdict"], 0) + 1
        if p["verdict"] == "dropped":
            d = p["drop"]
            group = drops.setdefault((d["reason"], d["location"], d["netns"]), {
                "reason": d["reason"], "location": d["location"], "netns": d["netns"],
                "netns_name": d["netns_name"], "count": 0, "ids": []})
        elif p["verdict"] == "lost":
            last = p["last"]
            group = lost.setdefault((last["hook"], last["dev"], last["netns"]), dict(
                last, count=0, ids=[]))
            group.pop("ifindex", None)
        else:
            continue
        group["count"] += 1
        if len(group["ids"]) < 5:
            group["ids"].append(p["id"])

    def ranked(groups):
        return sorted(groups.values(), key=lambda g: (-g["count"], g["ids"][0]))
    return {"packets": len(packets), "verdicts": counts, "drops": ranked(drops),
            "lost": ranked(lost)}
