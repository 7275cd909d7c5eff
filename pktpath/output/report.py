"""Packet records (pktpath.process.reconstruct) -> text tables (tabulate) and JSON Lines (pure)."""
from tabulate import tabulate

from pktpath.events import schema
from pktpath.process import analysis, sample
from pktpath.process.reconstruct import Summary, summarize

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


def _vni_cell(h):
    """The VNI column: the VNI (VXLAN), "geneve:VNI" for Geneve, empty when not encapsulated."""
    if h["vni"] is None:
        return ""
    tunnel = h.get("tunnel")
    return h["vni"] if tunnel in (None, "vxlan") else "%s:%s" % (tunnel, h["vni"])


def render_timeline(packets, t0=None):
    """Every event of `packets`, packet by packet; TIME is ms since `t0` (default: the first event
    of these packets) and VERDICT is filled on each packet's last row."""
    t0 = trace_start(packets) if t0 is None else t0
    rows = []
    for p in packets:
        last = len(p["path"]) - 1
        prev = first = p["path"][0]["t_ns"] if p["path"] else 0
        nat = {n["hop"] for n in p.get("nat") or ()}   # the hops where a rewrite was first seen
        retx = 0 if p.get("retransmission_of") else -1  # a TCP retransmission: its first hop
        for i, h in enumerate(p["path"]):
            outer = "%s > %s" % (h["outer_src"], h["outer_dst"]) if h["encap"] else ""
            event = h["hook"] + " [NAT]" if i in nat else h["hook"]
            if i == retx:
                event += " [RETRANSMISSION]"
            rows.append(["%.3f" % ((h["t_ns"] - t0) / 1e6), "%.1f" % ((h["t_ns"] - prev) / 1e3),
                         "%.1f" % ((h["t_ns"] - first) / 1e3), event, h["dev"] or "",
                         ns_label(h["netns"], h.get("netns_name")), h["src"] or "", h["dst"] or "",
                         outer, _vni_cell(h), p["id"],
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
    retx = p.get("retransmission_of")
    if retx and p["first_ns"] is not None:
        reason += (", " if reason else "") + "retransmission (first copy %.1f ms before)" % (
            (p["first_ns"] - retx["first_ns"]) / 1e6)
    if p.get("clone_drops"):
        later = p.get("freed_after_delivery")
        reason += (", " if reason else "") + (
            "freed unread from the socket: " if later else "clone dropped: ") + ", ".join(
            sorted({str(d["reason"]) for d in p["clone_drops"]}))
    return reason


def render_verdicts(packets):
    """One row per packet: ID, VERDICT, HOPS, WHERE, REASON, NAMESPACE, DURATION (us)."""
    return _verdict_table([_verdict_row(p) for p in packets])


def _verdict_row(p):
    at = p["drop"] or p["delivered"] or p["last"]
    return [p["id"], p["verdict"], p["events"], _where(p), _reason(p),
            ns_label(at["netns"], at["netns_name"]),
            "%.1f" % (((p["last_ns"] or 0) - (p["first_ns"] or 0)) / 1e3)]


def _verdict_table(rows):
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
    return _render_summary(summarize(packets), lost_events, coverage, streamed_delivered)


def _render_summary(s, lost_events=0, coverage=None, streamed_delivered=0):
    """render_summary() of a summarize() result (changed here)."""
    v = s["verdicts"]
    if streamed_delivered:
        s["packets"] += streamed_delivered
        v["delivered"] += streamed_delivered
    parts = [render_coverage(coverage)] if coverage else []
    parts.append("%d packet%s: %d delivered, %d dropped, %d lost" % (
        s["packets"], "" if s["packets"] == 1 else "s", v["delivered"], v["dropped"], v["lost"])
        + (", %d consumed (TCP: processed by the socket, no data queued)" % v["consumed"]
           if v.get("consumed") else "")
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
    builder = ReportBuilder(max_timeline_packets)
    for p in packets:
        builder.add(p)
    return builder.render(meta, end)


DUPLICATES_NOTE = ("packet IDs are not unique: %d packet%s had the ID of another packet (identical "
                   "payloads, or senders reusing IDs); each was followed as a packet of its own")


class ReportBuilder:
    """render_report() fed one packet at a time, in the order render_report() takes them.

    Only what the report shows is kept: the first N packets (timeline), the first rows of the
    verdict table, latencies and stage counts (analysis.PathStats) and the summary counts; so
    `report` on a recording of a million events never holds all its packets.
    """

    def __init__(self, max_timeline_packets=50, aggregate=None):
        n = max_timeline_packets
        self._timeline_max = n if n and n > 0 else 0
        self._timeline = []          # the first N packets
        self._rows = []              # verdict rows of the first MAX_VERDICT_ROWS packets
        # rows of packets not delivered: the first MAX_VERDICT_ROWS, and the first
        # sample.PER_GROUP of each drop point / lost place (the sample a live trace keeps)
        self._problem_rows = []
        self._problems = 0
        self._per_group = {}
        # a live trace's packets counted but not held (process/sample.Aggregate)
        self._t0 = aggregate.t0 if aggregate else None   # trace_start() of all packets
        self._paths = aggregate.paths if aggregate else analysis.PathStats()
        self._summary = aggregate.summary if aggregate else Summary()
        self._drop_from = {}         # (reason, location, netns) -> {stage before the drop: n}
        self._deliver_at = set()     # hooks delivered packets were last seen at

    def add(self, p):
        """Account for one packet record (reconstruct); it is kept only for the timeline."""
        if len(self._timeline) < self._timeline_max:
            self._timeline.append(p)
        if p["first_ns"] is not None and (self._t0 is None or p["first_ns"] < self._t0):
            self._t0 = p["first_ns"]
        problem = False
        if p["verdict"] != "delivered":
            self._problems += 1
            group = sample.group_of(p)
            n = self._per_group[group] = self._per_group.get(group, 0) + 1
            problem = self._problems <= MAX_VERDICT_ROWS or n <= sample.PER_GROUP
        if len(self._rows) < MAX_VERDICT_ROWS or problem:
            row = _verdict_row(p)
            if len(self._rows) < MAX_VERDICT_ROWS:
                self._rows.append(row)
            if problem:
                self._problem_rows.append(row)
        if p["path"]:               # (an ID whose every event the tracer lost has none: a
            self._paths.add(p)      # flood's 65k of them cost ~0.1 s of the stop otherwise)
        self._summary.add(p)
        if p["verdict"] == "delivered" and p["path"] and len(self._deliver_at) < 64:
            self._deliver_at.add(p["path"][-1]["hook"])
        if p["verdict"] == "dropped" and len(p["path"]) > 1:
            d, path = p["drop"], p["path"]
            i = next((k for k in range(len(path) - 1, 0, -1)
                      if path[k]["hook"] in analysis.DROP_HOOKS), len(path) - 1)
            at = self._drop_from.setdefault((d["reason"], d["location"], d["netns"]), {})
            before = analysis.stage(path[i - 1])
            at[before] = at.get(before, 0) + 1

    def _verdicts(self, count):
        """(title, rows) of the verdict table."""
        v = self._summary.result()["verdicts"]
        problems = count - v.get("delivered", 0)
        if count <= MAX_VERDICT_ROWS:
            return "verdicts", self._rows
        shown = self._problem_rows
        if len(shown) < problems:
            return ("verdicts (a sample: showing %d of %d not delivered, the first %d and "
                    "the first %d of each drop point or last sighting; %d packets in all; "
                    "all in --json)" % (len(shown), problems, MAX_VERDICT_ROWS,
                                        sample.PER_GROUP, count)), shown
        return "verdicts (%d of %d packets; all in --json)" % (len(shown), count), shown

    def _notes(self, end):
        notes = list(end.get("warnings", []))
        if end.get("duplicate_ids"):
            n = end["duplicate_ids"]
            note = DUPLICATES_NOTE % (n, "" if n == 1 else "s")
            if end.get("duplicate_ids_at_least"):
                note = note.replace(": %d" % n, ": at least %d" % n, 1)
            notes.append(note)
        if end.get("unreachable"):
            notes.append("%d hook firings saw a matching packet whose ID was out of reach "
                         "(not in the linear skb data)"
                         % end["unreachable"])
        return notes

    def data(self, meta=None, end=None):
        """What the report shows, as data (output/html.py draws it): summary (counts by
        verdict, drop and lost groups), funnel, segments, latencies(a, b), verdicts (title,
        rows), drop_from, deliver_hooks, coverage, lost_events, notes."""
        meta, end = meta or {}, end or {}
        s = self._summary.result()
        if end.get("streamed_delivered"):
            s["packets"] += end["streamed_delivered"]
            s["verdicts"]["delivered"] += end["streamed_delivered"]
        notes = self._notes(end)
        if end.get("lost"):
            notes.insert(0, "%d events lost by the tracer (ring buffer full: raise "
                            "ringbuf_pages)" % end["lost"])
        return {"summary": s, "funnel": self._paths.funnel(), "segments": self._paths.segments(),
                "latencies": self._paths.latencies,
                "latency_counts": self._paths.latency_counts,
                "verdicts": self._verdicts(self._summary.packets) if self._summary.packets
                else ("verdicts", []),
                "drop_from": self._drop_from, "deliver_hooks": self._deliver_at,
                "coverage": meta.get("coverage") or [],
                "lost_events": end.get("lost", 0), "notes": notes}

    def render(self, meta=None, end=None):
        """The report text of the packets added (render_report's `meta` and `end`)."""
        meta, end = meta or {}, end or {}
        count = self._summary.packets
        sections = []
        if meta.get("coverage"):
            sections.append(("coverage", render_coverage(meta["coverage"])))
        if not count:
            sections.append(("packets", "no matching packets seen"))
        else:
            n = self._timeline_max
            if n:
                title = "timeline" if count <= n else \
                    "timeline (first %d of %d packets; see --timeline)" % (n, count)
                sections.append((title, render_timeline(self._timeline, self._t0)))
            title, shown = self._verdicts(count)
            sections.append((title, _verdict_table(shown)))
            sections.append(("per-hop latency",
                             analysis.format_segments(self._paths.segments())))
            sections.append(("stage funnel", analysis.format_funnel(self._paths.funnel())))
        sections.append(("summary", _render_summary(
            self._summary.result(), end.get("lost", 0),
            streamed_delivered=end.get("streamed_delivered", 0))))
        notes = self._notes(end)
        if notes:
            sections.append(("notes", "\n".join(notes)))
        return "\n\n".join("== %s ==\n%s" % s for s in sections)


def write_json(packets, fh):
    """One JSON object per packet, one per line (events/schema.py)."""
    schema.write_packets(packets, fh)
