"""The main job: `run.py -c CONFIG [--duration S] [--json F] [--record F] [-- COMMAND ...]`.

parse args -> config -> attach plan (collect/plan.py) -> load/attach (collect/tracer.py) -> poll
until Ctrl-C/SIGTERM/duration/COMMAND exit (process/session.py) -> detach -> finish and report
(process/pipeline.py, the same pipeline `report` uses). Probes are always detached before the
report is printed, and an interrupted run still prints the report of what it saw. This module
does arguments and wiring only.
"""
import argparse
import gc
import json
import os
import socket
import sys
import time

from pktpath import config as configmod
from pktpath.collect import plan as planmod
from pktpath.events import recording
from pktpath.kernel import symbols
from pktpath.kernel.btf import kernel_btf
from pktpath.output import drops, jsonfile, progress, sinks
from pktpath.process import pipeline, session
from pktpath.errors import UserError

num = configmod.cmdline_number


def add_arguments(p):
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config (see configs/vxlan.yaml)")
    f = p.add_argument_group("filter (overrides the config)")
    f.add_argument("--shost", help="outer (underlay) source IPv4 or IPv6")
    f.add_argument("--dhost", help="outer (underlay) destination IPv4 or IPv6")
    f.add_argument("--sip", help="inner (overlay) source IPv4 or IPv6")
    f.add_argument("--dip", help="inner (overlay) destination IPv4 or IPv6")
    f.add_argument("--proto", choices=("udp", "tcp", "any"),
                   help="transport protocol traced (default udp; any: UDP and TCP)")
    f.add_argument("--port", metavar="PORT",
                   help="destination port (UDP or TCP) of the traced (inner) traffic")
    f.add_argument("--udp-port", metavar="PORT", help="old name of --port")
    f.add_argument("--vxlan-port", metavar="PORT",
                   help="VXLAN UDP port (4789; flannel 8472; 0: do not parse VXLAN)")
    f.add_argument("--geneve-port", metavar="PORT",
                   help="Geneve UDP port (6081; 0: do not parse Geneve)")
    f.add_argument("--id-offset", metavar="BYTES", help="packet ID offset in the payload")
    f.add_argument("--id-byteorder", choices=("big", "little"), help="packet ID byte order")
    f.add_argument("--id-from", choices=("payload", "headers"),
                   help="packet key: the ID in the payload (default), or a hash of header fields "
                        "that do not change on the way (any traffic, no ID needed)")
    f.add_argument("--netns", metavar="NS1,NS2",
                   help="only events in these namespaces (ip netns names or inodes)")
    f.add_argument("--hooks", metavar="H1,H2", help="comma-separated hook names (configs/hooks.yaml), "
                   "or the sets `default` and `light` (transmit, delivery and drops only: cheapest)")
    o = p.add_argument_group("run and output")
    o.add_argument("-d", "--duration", type=num("duration", above=0), metavar="S", help="stop after S seconds")
    o.add_argument("--json", metavar="FILE", help="write per-packet verdicts as JSON Lines")
    o.add_argument("--record", metavar="FILE", help="write raw events as JSON Lines (see `report`)")
    o.add_argument("--html", metavar="FILE", help="also write the report as one self-contained "
                   "HTML page (a picture of the path, funnel, latency histograms, verdicts)")
    o.add_argument("--pcap", metavar="FILE",
                   help="also write the traced packets' headers at each hop (first 128 bytes) "
                        "as pcap-ng, one interface per device@netns, each packet's comment "
                        "giving hook, ID and verdict; written when the trace ends")
    o.add_argument("--pcap-packets", type=num("pcap_packets", lo=1, integer=True), default=1000,
                   metavar="N", help="--pcap: keep the header copies of the first N packets "
                   "(the others are counted; default 1000)")
    o.add_argument("--ready-file", metavar="PATH", help="create PATH once every probe is attached")
    o.add_argument("--timeline", type=num("timeline", lo=0, integer=True), default=50, metavar="N",
                   help="show the timeline of the first N packets (default 50; 0 = none)")
    o.add_argument("--grace", type=num("grace", lo=0), default=0.5, metavar="S",
                   help="after COMMAND exits, keep draining events for S seconds (default 0.5)")
    o.add_argument("--host", help="label for this host in recordings (default: hostname)")
    o.add_argument("--mode", choices=("summary", "events"), default="summary",
                   help="summary (default): the kernel assembles each packet's path and emits it "
                        "once; events: one event per hook (more detail per hop, more overhead)")
    o.add_argument("--lost-after", type=num("lost_after", above=0), default=2.0, metavar="S",
                   help="summary mode: a packet unseen for S seconds is reported lost (default 2)")
    o.add_argument("--keep-delivered", type=num("keep_delivered", lo=0, integer=True), default=10000, metavar="N",
                   help="keep the first N delivered packets for the report; later ones go "
                        "to --json only and are counted (memory stays bounded; default 10000)")
    o.add_argument("--stack", action="store_true",
                   help="record the kernel stack at each drop of a traced packet")
    o.add_argument("--drops", choices=("traced", "all"), default="traced",
                   help="'all' also counts every drop on the machine, by location and reason")
    o.add_argument("--interval", type=num("interval", above=0), default=5.0, metavar="S",
                   help="with --drops all, print the drop counts every S seconds (default 5)")
    o.add_argument("--metrics", metavar="[ADDR:]PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics while tracing "
                        "(ADDR default: all interfaces; see README, Watching a fleet)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    o.add_argument("--no-frags", action="store_true",
                   help="do not read packet IDs from page fragments (paged/GSO payloads are then "
                        "only counted as out of reach)")
    o.add_argument("--no-cache", action="store_true",
                   help="compile the BPF program even if this exact program was compiled before "
                        "(compiled programs are kept in %s)" % "/var/cache/pktpath/images")
    o.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)  # print the C, exit
    o.add_argument("--stats-file", metavar="FILE", help=argparse.SUPPRESS)  # for bench/


def overrides_from(args):
    ov = {k: getattr(args, k, None) for k in (
        "shost", "dhost", "sip", "dip", "proto", "port", "udp_port", "vxlan_port", "geneve_port",
        "id_offset", "id_byteorder", "id_from", "host")}
    if args.hooks:
        ov["hooks"] = [h.strip() for h in args.hooks.split(",") if h.strip()]
    if getattr(args, "netns", None):
        ov["netns"] = [int(n) if n.strip().isdigit() else n.strip()
                       for n in args.netns.split(",") if n.strip()]
    return ov


def info(args, msg):
    if not args.quiet:
        print("pktpath: %s" % msg, file=sys.stderr, flush=True)


def run(args):
    if getattr(args, "html", None):
        from pktpath.output import html
        html.check_path(args.html)
    if getattr(args, "pcap", None):
        from pktpath.output import pcapng
        pcapng.check_path(args.pcap)
    if not getattr(args, "metrics", None) or args.ebpf:
        return _run(args, None)
    from pktpath.output import metrics as metricsmod
    return metricsmod.run_served(args.metrics, lambda m: _run(args, m),
                                 netns_names=session.netns_names,
                                 latency_budget=metricsmod.LATENCY_BUDGET)


def _run(args, metrics):
    cfg = configmod.load_config(args.config, overrides_from(args))
    from pktpath.events import records
    from pktpath.collect import tracer  # (tracer imports bcc lazily)
    btf, kallsyms = kernel_btf(), symbols.Kallsyms()
    plan = planmod.build_plan(cfg, btf, kallsyms)
    summary = args.mode == "summary"
    snaps = None
    if getattr(args, "pcap", None):
        from pktpath.process.snaps import SnapStore
        snaps = SnapStore(max_packets=args.pcap_packets)
    t = tracer.Tracer(cfg, plan, btf, stacks=args.stack, drops_all=args.drops == "all",
                      summary=summary, frags=not args.no_frags, kallsyms=kallsyms,
                      cache=not args.no_cache, on_snap=snaps.add if snaps else None)
    if args.ebpf:
        print("/* cflags: %s */" % " ".join(t.cflags))
        print(t.text)
        return 0
    if not any(h.attached for h in plan):
        raise UserError("no hook can be attached on this kernel: " + planmod.describe_coverage(
            [{"hook": h.name, "status": "skipped", "why": h.why} for h in plan]))
    tracer.check_privileges()
    lock = session.single_tracer_lock(cfg)  # noqa: F841  (held until the process exits)
    t_start = time.monotonic()

    host = cfg.host or args.host or socket.gethostname()
    rec = recording.RecordingWriter(args.record) if args.record else None
    json_out = jsonfile.open_json(args.json)
    decoder = records.PathDecoder([h.name for h in plan], symbols.drop_reasons(btf), kallsyms,
                                  key=cfg.id_from)
    child, stop = session.Child(), session.Stop()
    pipe = pipeline.LivePipeline(
        decoder, session.netns_names, summary=summary, json_out=json_out, rec=rec,
        only_netns=session.netns_filter(cfg.netns), keep_delivered=args.keep_delivered,
        stack=lambda sid: session.clean_stack([kallsyms(a) for a in t.stack(sid)]), idle=t.drain,
        metrics=metrics, tcp_keys=cfg.id_from == "headers" and cfg.proto != "udp",
        stopping=stop.stopping)
    interval_drops = drops.IntervalTable(kallsyms, decoder.reasons, session.netns_names)
    flush = pipe.flush

    status = progress.Status(lambda: progress.snapshot(pipe.stream, t.counters),
                             quiet=args.quiet)   # on a terminal only

    def on_drops(counts):
        if metrics is not None:
            _machine_drops(metrics, counts, kallsyms, decoder.reasons)
        status.clear()
        info(args, "drops in the last %gs, all traffic:\n%s" % (args.interval,
                                                                 interval_drops(counts)))
    if metrics is not None:
        metrics.decoder = decoder

        flushes = [0]

        def flush():
            pipe.flush()
            metrics.tick()
            flushes[0] += 1
            if flushes[0] % 4 == 0:     # the tracer's counters once a second
                metrics.set_counters(dict(t.counters(), shed=pipe.stream.shed))
                metrics.set_skipped(t.recursion_misses())
    marks = []
    with stop:
        try:
            coverage = t.start(pipe.on_record)
            if metrics is not None:
                metrics.set_coverage(coverage)
            meta, ready_s = _started(args, cfg, t, coverage, plan, host, rec, t_start)
            if args.command:
                child.start(args.command)
            info(args, "tracing while `%s` runs" % " ".join(args.command) if args.command else
                 "tracing%s; Ctrl-C to stop and print the report"
                 % (" for %gs" % args.duration if args.duration else ""))
            session.poll_loop(t, stop, child, pipe.on_record, status.wrap(flush), summary,
                              args.lost_after, args.duration, args.grace, args.interval, on_drops)
            status.clear()
            # the stop: from here to the report, no garbage collection (a full one takes tens of
            # ms with a flood's aggregates; nothing made here needs one) and a bounded read
            gc.disable()
            if stop.at is not None:     # PKTPATH_TIMES: "loop" is then signal -> loop left
                marks.append(("signal", stop.at))
            marks.append(("loop", time.monotonic()))
            since = stop.at or marks[-1][1]
            unread = session.drain(t, pipe.on_record, since=since)
            report_by = since + session.FOLD_BY_S
            marks.append(("drain+sweep", time.monotonic()))
            counters, lost_ids, drop_counts = t.counters(), t.lost_ids(), t.drop_counts()
            if unread:
                counters["unread"] = unread
            _recursion_misses(args, t, counters)
            pipe.settle()  # while drop stacks can still be read
            if metrics is not None:
                metrics.set_counters(dict(counters, shed=pipe.stream.shed))
                if t.drops_all:
                    _machine_drops(metrics, drop_counts, kallsyms, decoder.reasons)
            marks.append(("settle", time.monotonic()))
        finally:
            status.clear()
            t.close()
            child.terminate()   # (waited for after the report)
            if marks:
                marks.append(("close", time.monotonic()))
    if stop.reason:
        info(args, "stopped by %s" % stop.reason)
    if args.stats_file:
        _write_stats(args.stats_file, t, counters, pipe.events, ready_s)
    with session.Stop():  # the report of a finished trace is printed whole, signals or not
        packets, text = sinks.live_report(pipe, counters, lost_ids, meta, args.timeline,
                                          html=args.html, by=report_by)
        print(text)
        if args.stack:
            print("\n== drop stacks ==\n" + (drops.stacks_section(packets) or "none recorded"))
        if t.drops_all:
            print("\n== all drops on this machine (--drops all) ==\n" + drops.drop_table(
                drop_counts, kallsyms, decoder.reasons, session.netns_names()))
        sys.stdout.flush()
        if snaps is not None:
            _write_pcap(args, snaps, packets, plan, meta)
        marks.append(("report", time.monotonic()))
        if os.environ.get("PKTPATH_TIMES"):  # where the stop goes (bench, tests)
            print("pktpath: stop " + ", ".join("%s %.3fs" % (name, t1 - t0) for (_, t0), (
                name, t1) in zip(marks, marks[1:])) + "; %s to report %.3fs" % (
                    marks[0][0], marks[-1][1] - marks[0][1]), file=sys.stderr, flush=True)
        # the report first: the JSON of packets finished at the stop and not kept for the
        # report (a flood's last seconds) may take longer to write
        gc.enable()
        pipe.write_backlog()
        jsonfile.close_json(json_out, args.json)
        child.stop()
    return 0


def _write_pcap(args, snaps, packets, plan, meta):
    """--pcap: the header copies joined to the finished packets, written atomically."""
    from pktpath.output import pcapng
    clock = meta.get("clock") or {}
    st = pcapng.write(args.pcap, snaps, packets, [h.name for h in plan],
                      meta.get("netns_names") or session.netns_names(),
                      clock.get("wall_ns", 0) - clock.get("mono_ns", 0),
                      {h.name for h in plan if h.kind in ("deliver", "reader")})
    left = ""
    if st["left_out_packets"] or st["left_out_snaps"]:
        left = "; left out (beyond --pcap-packets %d): %d packets, %d snaps" % (
            args.pcap_packets, st["left_out_packets"], st["left_out_snaps"])
    if st["missing"]:
        left += "; %d hops have no header copy (the copies' ring was full)" % st["missing"]
    if st["borrowed"]:
        left += ("; %d deliveries seen after their reader took the datagram carry the header "
                 "of their hop before (header_of= in the comment)" % st["borrowed"])
    info(args, "wrote %s: %d packets at %d interfaces%s" % (args.pcap, st["packets"],
                                                             st["interfaces"], left))


def _machine_drops(metrics, counts, kallsyms, reasons):
    """The drop monitor's counts (--drops all) to the metrics."""
    metrics.set_machine_drops([(kallsyms(loc) or "0x%x" % loc, reasons.get(r, str(r)), ns, n)
                               for loc, r, ns, n in counts])


def _started(args, cfg, t, coverage, plan, host, rec, t_start):
    """Once the probes are attached: the messages, the recording's meta line, the ready file.
    Returns (meta, seconds from start to ready)."""
    if not any(c["status"] == "attached" for c in coverage):
        raise UserError("no hook could be attached: " + planmod.describe_coverage(coverage))
    info(args, planmod.describe_coverage(coverage))
    info(args, "loaded in %.2fs (%s %.2fs, attach %.2fs)"
         % (time.monotonic() - t_start, "cached compile" if t.cached else "compile",
            t.compile_s, t.attach_s))
    if not t.frags:
        info(args, "IDs in page fragments not read: %s" % t.paged_why)
    meta = {"version": 1, "host": host, "config": cfg.to_dict(), "coverage": coverage,
            "hooks": [h.name for h in plan], "clock": session.clock_pair(),
            "netns_names": session.netns_names()}
    if rec:
        rec.meta(meta)
    ready_s = time.monotonic() - t_start
    if args.ready_file:
        open(args.ready_file, "w").close()
    return meta, ready_s


def _recursion_misses(args, t, counters):
    """The runs of pktpath's programs the kernel skipped (recursion misses, see
    Tracer.recursion_misses) into the end counters: their total, and the hooks that had any;
    when they cannot be read, nothing (and one line says why)."""
    misses = t.recursion_misses()
    if misses is None:
        if t.misses_why:
            info(args, t.misses_why)
        return
    counters["recursion_misses"] = sum(misses.values())
    hooks = {h: n for h, n in misses.items() if n}
    if hooks:
        counters["recursion_misses_hooks"] = hooks


def _write_stats(path, t, counters, events, ready_s):
    """--stats-file (bench/): counters and start-up figures as JSON."""
    with open(path, "w") as f:
        json.dump(dict(counters, events=events, startup_s=ready_s,
                       compile_s=t.compile_s, attach_s=t.attach_s, cached=t.cached,
                       methods={c["hook"]: c["method"] for c in t.coverage
                                if c["status"] == "attached"},
                       headers="in place" if t.direct else "copied"), f)
