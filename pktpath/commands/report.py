"""`run.py report FILE [FILE ...] [--json OUT] [--timeline N]`: the report of recordings, no root.

Several files (e.g. one per VXLAN host) are merged by concatenating their events; netns names,
coverage, lost-event counters and warnings are merged too.
"""
import os
import sys

from pktpath.output import drops
from pktpath.process import merge
from pktpath.process import reconstruct
from pktpath.output import report
from pktpath.errors import UserError
from pktpath.events.recording import NO_END, scan_recording


def add_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s) made with --record")
    p.add_argument("--json", metavar="OUT", help="write per-packet verdicts as JSON Lines "
                                                 "('-' = stdout, instead of the report)")
    p.add_argument("--timeline", type=int, default=50, metavar="N",
                   help="show the timeline of the first N packets (default 50; 0 = none)")


def load(paths):
    """(events, meta, end) merged over the recordings `paths`."""
    events = []
    meta, end = _load(paths, events.append)
    if len(paths) > 1:
        end["warnings"] += merge.correct_clocks(events)
    return events, meta, end


def load_store(paths):
    """(store, meta, end): load() with the events in a reconstruct.EventStore, which holds a
    million events in a few hundred MB where their dicts would take gigabytes."""
    store = reconstruct.EventStore()
    if len(paths) > 1:  # merging shifts times by causality, on dicts: small two-host recordings
        events, meta, end = load(paths)
        for ev in events:
            store.add(ev)
        return store, meta, end
    meta, end = _load(paths, store.add)
    return store, meta, end


def _load(paths, on_event):
    """(meta, end) merged over the recordings `paths`; `on_event` gets every event (placed on
    its host's wall clock when there are several recordings)."""
    names, coverage, lost_ids = {}, [], set()
    end = {"lost": 0, "unreachable": 0, "warnings": []}
    for path in paths:
        if len(paths) > 1:
            evs = []
            m, e = scan_recording(path, evs.append)
            for ev in merge.to_wall(m, evs):
                on_event(ev)
        else:
            m, e = scan_recording(path, on_event)
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
    end.update(netns_names=names, lost_ids=sorted(lost_ids))
    return {"coverage": coverage, "netns_names": names}, end


def _write_json(packets, out):
    """Write `packets` (an iterable, consumed as it is written) as JSON Lines to the file `out`."""
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
    store, meta, end = load_store(args.files)
    # one packet at a time, in ID order: to the JSON and the report, never all held at once
    packets = reconstruct.mark_incomplete_sorted(store.packets(meta["netns_names"]),
                                                 end["lost_ids"])
    if args.json == "-":
        report.write_json(packets, sys.stdout)
        return 0
    builder, stacked = report.ReportBuilder(args.timeline), []
    packets = _reported(packets, builder, stacked)
    if args.json:
        _write_json(packets, args.json)
    else:
        for _ in packets:
            pass
    print(builder.render(meta, end))
    stacks = drops.stacks_section(stacked)
    if stacks:  # recorded with --stack
        print("\n== drop stacks ==\n" + stacks)
    return 0


def _reported(packets, builder, stacked):
    """`packets`, each added to `builder` on the way; the drop stacks go to `stacked` (as the
    little of a packet that drops.stacks_section reads)."""
    for p in packets:
        builder.add(p)
        stack = (p.get("drop") or {}).get("stack")
        if stack:
            stacked.append({"id": p["id"], "drop": {"stack": stack}})
        yield p
