"""Events -> one record per packet ID, with its path and verdict (pure functions).

Verdict (docs/DESIGN.md): `delivered` if any event is a delivery (clones share the ID: one
delivered copy wins, drops of other clones are kept as `clone_drops`); else `dropped` (the last
drop); else `lost`, reported with its last sighting.
"""
from collections import defaultdict
from operator import itemgetter

VERDICTS = ("delivered", "dropped", "lost")


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
        path.append({"t_ns": ev["t_ns"], "hook": get("hook"), "dev": get("dev"), "netns": netns,
                     "netns_name": names.get(netns), "cpu": get("cpu"), "encap": get("encap"),
                     "vni": get("vni"), "src": get("src"), "dst": get("dst"),
                     "outer_src": get("outer_src"), "outer_dst": get("outer_dst")})
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
    elif drops:
        pkt["verdict"] = "dropped"
        pkt["drop"] = _drop(drops[-1], names)
        clone_drops = drops[:-1]
    else:
        clone_drops = ()
    if clone_drops:
        pkt["clone_drops"] = [_drop(ev, names) for ev in clone_drops]
    return pkt


def build_packets(events, netns_names=None):
    """One record per packet ID (sorted by ID) from event dicts in any order.

    Each packet's events are ordered by `t_ns`, ties keeping their input order.
    `netns_names` maps netns inode (int or str) -> name.
    """
    names = ns_names(netns_names)
    by_id = defaultdict(list)
    for ev in events:
        by_id[ev["id"]].append(ev)
    key = itemgetter("t_ns")
    return [_packet(pid, sorted(evs, key=key), names) for pid, evs in sorted(by_id.items())]


def mark_incomplete(packets, lost_ids):
    """Flag packets whose events the tracer partly lost (ring buffer full).

    `lost_ids` is {id: events lost} or an iterable of IDs; flagged packets get
    `"incomplete": <events lost, or true>`. Returns a new list; the input is not modified.
    """
    lost = lost_ids if isinstance(lost_ids, dict) else dict.fromkeys(lost_ids or (), True)
    lost = {int(k): v for k, v in lost.items()}
    return [dict(p, incomplete=lost[p["id"]]) if p["id"] in lost else p for p in packets]


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
