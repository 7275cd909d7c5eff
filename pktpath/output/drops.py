"""`--drops all`: every kfree_skb drop on the machine, traced traffic or not, grouped by location,
reason and netns (what dropwatch does), and `--stack` drop stacks. Pure formatting."""
from tabulate import tabulate


def drop_table(counts, symbolize, reasons, netns_names, previous=None, top=15):
    """Text table of drop counts. `counts`: [(location, reason, netns, count)]; with `previous`
    (the counts dict of the last interval) only the increase since then is shown."""
    prev = previous or {}
    rows = []
    for loc, reason, netns, n in counts:
        delta = n - prev.get((loc, reason, netns), 0)
        if delta > 0:
            name = netns_names.get(netns) or netns_names.get(str(netns))
            rows.append((delta, symbolize(loc) or "?", reasons.get(reason, str(reason)),
                         "%s (%s)" % (name, netns) if name else str(netns)))
    rows.sort(key=lambda r: -r[0])
    if not rows:
        return "no drops"
    more = len(rows) - top
    text = tabulate(rows[:top], headers=["DROPS", "LOCATION", "REASON", "NAMESPACE"])
    return text + ("\n(+%d more locations)" % more if more > 0 else "")


def as_dict(counts):
    return {(loc, reason, netns): n for loc, reason, netns, n in counts}


def stacks_section(packets):
    """Text of the distinct drop stacks of traced packets, each with the IDs that hit it."""
    by_stack = {}
    for pkt in packets:
        stack = (pkt.get("drop") or {}).get("stack")
        if stack:
            by_stack.setdefault(tuple(stack), []).append(pkt["id"])
    parts = []
    for stack, ids in sorted(by_stack.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
        parts.append("packets %s (%d):\n%s" % (shown, len(ids),
                                               "\n".join("    " + f for f in stack)))
    return "\n\n".join(parts)


class IntervalTable:
    """drop_table() of what changed since the last call (--drops all, every --interval)."""

    def __init__(self, symbolize, reasons, netns_names):
        self.symbolize, self.reasons, self.netns_names = symbolize, reasons, netns_names
        self.previous = {}

    def __call__(self, counts):
        text = drop_table(counts, self.symbolize, self.reasons, self.netns_names(),
                          self.previous)
        self.previous = as_dict(counts)
        return text


# ---- the `drops` command: one line per drop shown in detail, "N more like this", top flows,
# hints, the JSON summary. Input: the detail dicts of events/dropinfo.py and symbolized counts
# [(location, reason, netns, count)] (location "function+0xoff", reason a name). ----

def _ns(netns, name):
    return "%s(%s)" % (name, netns) if name else str(netns)


def detail_line(d):
    """One drop, tcpdrop style: time, namespace, device, protocol, flow (inner when tunnelled,
    then the tunnel), TCP flags, socket state, reason at location, the task on CPU."""
    parts = [d["time"], _ns(d["netns"], d["netns_name"]), d["dev"] or "-", d["proto"]]
    if d["src"] or d["dst"]:
        parts.append("%s > %s" % (d["src"], d["dst"]))
    if d.get("tcp_flags"):
        parts.append("[%s]" % d["tcp_flags"])
    if d.get("icmp_type") is not None:
        parts.append("type %d code %d" % (d["icmp_type"], d["icmp_code"]))
    if d.get("arp_op") is not None:
        parts.append("%s" % d["arp_op"])
    if d["tunnel"]:
        parts.append("(%s vni %d %s > %s)" % (d["tunnel"], d["vni"], d["outer_src"],
                                             d["outer_dst"]))
    if d["sk_state"]:
        parts.append("sk %s" % d["sk_state"])
    parts.append("%s at %s" % (d["reason"], d["location"]))
    if d.get("nf_hook"):
        parts.append("in hook %s" % d["nf_hook"])
    parts.append("[on CPU: %s/%d, may be unrelated]" % (d["comm"] or "?", d["pid"]))
    line = " ".join(parts)
    if d.get("stack"):
        line += "".join("\n    " + f for f in d["stack"])
    return line


def by_location_reason(counts):
    """{(location, reason): count} summed over namespaces."""
    out = {}
    for loc, reason, _netns, n in counts:
        out[(loc, reason)] = out.get((loc, reason), 0) + n
    return out


def more_lines(counts, shown, previous=None):
    """ "N more like this" per (location, reason): the drops counted (since `previous`, the
    counts of the last call) that were not shown in detail (`shown`: {(location, reason): n}
    details shown over the same span)."""
    now, prev = by_location_reason(counts), by_location_reason(previous or ())
    out = []
    for (loc, reason), n in sorted(now.items(), key=lambda kv: -kv[1]):
        more = n - prev.get((loc, reason), 0) - shown.get((loc, reason), 0)
        if more > 0:
            out.append("  ... %d more like this: %s at %s (counted, details not shown)"
                       % (more, reason, loc))
    return out


def _flow_key(f):
    return (f["proto"], f["src"], f["dst"], f["reason"], f["netns"], f["tunnel"], f["vni"])


def top_flows(flows, netns_names, top=10):
    """Text table of the flows dropped most (`flows`: dicts of dropinfo.decode_flow)."""
    merged = {}
    for f in flows:
        k = _flow_key(f)
        merged[k] = merged.get(k, 0) + f["drops"]
    if not merged:
        return "none"
    rows = []
    for (proto, src, dst, reason, netns, tun, vni), n in sorted(
            merged.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]:
        name = netns_names.get(str(netns)) or netns_names.get(netns)
        rows.append((n, proto, src or "-", dst or "-", "%s vni %d" % (tun, vni) if tun else "",
                     reason, _ns(netns, name)))
    text = tabulate(rows, headers=["DROPS", "PROTO", "SOURCE", "DESTINATION", "TUNNEL",
                                   "REASON", "NAMESPACE"])
    more = len(merged) - top
    return text + ("\n(+%d more flows)" % more if more > 0 else "")


def hints_section(reasons):
    """One line per reason that has a hint."""
    from pktpath.output.drophints import hint
    lines = ["%s: %s" % (r, hint(r)) for r in sorted(set(reasons)) if hint(r)]
    return "\n".join(lines) or "none"


def summary_object(counts, flows, shown, lost, duration_s=None):
    """The final JSON object of `drops --json`: the exact counts, details shown and not."""
    total = sum(n for *_k, n in counts)
    nshown = sum(shown.values())
    return {"type": "summary", "drops": total, "details_shown": nshown,
            "details_not_shown": max(0, total - nshown), "details_lost": lost,
            "duration_s": duration_s,
            "counts": [{"location": loc, "reason": reason, "netns": netns, "drops": n}
                       for loc, reason, netns, n in sorted(counts, key=lambda c: -c[3])],
            "top_flows": flows}
