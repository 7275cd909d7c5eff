"""`--html FILE`: the report as one self-contained HTML page (inline CSS and SVG, no scripts,
no fonts, nothing fetched), built from the data the text report is built from
(output/report.ReportBuilder.data(), output/dropmonitor.DropMonitor.final) so a live trace and
`report FILE` give the same page. Pure: every string from the packets is escaped here.

The trace page: a picture of the path (namespaces as boxes, hook@device stages in path order,
edges labelled with packets and median latency, drop points with reason and count, lost packets
at their last sighting), then the funnel, per-segment latency histograms, the verdict table and
the summary. The drops page: the drop table by location/reason/namespace and the top flows.
"""
import html
import re

from pktpath.errors import UserError
from pktpath.process import analysis

_STAGE = re.compile(r"^(?P<hook>[^@/]+)(?:@(?P<dev>[^/]*))?/(?P<ns>.*?)(?: \[(?P<host>[^\]]*)\])?$")

CSS = """
body{font-family:sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right}
.counts span{display:inline-block;margin-right:16px;font-size:15px}
.delivered{color:#1a7f37}.dropped{color:#c62828}.lost{color:#b26a00}.incomplete{color:#666}
.bar{background:#4a78c2;height:12px;display:inline-block}
.hist{display:inline-block;margin:0 16px 16px 0;vertical-align:top;font-size:12px}
.notes li{margin:3px 0}svg text{font-family:sans-serif}
"""

MAX_VERDICT_ROWS_HTML = 1000
MAX_HISTOGRAMS = 12


def esc(value):
    """A value as HTML text (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def parse_stage(s):
    """analysis.stage() string -> {hook, dev, ns, host} (dev, host None when absent)."""
    m = _STAGE.match(s)
    if not m:
        return {"hook": s, "dev": None, "ns": "", "host": None}
    return m.groupdict()


def _ns_label(netns, name):
    if netns is None:
        return ""
    return "%s (%s)" % (name, netns) if name else str(netns)


def _table(headers, rows, numeric=(), cls=None):
    out = ['<table%s><tr>' % (' class="%s"' % cls if cls else "")]
    out += ["<th>%s</th>" % esc(h) for h in headers]
    out.append("</tr>")
    for r in rows:
        out.append("<tr>" + "".join('<td%s>%s</td>' % (' class="n"' if i in numeric else "",
                                                       esc(c)) for i, c in enumerate(r))
                   + "</tr>")
    out.append("</table>")
    return "".join(out)


def _page(title, body):
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>%s</title><style>%s</style></head><body>\n%s\n</body></html>\n"
            % (esc(title), CSS, body))


def check_path(path):
    """Before a trace starts: UserError unless `path`'s directory exists and is writable (the
    page is written once the report is done; a trace must not end with nowhere to put it)."""
    import os
    if path is None:
        return
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d) or not os.access(d, os.W_OK) or os.path.isdir(path):
        raise UserError("cannot write --html %s: %s" % (
            path, "is a directory" if os.path.isdir(path) else "no writable directory %s" % d))


def write(path, text):
    """Write the page (UserError when it cannot be written)."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UserError("cannot write --html %s: %s" % (path, e.strerror)) from None


# ---- the path picture ----

ROW = 46          # vertical distance between stages
BOX_HEAD = 30     # namespace box title
NODE_W, NODE_H = 250, 30
BOX_X, NODE_X = 20, 50
MARK_X, MARK_W, MARK_H = 410, 265, 38


def _us(v):
    return "%.1f" % v if v < 1000 else "%.0f" % v


def _svg_text(x, y, text, size=12, weight="normal", fill="#222", anchor="start", cls=""):
    return ('<text x="%d" y="%d" font-size="%d" font-weight="%s" fill="%s" text-anchor="%s"%s>'
            '%s</text>' % (x, y, size, weight, fill, anchor,
                           ' class="%s"' % cls if cls else "", esc(text)))


def path_picture(data):
    """Inline SVG of the path (see the module doc); "" when no stage was seen."""
    rows = data["funnel"][0]
    if not rows:
        return ""
    stages = [s for s, _n in rows]
    info = [parse_stage(s) for s in stages]
    segs = {(g["from"], g["to"]): g for g in data["segments"]}
    index = {s: i for i, s in enumerate(stages)}

    # y of each stage: a box title before each run of one namespace (and host)
    ys, boxes, y = [], [], 10
    for i, st in enumerate(info):
        key = (st["ns"], st["host"])
        if not boxes or boxes[-1]["key"] != key:
            if boxes:
                y += 14
            boxes.append({"key": key, "first": i, "top": y})
            y += BOX_HEAD
        ys.append(y)
        boxes[-1]["last"] = i
        y += ROW
    height = y + 10

    markers = {}   # stage index -> [(kind, lines, count, attrs)]
    for g in data["summary"]["drops"]:
        i = _drop_stage(g, data, index, info)
        markers.setdefault(i, []).append(("drop", [
            "\u2715 %s" % (g["reason"] or "dropped"),
            "%d dropped at %s" % (g["count"], g["location"] or "?")], g))
    for g in data["summary"]["lost"]:
        i = _lost_stage(g, index, info)
        markers.setdefault(i, []).append(("lost", [
            "? %d lost" % g["count"], "last seen at %s%s" % (
                g["hook"] or "-", "@%s" % g["dev"] if g["dev"] else "")], g))
    deliver = {c["hook"] for c in data.get("coverage") or () if c.get("kind") == "deliver"}
    deliver |= set(data.get("deliver_hooks") or ())
    for i, st in enumerate(info):
        if st["hook"] in deliver:
            markers.setdefault(i, []).insert(0, ("deliver", [
                "\u2713 %d delivered" % rows[i][1], "seen at %s" % st["hook"]],
                {"netns": st["ns"], "netns_name": None, "count": rows[i][1]}))
    width = MARK_X + 20 + MARK_W * max([len(m) for m in markers.values()] or [0])
    width = max(width, MARK_X + 40)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" id="path" width="%d" height="%d" '
           'viewBox="0 0 %d %d" role="img">' % (width, height, width, height),
           '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
           '</defs>']
    for b in boxes:
        top = b["top"]
        bottom = ys[b["last"]] + NODE_H + 8
        ns, host = b["key"]
        out.append('<g class="ns" data-ns="%s"><rect x="%d" y="%d" width="%d" height="%d" rx="8" '
                   'fill="#eef3fb" stroke="#7a98c9"/>' % (esc(ns), BOX_X, top, NODE_W + 70,
                                                         bottom - top))
        out.append(_svg_text(BOX_X + NODE_W + 60, top + 19, "netns %s%s" % (
            ns, " [%s]" % host if host else ""), 13, "bold", "#23406e", "end") + "</g>")
    reach = dict(rows)
    for i, (s, st) in enumerate(zip(stages, info)):
        y0 = ys[i]
        if i + 1 < len(stages):
            seg = segs.get((s, stages[i + 1]))
            y1 = ys[i + 1]
            out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#555" stroke-width="1.5" '
                       'marker-end="url(#arr)"/>' % (NODE_X + 30, y0 + NODE_H, NODE_X + 30, y1))
            label = ("%d pkts \u00b7 p50 %s \u00b5s" % (seg["count"], _us(seg["p50_us"]))
                     if seg else "%d pkts" % reach[stages[i + 1]])
            out.append('<g class="edge" data-from="%s" data-to="%s" data-count="%d">%s</g>' % (
                esc(s), esc(stages[i + 1]), seg["count"] if seg else reach[stages[i + 1]],
                _svg_text(NODE_X + 40, (y0 + NODE_H + y1) // 2 + 5 if y1 - y0 == ROW else
                          y0 + NODE_H + 23, label, 11, fill="#444")))
        out.append('<g class="stage" data-stage="%s" data-packets="%d"><rect x="%d" y="%d" '
                   'width="%d" height="%d" rx="4" fill="#fff" stroke="#4a78c2"/>%s</g>' % (
                       esc(s), reach[s], NODE_X, y0, NODE_W, NODE_H,
                       _svg_text(NODE_X + 8, y0 + 20, "%s%s" % (
                           "%s \u00b7 " % st["dev"] if st["dev"] else "", st["hook"]), 12)))
        for k, (kind, lines, g) in enumerate(markers.get(i, ())):
            x = MARK_X + k * MARK_W
            fill, stroke = {"drop": ("#fdecea", "#c62828"), "lost": ("#fff4e0", "#b26a00"),
                            "deliver": ("#e8f5e9", "#1a7f37")}[kind]
            attrs = ('data-reason="%s" data-location="%s"' % (esc(g["reason"]), esc(g["location"]))
                     if kind == "drop" else 'data-hook="%s" data-dev="%s"' % (esc(g["hook"]),
                                                                              esc(g["dev"]))
                     if kind == "lost" else "")
            out.append('<g class="%s" %s data-netns="%s" data-count="%d">'
                       '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-dasharray="4 3"/>'
                       '<rect x="%d" y="%d" width="%d" height="%d" rx="4" fill="%s" stroke="%s"/>'
                       '%s%s</g>' % (
                           kind, attrs, esc(_ns_label(g["netns"], g["netns_name"])), g["count"],
                           NODE_X + NODE_W, y0 + NODE_H // 2, x, y0 + NODE_H // 2, stroke,
                           x, y0 - 4, MARK_W - 12, MARK_H, fill, stroke,
                           _svg_text(x + 8, y0 + 11, lines[0], 12, "bold", stroke),
                           _svg_text(x + 8, y0 + 27, lines[1], 11, fill="#333")))
    out.append("</svg>")
    return "".join(out)


def _ns_of(g):
    return str(g["netns_name"] or g["netns"])


def _drop_stage(g, data, index, info):
    """The stage a drop group is drawn at: the stage before its kfree_skb, exact when the
    report builder saw the packets (data["drop_from"]), else the commonest one in its
    namespace, else the last stage of its namespace, else the last stage."""
    key = (g["reason"], g["location"], g["netns"])
    before = data.get("drop_from", {}).get(key)
    if before:
        for s, _n in sorted(before.items(), key=lambda kv: -kv[1]):
            if s in index:
                return index[s]
    ns = _ns_of(g)
    best = None
    for seg in data["segments"]:
        to = parse_stage(seg["to"])
        if to["hook"] == "kfree_skb" and to["ns"] == ns and seg["from"] in index:
            if best is None or seg["count"] > best["count"]:
                best = seg
    if best:
        return index[best["from"]]
    same = [i for i, st in enumerate(info) if st["ns"] == ns]
    return same[-1] if same else len(info) - 1


def _lost_stage(g, index, info):
    ns = _ns_of(g)
    for i, st in enumerate(info):
        if st["hook"] == g["hook"] and (st["dev"] or None) == (g["dev"] or None) and st["ns"] == ns:
            return i
    same = [i for i, st in enumerate(info) if st["ns"] == ns]
    return same[-1] if same else len(info) - 1


# ---- funnel and histograms ----

def funnel_table(funnel):
    rows, message = funnel
    if not rows:
        return "<p>no hops</p>"
    top = max(n for _s, n in rows) or 1
    out = ['<table id="funnel"><tr><th>#</th><th>STAGE</th><th>PACKETS</th><th></th></tr>']
    for i, (s, n) in enumerate(rows):
        out.append('<tr><td class="n">%d</td><td>%s</td><td class="n">%d</td><td>'
                   '<span class="bar" style="width:%dpx"></span></td></tr>'
                   % (i + 1, esc(s), n, max(1, int(200 * n / top))))
    out.append("</table>")
    if message:
        out.append('<p class="funnel-message">%s</p>' % esc(message))
    return "".join(out)


def buckets(values, weighted=False):
    """Log2 buckets of latencies (us): [(low, high, count)], low 0 for the first, empty ones
    between the first and last kept. `weighted`: values given as [(value, how many)]."""
    if not values:
        return []
    counts = {}
    for v in values:
        v, n = v if weighted else (v, 1)
        k = 0
        while (1 << k) < v and k < 40:
            k += 1
        counts[k] = counts.get(k, 0) + n
    lo, hi = min(counts), max(counts)
    return [(0 if k == 0 else 1 << (k - 1), 1 << k, counts.get(k, 0)) for k in range(lo, hi + 1)]


def histogram(seg, values, weighted=False):
    """One segment's latency histogram as inline SVG (log2 buckets in us); `weighted`: see
    buckets()."""
    bs = buckets(values, weighted)
    w, h, bw = 300, 110, max(8, min(30, 260 // max(1, len(bs))))
    top = max(c for _l, _h, c in bs) if bs else 1
    out = ['<div class="hist" data-from="%s" data-to="%s" data-count="%d">'
           % (esc(seg["from"]), esc(seg["to"]), seg["count"]),
           "<div><b>%s</b> \u2192 <b>%s</b></div>" % (esc(seg["from"]), esc(seg["to"])),
           "<div>%d pkts; p50 %s, p90 %s, p99 %s, max %s \u00b5s</div>" % (
               seg["count"], _us(seg["p50_us"]), _us(seg["p90_us"]), _us(seg["p99_us"]),
               _us(seg["max_us"])),
           '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">' % (w, h + 30)]
    for i, (lo, hi, c) in enumerate(bs):
        bh = int(h * c / top) if top else 0
        x = 10 + i * bw
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#4a78c2"><title>%s-%s '
                   '\u00b5s: %d</title></rect>' % (x, h - bh, bw - 2, bh, lo, hi, c))
        if i % max(1, len(bs) // 6) == 0:
            out.append(_svg_text(x, h + 14, "%s" % hi, 10, fill="#555"))
    out.append(_svg_text(10, h + 28, "\u00b5s (upper bound of each bucket, log2)", 10,
                         fill="#555"))
    out.append("</svg></div>")
    return "".join(out)


# ---- the pages ----

def _counts_line(summary):
    v = summary["verdicts"]
    parts = ['<span class="total">%d packets</span>' % summary["packets"]]
    for k in ("delivered", "dropped", "lost", "incomplete"):
        if k != "incomplete" or v.get(k):
            parts.append('<span class="%s" data-verdict="%s" data-count="%d">%d %s</span>'
                         % (k, k, v.get(k, 0), v.get(k, 0), k))
    return '<p class="counts">%s</p>' % "".join(parts)


def render_trace(data, title="pktpath report"):
    """The trace page of ReportBuilder.data()."""
    s = data["summary"]
    body = ["<h1>%s</h1>" % esc(title), _counts_line(s)]
    if not s["packets"]:
        body.append("<p>no matching packets seen</p>")
    picture = path_picture(data)
    if picture:
        body += ["<h2>path</h2>", '<div class="picture">%s</div>' % picture]
    if s["drops"]:
        body += ["<h2>drops</h2>", _table(
            ["DROP REASON", "LOCATION", "NAMESPACE", "PACKETS", "IDS"],
            [[g["reason"], g["location"], _ns_label(g["netns"], g["netns_name"]), g["count"],
              _ids(g)] for g in s["drops"]], numeric=(3,), cls="drops")]
    if s["lost"]:
        body += ["<h2>lost</h2>", _table(
            ["LOST AFTER", "DEVICE", "NAMESPACE", "PACKETS", "IDS"],
            [[g["hook"], g["dev"], _ns_label(g["netns"], g["netns_name"]), g["count"], _ids(g)]
             for g in s["lost"]], numeric=(3,), cls="lostgroups")]
    if data["funnel"][0]:
        body += ["<h2>stage funnel</h2>", funnel_table(data["funnel"])]
    if data["segments"]:
        segs = data["segments"][:MAX_HISTOGRAMS]
        more = len(data["segments"]) - len(segs)
        body.append("<h2>per-hop latency</h2>")
        counted = data.get("latency_counts")
        body.append('<div id="histograms">%s</div>' % "".join(
            histogram(g, counted(g["from"], g["to"]), True) if counted else
            histogram(g, data["latencies"](g["from"], g["to"])) for g in segs))
        if more > 0:
            body.append("<p>(+%d more segments)</p>" % more)
        if any(g.get("approx") for g in segs):
            body.append("<p>%s</p>" % esc(analysis.APPROX_NOTE.strip("()")))
    if data["verdicts"][1]:
        body += ["<h2>%s</h2>" % esc(data["verdicts"][0]), _table(
            ["ID", "VERDICT", "HOPS", "WHERE", "REASON", "NAMESPACE", "DURATION us"],
            data["verdicts"][1][:MAX_VERDICT_ROWS_HTML], numeric=(0, 2, 6), cls="verdicts")]
    if data.get("coverage"):
        body += ["<h2>coverage</h2>", _table(
            ["HOOK", "METHOD", "STATUS", "WHY"],
            [[c["hook"], c.get("method") or "-", c["status"], c.get("why") or ""]
             for c in data["coverage"]])]
    if data.get("notes"):
        body += ['<h2>notes</h2><ul class="notes">%s</ul>'
                 % "".join("<li>%s</li>" % esc(n) for n in data["notes"])]
    return _page(title, "\n".join(body))


def _ids(group):
    ids = ", ".join(str(i) for i in group["ids"])
    return ids + ", ..." if group["count"] > len(group["ids"]) else ids


def render_drops(final, title="pktpath drops"):
    """The drops page of DropMonitor.final: {counts: [(location, reason, netns, n)], flows,
    netns_names, lost, duration_s, shown}."""
    names = final["netns_names"]

    def ns(netns):
        name = names.get(str(netns)) or names.get(netns)
        return _ns_label(netns, name)
    counts = sorted(final["counts"], key=lambda c: (-c[3], str(c[0]), str(c[1])))
    total = sum(c[3] for c in counts)
    shown = sum(final.get("shown", {}).values())
    body = ["<h1>%s</h1>" % esc(title),
            '<p class="counts"><span class="total" data-count="%d">%d drops counted (exact)</span>'
            '<span>%d shown in detail</span>%s%s</p>' % (
                total, total, shown,
                "<span>%d details lost (ring buffer full)</span>" % final["lost"]
                if final.get("lost") else "",
                "<span>%s s</span>" % esc(final["duration_s"]) if final.get("duration_s")
                else "")]
    by_reason = {}
    for _loc, reason, _netns, n in counts:
        by_reason[reason] = by_reason.get(reason, 0) + n
    if by_reason:
        top = max(by_reason.values())
        body.append("<h2>drops by reason</h2>")
        body.append('<table id="by-reason"><tr><th>REASON</th><th>DROPS</th><th></th></tr>%s'
                    "</table>" % "".join(
                        '<tr><td>%s</td><td class="n">%d</td><td><span class="bar" '
                        'style="width:%dpx;background:#c62828"></span></td></tr>'
                        % (esc(r), n, max(1, int(200 * n / top)))
                        for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1])))
    body.append("<h2>drops by location, reason and namespace</h2>")
    body.append('<table class="droptable"><tr><th>DROPS</th><th>LOCATION</th><th>REASON</th>'
                '<th>NAMESPACE</th></tr>%s</table>' % "".join(
                    '<tr class="drop" data-reason="%s" data-location="%s" data-count="%d">'
                    '<td class="n">%d</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                    % (esc(r), esc(loc), n, n, esc(loc), esc(r), esc(ns(netns)))
                    for loc, r, netns, n in counts) if counts else "<p>no drops</p>")
    merged = {}
    for f in final["flows"]:
        k = (f["proto"], f["src"], f["dst"], f["reason"], f["netns"], f["tunnel"], f["vni"])
        merged[k] = merged.get(k, 0) + f["drops"]
    body.append("<h2>top flows dropped</h2>")
    if merged:
        body.append(_table(
            ["DROPS", "PROTO", "SOURCE", "DESTINATION", "TUNNEL", "REASON", "NAMESPACE"],
            [[n, proto, src or "-", dst or "-", "%s vni %s" % (tun, vni) if tun else "", reason,
              ns(netns)] for (proto, src, dst, reason, netns, tun, vni), n in sorted(
                  merged.items(), key=lambda kv: (-kv[1], str(kv[0])))[:20]],
            numeric=(0,), cls="flows"))
    else:
        body.append("<p>none</p>")
    return _page(title, "\n".join(body))
