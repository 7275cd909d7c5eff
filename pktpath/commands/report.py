"""`run.py report FILE [FILE ...] [--json OUT] [--timeline N]`: the report of recordings, no root.

Several files (e.g. one per VXLAN host) are merged by concatenating their events; netns names,
coverage, lost-event counters and warnings are merged too. The packets go through the same
finishing policy and sinks as a live trace (process/pipeline.py): the same run gives the same
report both ways. This module does arguments and wiring only.
"""
import sys

from pktpath.config import cmdline_number
from pktpath.errors import UserError
from pktpath.output import drops, jsonfile, report, sinks
from pktpath.process import pipeline


def add_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s) made with --record")
    p.add_argument("--json", metavar="OUT", help="write per-packet verdicts as JSON Lines "
                                                 "('-' = stdout, instead of the report)")
    p.add_argument("--html", metavar="OUT", help="also write the report as one self-contained "
                   "HTML page")
    p.add_argument("--timeline", type=cmdline_number("timeline", lo=0, integer=True), default=50, metavar="N",
                   help="show the timeline of the first N packets (default 50; 0 = none)")


def run(args):
    args.html = getattr(args, "html", None)  # (callers building args by hand)
    if args.timeline < 0:
        raise UserError("--timeline must be 0 or more, got %d" % args.timeline)
    from pktpath.output import dropmonitor as dropsmod
    if dropsmod.is_drops_recording(args.files[0]):
        if len(args.files) > 1:
            raise UserError("a drops recording is reported on its own")
        out = jsonfile.open_json(args.json if args.json != "-" else None)
        write = (lambda text: None) if args.json == "-" else print
        mon = dropsmod.replay(args.files[0], write,
                              json_out=sys.stdout if args.json == "-" else out)
        jsonfile.close_json(out, args.json)
        if args.html:
            from pktpath.output import html
            if mon.final is None:
                raise UserError("%s: no end line: no HTML page without the run's summary"
                                % args.files[0])
            html.write(args.html, html.render_drops(mon.final))
        return 0
    # one packet at a time, in ID order: to the JSON and the report, never all held at once
    packets, meta, end = pipeline.recorded(args.files)
    if args.json == "-" and not args.html:
        report.write_json(packets, sys.stdout)
        return 0
    if args.json == "-":  # the JSON to stdout and the page, no text report
        sinks.emit(packets, meta, end, sys.stdout, args.timeline, html=args.html)
        return 0
    out = jsonfile.open_json(args.json)
    try:
        text, stacked = sinks.emit(packets, meta, end, out, args.timeline, html=args.html)
        jsonfile.close_json(out, args.json)
    except OSError as e:
        raise UserError("cannot write --json %s: %s" % (args.json, e.strerror)) from None
    print(text)
    stacks = drops.stacks_section(stacked)
    if stacks:  # recorded with --stack
        print("\n== drop stacks ==\n" + stacks)
    return 0
