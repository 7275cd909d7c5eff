"""`run.py report FILE [FILE ...] [--json OUT] [--timeline N]`: the report of recordings, no root.

Several files (e.g. one per VXLAN host) are merged by concatenating their events; netns names,
coverage, lost-event counters and warnings are merged too.
"""
import os
import sys

from pktpath import dropwatch, merge, reconstruct, report
from pktpath.errors import UserError
from pktpath.recording import NO_END, read_recording


def add_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s) made with --record")
    p.add_argument("--json", metavar="OUT", help="write per-packet verdicts as JSON Lines "
                                                 "('-' = stdout, instead of the report)")
    p.add_argument("--timeline", type=int, default=50, metavar="N",
                   help="show the timeline of the first N packets (default 50; 0 = none)")


def load(paths):
    """(events, meta, end) merged over the recordings `paths`."""
    events, names, coverage, lost_ids = [], {}, [], set()
    end = {"lost": 0, "unreachable": 0, "warnings": []}
    for path in paths:
        m, evs, e = read_recording(path)
        if len(paths) > 1:
            merge.to_wall(m, evs)
        events.extend(evs)
        names.update(m.get("netns_names") or {})
        if e is None:
            e = {"warnings": [NO_END % path]}
        names.update(e.get("netns_names") or {})
        for key in ("lost", "unreachable"):
            end[key] += e.get(key) or 0
        end["warnings"] += e.get("warnings", [])
        lost_ids.update(e.get("lost_ids") or ())
        host = m.get("host") if len(paths) > 1 else None
        coverage += [dict(c, host=host) if host else c for c in m.get("coverage") or ()]
    if len(paths) > 1:
        end["warnings"] += merge.correct_clocks(events)
    end.update(netns_names=names, lost_ids=sorted(lost_ids))
    return events, {"coverage": coverage, "netns_names": names}, end


def _write_json(packets, out):
    if out == "-":
        report.write_json(packets, sys.stdout)
        return
    # a device or fifo (/dev/null) is written in place: never rename over it
    tmp = out if os.path.exists(out) and not os.path.isfile(out) else out + ".tmp"
    try:
        with open(tmp, "w") as fh:
            report.write_json(packets, fh)
        if tmp != out:
            os.replace(tmp, out)
    except OSError as e:
        raise UserError("cannot write --json %s: %s" % (out, e.strerror)) from None


def run(args):
    if args.timeline < 0:
        raise UserError("--timeline must be 0 or more, got %d" % args.timeline)
    events, meta, end = load(args.files)
    packets = reconstruct.mark_incomplete(
        reconstruct.build_packets(events, meta["netns_names"]), end["lost_ids"])
    if args.json:
        _write_json(packets, args.json)
    if args.json != "-":
        print(report.render_report(packets, meta, end, max_timeline_packets=args.timeline))
        stacks = dropwatch.stacks_section(packets)
        if stacks:  # recorded with --stack
            print("\n== drop stacks ==\n" + stacks)
    return 0
