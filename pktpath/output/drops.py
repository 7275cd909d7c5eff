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
