"""The sinks of the one pipeline (process/pipeline.py): its finished packets to the --json
output, the report (text, HTML) and the drop stacks section, the same for a live trace and for
`report` of a recording."""
from pktpath.events import schema
from pktpath.output import report


def emit(packets, meta, end, json_out=None, timeline=50, aggregate=None, html=None):
    """Each packet (any iterable, consumed once) to `json_out` (if any) and to the report, on
    top of the packets counted in `aggregate` (a live trace's sample.Aggregate); returns
    (report text, the packets with a drop stack, reduced to what the stacks section reads).
    `html`: a path to write the HTML page of the same report to (output/html.py)."""
    builder, stacked = report.ReportBuilder(timeline, aggregate), []
    line = schema.packet_line
    write = json_out.write if json_out is not None else None
    for p in packets:
        builder.add(p)
        stack = (p.get("drop") or {}).get("stack")
        if stack:
            stacked.append({"id": p["id"], "drop": {"stack": stack}})
        if write is not None:
            write(line(p))
    text = builder.render(meta, end)
    if html:
        from pktpath.output import html as htmlmod
        htmlmod.write(html, htmlmod.render_trace(builder.data(meta, end)))
    return text, stacked


def live_report(pipe, counters, lost_ids, meta, timeline=50, html=None, by=None):
    """(packets, report text) of a finished live trace (a pipeline.LivePipeline): its end(),
    then the sinks (the packets go to its --json output, which the caller closes; `html`: the
    page's path, or None; `by`: see LivePipeline.end)."""
    packets, end = pipe.end(counters, lost_ids, meta.get("coverage"), by)
    return packets, emit(packets, meta, end, pipe.json_out, timeline, pipe.stream.agg,
                         html)[0]
