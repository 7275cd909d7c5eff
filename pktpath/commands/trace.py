"""The main job: `run.py -c CONFIG [--duration S] [--json F] [--record F] [-- COMMAND ...]`.

parse args -> config -> attach plan -> load/attach -> poll until Ctrl-C/SIGTERM/duration/COMMAND
exit -> detach -> reconstruct -> report. Probes are always detached before the report is printed,
and an interrupted run still prints the report of what it saw.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

from pktpath import config as configmod
from pktpath.collect import hooks as hooksmod
from pktpath.output import drops
from pktpath.kernel import netns, symbols
from pktpath.process import reconstruct
from pktpath.events import recording
from pktpath.output import report
from pktpath.process import stream as stream_mod
from pktpath.kernel.btf import kernel_btf
from pktpath.errors import UserError


def add_arguments(p):
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config (see configs/vxlan.yaml)")
    f = p.add_argument_group("filter (overrides the config)")
    f.add_argument("--shost", help="outer (underlay) source IPv4")
    f.add_argument("--dhost", help="outer (underlay) destination IPv4")
    f.add_argument("--sip", help="inner (overlay) source IPv4")
    f.add_argument("--dip", help="inner (overlay) destination IPv4")
    f.add_argument("--udp-port", type=int, metavar="PORT", help="destination UDP port traced")
    f.add_argument("--vxlan-port", type=int, metavar="PORT", help="VXLAN UDP port (4789; flannel 8472)")
    f.add_argument("--id-offset", type=int, metavar="BYTES", help="packet ID offset in the payload")
    f.add_argument("--id-byteorder", choices=("big", "little"), help="packet ID byte order")
    f.add_argument("--netns", metavar="NS1,NS2",
                   help="only events in these namespaces (ip netns names or inodes)")
    f.add_argument("--hooks", metavar="H1,H2", help="comma-separated hook names (configs/hooks.yaml), "
                   "or the sets `default` and `light` (transmit, delivery and drops only: cheapest)")
    o = p.add_argument_group("run and output")
    o.add_argument("-d", "--duration", type=float, metavar="S", help="stop after S seconds")
    o.add_argument("--json", metavar="FILE", help="write per-packet verdicts as JSON Lines")
    o.add_argument("--record", metavar="FILE", help="write raw events as JSON Lines (see `report`)")
    o.add_argument("--ready-file", metavar="PATH", help="create PATH once every probe is attached")
    o.add_argument("--timeline", type=int, default=50, metavar="N",
                   help="show the timeline of the first N packets (default 50; 0 = none)")
    o.add_argument("--grace", type=float, default=0.5, metavar="S",
                   help="after COMMAND exits, keep draining events for S seconds (default 0.5)")
    o.add_argument("--host", help="label for this host in recordings (default: hostname)")
    o.add_argument("--mode", choices=("summary", "events"), default="summary",
                   help="summary (default): the kernel assembles each packet's path and emits it "
                        "once; events: one event per hook (more detail per hop, more overhead)")
    o.add_argument("--lost-after", type=float, default=2.0, metavar="S",
                   help="summary mode: a packet unseen for S seconds is reported lost (default 2)")
    o.add_argument("--keep-delivered", type=int, default=10000, metavar="N",
                   help="keep the first N delivered packets for the report; later ones go "
                        "to --json only and are counted (memory stays bounded; default 10000)")
    o.add_argument("--stack", action="store_true",
                   help="record the kernel stack at each drop of a traced packet")
    o.add_argument("--drops", choices=("traced", "all"), default="traced",
                   help="'all' also counts every drop on the machine, by location and reason")
    o.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="with --drops all, print the drop counts every S seconds (default 5)")
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
    ov = {k: getattr(args, k) for k in ("shost", "dhost", "sip", "dip", "udp_port", "vxlan_port",
                                        "id_offset", "id_byteorder", "host")}
    if args.hooks:
        ov["hooks"] = [h.strip() for h in args.hooks.split(",") if h.strip()]
    if getattr(args, "netns", None):
        ov["netns"] = [int(n) if n.strip().isdigit() else n.strip()
                       for n in args.netns.split(",") if n.strip()]
    return ov


def info(args, msg):
    if not args.quiet:
        print("pktpath: %s" % msg, file=sys.stderr, flush=True)


def summary_handler(stream):
    """The live handler of summary records: each goes to `stream` raw (bench/records.py
    measures what it costs per record)."""
    from pktpath.events import records
    return stream.record_adder(records.path_key, records.KIND_DELIVER)


def build_plan(cfg, btf, kallsyms, root=True):
    """The attach plan for `cfg` on this kernel (fentry is probed only as root, when needed)."""
    from pktpath.collect import tracer
    catalog = hooksmod.load_catalog()
    entries = hooksmod.select(cfg.hooks, catalog)
    want_fentry = root and any(":" not in e["target"] and e.get("method", "auto") in
                               ("auto", "fentry") for e in entries)
    caps = tracer.capabilities(btf, kallsyms, want_fentry=want_fentry)
    return hooksmod.plan(cfg.hooks, caps, catalog)


def describe_coverage(coverage):
    attached = [c["hook"] for c in coverage if c["status"] == "attached"]
    skipped = ["%s (%s)" % (c["hook"], c["why"]) for c in coverage if c["status"] != "attached"]
    msg = "attached %d hook%s: %s" % (len(attached), "" if len(attached) == 1 else "s",
                                      ", ".join(attached) or "none")
    if skipped:
        msg += "; skipped %d: %s" % (len(skipped), "; ".join(skipped))
    return msg


class _Stop:
    """SIGINT/SIGTERM set a flag; the poll loop notices within one poll timeout."""

    def __init__(self):
        self.reason = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, _frame):
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _open_json(path):
    """Open the --json output (as PATH.tmp, renamed when complete) or UserError."""
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    if os.path.exists(path) and not os.path.isfile(path):   # /dev/null, a fifo: write as is
        try:
            return open(path, "w")
        except OSError as e:
            raise UserError("cannot write --json %s: %s" % (path, e.strerror)) from None
    try:
        return open(path + ".tmp", "w")
    except OSError as e:
        raise UserError("cannot write --json %s: %s" % (path, e.strerror)) from None


def run(args):
    cfg = configmod.load_config(args.config, overrides_from(args))
    from pktpath.collect import program
    from pktpath.events import records
    from pktpath.collect import tracer  # noqa: F401  (tracer imports bcc lazily)
    btf = kernel_btf()
    kallsyms = symbols.Kallsyms()
    plan = build_plan(cfg, btf, kallsyms)
    summary = args.mode == "summary"
    t = tracer.Tracer(cfg, plan, btf, stacks=args.stack, drops_all=args.drops == "all",
                      summary=summary, frags=not args.no_frags, kallsyms=kallsyms,
                      cache=not args.no_cache)
    if args.ebpf:
        print("/* cflags: %s */" % " ".join(t.cflags))
        print(t.text)
        return 0
    if not any(h.attached for h in plan):
        raise UserError("no hook can be attached on this kernel: " + describe_coverage(
            [{"hook": h.name, "status": "skipped", "why": h.why} for h in plan]))
    tracer.check_privileges()
    lock = _single_tracer_lock(cfg)  # noqa: F841  (held until the process exits)
    t_start = time.monotonic()

    host = cfg.host or args.host or socket.gethostname()
    rec = recording.RecordingWriter(args.record) if args.record else None
    json_out = _open_json(args.json)
    decoder = records.PathDecoder([h.name for h in plan], symbols.drop_reasons(btf), kallsyms)
    only_netns = _netns_filter(cfg.netns)

    def keep(ev):
        if only_netns and ev["netns"] not in only_netns:
            return False
        if "stack_id" in ev:
            ev["stack"] = _clean_stack([kallsyms(a) for a in t.stack(ev["stack_id"])])
        if rec:
            rec.event(ev)
        return True

    def expand(data):
        """A summary record's events (decoded only when needed, see stream.py)."""
        return [ev for ev in decoder.decode_path(data) if keep(ev)]

    stream = stream_mod.PacketStream(_names, json_out, keep_delivered=args.keep_delivered,
                                     expand=expand, fast=not (rec or only_netns),
                                     idle=t.drain,
                                     json_line=records.DeliveredJSON(decoder))
    if summary:
        on_event = summary_handler(stream)
    else:
        def on_event(data):
            ev = decoder.decode(data)
            if keep(ev):
                stream.add(ev)

    proc = None
    stop = _Stop()
    with stop:
        try:
            coverage = t.start(on_event)
            if not any(c["status"] == "attached" for c in coverage):
                raise UserError("no hook could be attached: " + describe_coverage(coverage))
            info(args, describe_coverage(coverage))
            info(args, "loaded in %.2fs (%s %.2fs, attach %.2fs)"
                 % (time.monotonic() - t_start, "cached compile" if t.cached else "compile",
                    t.compile_s, t.attach_s))
            if not t.frags:
                info(args, "IDs in page fragments not read: %s" % t.paged_why)
            meta = {"version": 1, "host": host, "config": cfg.to_dict(), "coverage": coverage,
                    "hooks": [h.name for h in plan], "clock": _clock_pair(),
                    "netns_names": _names()}
            if rec:
                rec.meta(meta)
            ready_s = time.monotonic() - t_start
            if args.ready_file:
                open(args.ready_file, "w").close()
            if args.command:
                try:
                    proc = subprocess.Popen(args.command)
                except OSError as e:
                    raise UserError("cannot run %s: %s" % (args.command[0], e.strerror)) from None
                info(args, "tracing while `%s` runs" % " ".join(args.command))
            else:
                info(args, "tracing%s; Ctrl-C to stop and print the report"
                     % (" for %gs" % args.duration if args.duration else ""))
            deadline = time.monotonic() + args.duration if args.duration else None
            next_drops = time.monotonic() + args.interval
            next_sweep = time.monotonic() + 1.0
            prev_drops = {}
            while stop.reason is None:
                t.poll(100)
                t.drain()  # records queued without a wake-up (see pp_wakeup) are taken too
                if time.monotonic() >= next_sweep:
                    if summary:
                        for data in t.sweep(int(args.lost_after * 1e9)):
                            on_event(data)
                    stream.flush()
                    next_sweep += 1.0
                if t.drops_all and time.monotonic() >= next_drops:
                    counts = t.drop_counts()
                    info(args, "drops in the last %gs, all traffic:\n%s" % (
                        args.interval, drops.drop_table(counts, kallsyms, decoder.reasons,
                                                            _names(), prev_drops)))
                    prev_drops = drops.as_dict(counts)
                    next_drops += args.interval
                if deadline and time.monotonic() >= deadline:
                    break
                if proc is not None and proc.poll() is not None:
                    end = time.monotonic() + args.grace
                    while time.monotonic() < end and stop.reason is None:
                        t.poll(50)
                    break
            t.drain()
            for data in t.sweep():
                on_event(data)
            counters = t.counters()
            lost_ids = t.lost_ids()
            drop_counts = t.drop_counts()
            stream.settle()  # while drop stacks can still be read
        finally:
            t.close()
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if stop.reason:
        info(args, "stopped by %s" % stop.reason)
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(dict(counters, events=stream.events, startup_s=ready_s,
                           compile_s=t.compile_s, attach_s=t.attach_s, cached=t.cached,
                           methods={c["hook"]: c["method"] for c in t.coverage
                                    if c["status"] == "attached"},
                           headers="in place" if t.direct else "copied"), f)

    with _Stop():  # the report of a finished trace is printed whole, signals or not
        return _finish(args, t, rec, json_out, stream, counters, lost_ids, drop_counts, meta,
                       kallsyms, decoder)


def _finish(args, t, rec, json_out, stream, counters, lost_ids, drop_counts, meta, kallsyms,
            decoder):
    """Finish the packets, write the outputs and print the report (probes are detached)."""
    names = _names()
    end_rec = dict(counters, netns_names=names, events=stream.events,
                   lost_ids=sorted(lost_ids))
    if counters.get("from_frags"):
        end_rec.setdefault("warnings", []).append(
            "%d hook firings read the packet ID from page fragments (payload not in the linear "
            "skb data)" % counters["from_frags"])
    unattributed = counters.get("lost", 0) - sum(lost_ids.values())
    if unattributed > 0:
        end_rec.setdefault("warnings", []).append(
            "%d lost records could not be tied to a packet ID: packets may be missing from "
            "this report, and every `lost` verdict is reported as `incomplete`" % unattributed)
    packets = reconstruct.mark_incomplete(
        stream.finish(), lost_ids,
        all_lost_suspect=counters.get("lost", 0) > sum(lost_ids.values()))
    if stream.streamed:
        end_rec["streamed_delivered"] = stream.streamed
    if rec:
        rec.end(end_rec)
        rec.close()
    if json_out is not None:
        report.write_json(packets, json_out)
        if json_out is not sys.stdout:
            json_out.close()
            if json_out.name.endswith(".tmp"):
                os.replace(json_out.name, args.json)
    print(report.render_report(packets, meta, end_rec, max_timeline_packets=args.timeline))
    if args.stack:
        print("\n== drop stacks ==\n" + (drops.stacks_section(packets) or "none recorded"))
    if t.drops_all:
        print("\n== all drops on this machine (--drops all) ==\n" + drops.drop_table(
            drop_counts, kallsyms, decoder.reasons, names))
    return 0


LOCK_DIR = "/run/pktpath"


def _single_tracer_lock(cfg):
    """One tracer per (host label, netns filter): two identical tracers would both attach and
    double every cost. Tracers restricted to different namespaces (two lab "hosts") may run
    side by side. Returns the open, locked file; raises UserError if another holds it."""
    import fcntl
    import hashlib
    key = hashlib.sha1(repr((cfg.host, sorted(map(str, cfg.netns or ())))).encode()).hexdigest()
    os.makedirs(LOCK_DIR, exist_ok=True)
    f = open(os.path.join(LOCK_DIR, "trace-%s.lock" % key[:12]), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise UserError("another pktpath tracer with the same filter is running (pid %s)" % pid)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _netns_filter(wanted):
    """Set of netns inodes from the config's `netns` list (names or inodes); empty = all."""
    return {n if isinstance(n, int) else netns.netns_inode(n) for n in wanted or ()}


def _clean_stack(frames):
    """Drop the tracer's own frames (BPF program, bpf_trace_run*) from the top of a stack."""
    def own(f):
        name, _, off = f.partition("+0x")
        return name.startswith("bpf_trace_run") or not off or int(off, 16) > 0x100000
    i = 0
    while i < len(frames) and own(frames[i]):
        i += 1
    return frames[i:]


def _names():
    return {str(k): v for k, v in netns.netns_names().items()}


def _clock_pair():
    """Monotonic (the BPF clock) and wall-clock now, to place kernel times on a wall clock."""
    return {"mono_ns": time.monotonic_ns(), "wall_ns": time.time_ns()}
