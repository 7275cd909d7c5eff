"""Packet records (pktpath.reconstruct) -> text tables (tabulate) and JSON Lines (pure)."""
import json

from tabulate import tabulate

from pktpath import analysis
from pktpath.reconstruct import summarize

MAX_VERDICT_ROWS = 1000


def ns_label(netns, name=None):
    """`name (inode)` when the name is known, else the inode ("" when unknown)."""
    if netns is None:
        return ""
    return "%s (%s)" % (name, netns) if name else str(netns)


def _where(p):
    if p["verdict"] == "dropped":
        return p["drop"]["location"] or p["last"]["hook"]
    if p["verdict"] == "delivered":
        d = p["delivered"]
        return "%s:%s" % (d["netns_name"] or d["netns"], d["port"])
    last = p["last"]
    if not last["hook"]:
        return "-"
    return "%s@%s" % (last["hook"], last["dev"]) if last["dev"] else last["hook"]


def _verdict_cell(p):
    return "dropped (%s)" % p["drop"]["reason"] if p["verdict"] == "dropped" else p["verdict"]


def _table(rows, headers):
    return tabulate(rows, headers=headers, disable_numparse=True)


def trace_start(packets):
    """t_ns of the first event of the whole trace (None without packets)."""
    return min((p["first_ns"] for p in packets if p["first_ns"] is not None), default=None)


def render_timeline(packets, t0=None):
    """Every event of `packets`, packet by packet; TIME is ms since `t0` (default: the first event
    of these packets) and VERDICT is filled on each packet's last row."""
    t0 = trace_start(packets) if t0 is None else t0
    rows = []
    for p in packets:
        last = len(p["path"]) - 1
        prev = first = p["path"][0]["t_ns"] if p["path"] else 0
        for i, h in enumerate(p["path"]):
            outer = "%s > %s" % (h["outer_src"], h["outer_dst"]) if h["encap"] else ""
            rows.append(["%.3f" % ((h["t_ns"] - t0) / 1e6), "%.1f" % ((h["t_ns"] - prev) / 1e3),
                         "%.1f" % ((h["t_ns"] - first) / 1e3), h["hook"], h["dev"] or "",
                         ns_label(h["netns"], h.get("netns_name")), h["src"] or "", h["dst"] or "",
                         outer, "" if h["vni"] is None else h["vni"], p["id"],
                         _verdict_cell(p) if i == last else ""])
            prev = h["t_ns"]
    return _table(rows, ["TIME", "+PREV us", "+FIRST us", "EVENT", "DEVICE", "NAMESPACE", "SRC",
                         "DST", "OUTER", "VNI", "PACKET ID", "VERDICT"])


def _reason(p):
    if p["verdict"] == "dropped":
        reason = p["drop"]["reason"] or ""
    elif p.get("incomplete"):
        reason = "tracer lost events"
    else:
        reason = ""
    if p.get("clone_drops"):
        later = p.get("freed_after_delivery")
        reason += (", " if reason else "") + (
            "freed unread from the socket: " if later else "clone dropped: ") + ", ".join(
            sorted({str(d["reason"]) for d in p["clone_drops"]}))
    return reason


def render_verdicts(packets):
    """One row per packet: ID, VERDICT, HOPS, WHERE, REASON, NAMESPACE, DURATION (us)."""
    rows = []
    for p in packets:
        at = p["drop"] or p["delivered"] or p["last"]
        rows.append([p["id"], p["verdict"], p["events"], _where(p), _reason(p),
                     ns_label(at["netns"], at["netns_name"]),
                     "%.1f" % (((p["last_ns"] or 0) - (p["first_ns"] or 0)) / 1e3)])
    return _table(rows, ["ID", "VERDICT", "HOPS", "WHERE", "REASON", "NAMESPACE", "DURATION us"])


def render_coverage(coverage):
    """Which hooks were attached (and by which method), which were skipped and why."""
    multi = any(c.get("host") for c in coverage)
    rows = [([c.get("host") or ""] if multi else []) +
            [c["hook"], c.get("method") or "-", c["status"], c.get("why") or ""] for c in coverage]
    return _table(rows, (["HOST"] if multi else []) + ["HOOK", "METHOD", "STATUS", "WHY"])


def render_summary(packets, lost_events=0, coverage=None, streamed_delivered=0):
    """Coverage (if given), counts by verdict, drops and lost packets grouped by place.
    `streamed_delivered`: delivered packets not kept in `packets` (long live traces)."""
    s = summarize(packets)
    v = s["verdicts"]
    if streamed_delivered:
        s["packets"] += streamed_delivered
        v["delivered"] += streamed_delivered
    parts = [render_coverage(coverage)] if coverage else []
    parts.append("%d packet%s: %d delivered, %d dropped, %d lost" % (
        s["packets"], "" if s["packets"] == 1 else "s", v["delivered"], v["dropped"], v["lost"])
        + (", %d incomplete (the tracer lost their events)" % v["incomplete"]
           if v.get("incomplete") else ""))
    if s["drops"]:
        parts.append(_table([[g["reason"], g["location"], ns_label(g["netns"], g["netns_name"]),
                              g["count"], _ids(g)] for g in s["drops"]],
                            ["DROP REASON", "LOCATION", "NAMESPACE", "PACKETS", "IDS"]))
    if s["lost"]:
        parts.append(_table([[g["hook"], g["dev"], ns_label(g["netns"], g["netns_name"]),
                              g["count"], _ids(g)] for g in s["lost"]],
                            ["LOST AFTER", "DEVICE", "NAMESPACE", "PACKETS", "IDS"]))
    if lost_events:
        parts.append("%d events lost by the tracer (ring buffer full: raise ringbuf_pages)"
                     % lost_events)
    return "\n\n".join(parts)


def _ids(group):
    ids = ", ".join(str(i) for i in group["ids"])
    return ids + ", ..." if group["count"] > len(group["ids"]) else ids


def render_report(packets, meta=None, end=None, max_timeline_packets=50):
    """The whole report: coverage, timeline of the first N packets, verdicts, summary."""
    meta, end = meta or {}, end or {}
    sections = []
    if meta.get("coverage"):
        sections.append(("coverage", render_coverage(meta["coverage"])))
    if not packets:
        sections.append(("packets", "no matching packets seen"))
    else:
        n = max_timeline_packets
        if n and n > 0:
            title = "timeline" if len(packets) <= n else \
                "timeline (first %d of %d packets; see --timeline)" % (n, len(packets))
            sections.append((title, render_timeline(packets[:n], trace_start(packets))))
        shown = packets
        if len(packets) > MAX_VERDICT_ROWS:
            shown = [p for p in packets if p["verdict"] != "delivered"][:MAX_VERDICT_ROWS]
        title = "verdicts" if shown is packets else \
            "verdicts (%d of %d packets; all in --json)" % (len(shown), len(packets))
        sections.append((title, render_verdicts(shown)))
        sections.append(("per-hop latency", analysis.render_segments(packets)))
        sections.append(("stage funnel", analysis.render_funnel(packets)))
    sections.append(("summary", render_summary(packets, end.get("lost", 0),
                                               streamed_delivered=end.get("streamed_delivered",
                                                                          0))))
    notes = list(end.get("warnings", []))
    if end.get("unreachable"):
        notes.append("%d hook firings saw a matching packet whose ID was out of reach "
                     "(not in the linear skb data)"
                     % end["unreachable"])
    if notes:
        sections.append(("notes", "\n".join(notes)))
    return "\n\n".join("== %s ==\n%s" % s for s in sections)


def write_json(packets, fh):
    """One JSON object per packet, one per line."""
    for p in packets:
        fh.write(json.dumps(p, separators=(",", ":")) + "\n")
