"""`run.py drops [options] [-- COMMAND ...]`: a machine-wide drop monitor that names the flow of
every drop. No config file.

The kernel side is the tracer's drop monitor (bpf/pktpath.c, pp_dropwatch, as `--drops all`)
with details: it counts every drop exactly (by location, reason, netns; and by flow) and emits a
detail record per drop within a quota per (location, reason). Wiring only: the stream is
output/dropmonitor.py, the text output/drops.py.
"""
import socket
import sys
import time

from pktpath import config as configmod
from pktpath.collect import plan as planmod
from pktpath.collect import program
from pktpath.events import recording
from pktpath.kernel import symbols
from pktpath.kernel import netns as netnsmod
from pktpath.kernel.btf import kernel_btf
from pktpath.output import jsonfile
from pktpath.output import dropmonitor as dropsmod
from pktpath.process import session
from pktpath.errors import UserError

num = configmod.cmdline_number


def add_arguments(p):
    p.add_argument("command", nargs="*", metavar="-- COMMAND",
                   help="run COMMAND once the probe is attached; stop when it exits")
    f = p.add_argument_group("filter (drops that do not match are neither counted nor shown)")
    f.add_argument("--proto", choices=sorted(program.PROTOCOLS) + ["arp"], default="any",
                   help="only this protocol (of the inner packet when tunnelled)")
    f.add_argument("--port", type=num("port", 1, 65535, integer=True), metavar="N", help="only flows with this source or "
                   "destination port")
    f.add_argument("--host", metavar="IP", help="only flows from or to this address (inner or "
                   "outer)")
    f.add_argument("--netns", metavar="NS,..", help="only drops in these namespaces (ip netns "
                   "names or inodes)")
    f.add_argument("--reason", metavar="R,..", help="only these drop reasons (e.g. "
                   "NO_SOCKET,NETFILTER_DROP)")
    o = p.add_argument_group("run and output")
    o.add_argument("-d", "--duration", type=num("duration", above=0), metavar="S", help="stop after S seconds")
    o.add_argument("--interval", type=num("interval", above=0), default=5.0, metavar="S",
                   help="print the exact counts every S seconds (default 5)")
    o.add_argument("--limit", type=num("limit", lo=0, integer=True), default=10, metavar="N",
                   help="at most N detail lines per second per (location, reason); the rest "
                        "are counted (default 10)")
    o.add_argument("--stack", action="store_true", help="show the kernel stack of each drop")
    o.add_argument("--json", metavar="FILE", help="one JSON object per drop shown, then a "
                   "summary object with the exact counts")
    o.add_argument("--record", metavar="FILE", help="record for `run.py report FILE`")
    o.add_argument("--html", metavar="FILE", help="also write the summary (drops by location, "
                   "reason and namespace; top flows) as one self-contained HTML page")
    o.add_argument("--ready-file", metavar="PATH", help="create PATH once the probe is attached")
    o.add_argument("--grace", type=num("grace", lo=0), default=0.5, metavar="S",
                   help="after COMMAND exits, keep reading for S seconds (default 0.5)")
    o.add_argument("--metrics", metavar="[ADDR:]PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics while running "
                        "(ADDR default: all interfaces)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    o.add_argument("--no-cache", action="store_true",
                   help="compile the BPF program even if it was compiled before")


def info(args, msg):
    if not args.quiet:
        print("pktpath: %s" % msg, file=sys.stderr, flush=True)


def _netns_inodes(spec):
    out = set()
    for n in (s.strip() for s in (spec or "").split(",")):
        if n:
            out.add(int(n) if n.isdigit() else netnsmod.netns_inode(n))
    return out


def _reason_codes(spec, reasons):
    by_name = {v: k for k, v in reasons.items()}
    out = set()
    for r in (s.strip().upper() for s in (spec or "").split(",")):
        if not r:
            continue
        r = r[len("SKB_DROP_REASON_"):] if r.startswith("SKB_DROP_REASON_") else r
        if r.isdigit():
            out.add(int(r))
        elif r in by_name:
            out.add(by_name[r])
        else:
            raise UserError("unknown drop reason %s (this kernel has: %s)"
                            % (r, ", ".join(sorted(by_name))))
    return out


def _symbolized(counts, kallsyms, reasons):
    return [(kallsyms(loc) or "0x%x" % loc, reasons.get(reason, str(reason)), netns, n)
            for loc, reason, netns, n in counts]


def run(args):
    if not getattr(args, "metrics", None):
        return _run(args, None)
    from pktpath.output import metrics as metricsmod
    return metricsmod.run_served(args.metrics, lambda m: _run(args, m),
                                 netns_names=session.netns_names)


def _run(args, metrics):
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if getattr(args, "html", None):
        from pktpath.output import html
        html.check_path(args.html)
    if args.interval <= 0:
        raise UserError("--interval must be more than 0")
    if args.limit < 0:
        raise UserError("--limit must be 0 or more")
    if args.host:
        import ipaddress
        try:
            ipaddress.ip_address(args.host)
        except ValueError:
            raise UserError("--host %s is not an IP address" % args.host) from None
    from pktpath.collect import tracer  # (tracer imports bcc lazily)
    from pktpath.events import dropinfo
    btf, kallsyms = kernel_btf(), symbols.Kallsyms()
    reasons = symbols.drop_reasons(btf)
    cfg = configmod.load_config(None, {"hooks": ["kfree_skb"], "host": "drops"})
    plan = planmod.build_plan(cfg, btf, kallsyms)
    if not any(h.attached for h in plan):
        raise UserError("skb:kfree_skb cannot be attached: %s" % plan[0].why)
    extra = program.drop_defines(btf, proto=args.proto, port=args.port, host=args.host,
                                 netns=_netns_inodes(args.netns),
                                 reasons=_reason_codes(args.reason, reasons), burst=args.limit)
    t = tracer.Tracer(cfg, plan, btf, stacks=args.stack, drops_all=True, summary=False,
                      frags=False, kallsyms=kallsyms, cache=not args.no_cache, extra=extra)
    tracer.check_privileges()
    lock = session.single_tracer_lock(cfg)  # noqa: F841  (held until the process exits)
    t_start = time.monotonic()
    clock = session.clock_pair()
    names = session.netns_names()
    rec = recording.RecordingWriter(args.record) if args.record else None
    json_out = jsonfile.open_json(args.json)
    stack = (lambda sid: dropsmod.clean_stack([kallsyms(a) for a in t.stack(sid)])) \
        if args.stack else None
    decoder = dropinfo.DropDecoder(reasons, kallsyms, clock, lambda: names, stack)

    def write(text):
        print(text, flush=True)
    mon = dropsmod.DropMonitor(write, names, json_out=json_out, rec=rec)

    def on_record(data):
        mon.detail(decoder.decode(data))

    def on_drops(counts):
        names.update(session.netns_names())
        mon.interval(_symbolized(counts, kallsyms, reasons), args.interval)
        if metrics is not None:
            metrics.set_machine_drops(_symbolized(counts, kallsyms, reasons))
            metrics.set_counters(t.counters())
            metrics.set_skipped(t.recursion_misses())

    child, stop = session.Child(), session.Stop()
    with stop:
        try:
            coverage = t.start(on_record)
            if metrics is not None:
                metrics.set_coverage(coverage)
            info(args, planmod.describe_coverage(coverage))
            info(args, "loaded in %.2fs (%s)" % (time.monotonic() - t_start,
                                                 "cached compile" if t.cached else "compiled"))
            if rec:
                rec.meta({"recording": dropsmod.RECORDING, "host": socket.gethostname(),
                          "clock": clock, "netns_names": names, "coverage": coverage,
                          "filters": {k: getattr(args, k) for k in
                                      ("proto", "port", "host", "netns", "reason")},
                          "interval": args.interval, "limit": args.limit})
            if args.ready_file:
                open(args.ready_file, "w").close()
            if args.command:
                child.start(args.command)
            info(args, "watching drops%s; Ctrl-C to stop and print the summary"
                 % (" while `%s` runs" % " ".join(args.command) if args.command else
                    " for %gs" % args.duration if args.duration else ""))
            session.poll_loop(t, stop, child, on_record, lambda: None, False, 0,
                              args.duration, args.grace, args.interval, on_drops)
            t.drain()
            counts, flows = t.drop_counts(), t.drop_flows()
            lost = t.counters().get("lost", 0)
            misses = t.recursion_misses()
            skipped = None if misses is None else sum(misses.values())
            if misses is None and t.misses_why:
                info(args, t.misses_why)
        finally:
            t.close()
            child.stop()
    if stop.reason:
        info(args, "stopped by %s" % stop.reason)
    with session.Stop():
        names.update(session.netns_names())
        flows = [dropinfo.decode_flow(k, n, reasons) for k, n in flows]
        mon.finish(_symbolized(counts, kallsyms, reasons), flows, lost,
                   round(time.monotonic() - t_start, 3), skipped)
        jsonfile.close_json(json_out, args.json)
        if rec:
            rec.close()
        if args.html:
            from pktpath.output import html
            html.write(args.html, html.render_drops(mon.final))
    return 0
