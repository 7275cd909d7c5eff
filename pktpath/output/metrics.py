"""`--metrics [ADDR:]PORT`: the Prometheus endpoint (the fleet view), with prometheus_client.

One Metrics object per run, on its own CollectorRegistry (never the global one), served at
/metrics by a threaded WSGI server that stops with the tracer. It is fed where packets are
finished (process/stream.py: `packet` for built packets, `record` for the raw summary records
the fast paths never expand) and, for the drop monitor, from its exact per-(location, reason,
netns) counts. Families (labels are bounded by the hooks, devices, namespaces, drop reasons and
locations of the machine; never a packet ID or an address):

  pktpath_packets_total{verdict}                  packets finished, by verdict as finished
                                                  (the end-of-trace policy may still turn a
                                                  `lost` into `incomplete` in the report)
  pktpath_drops_total{reason,location,netns}      traced packets dropped
  pktpath_segment_latency_seconds{from,to}        histogram: time from one hop (hook@dev/netns)
                                                  to the packet's next hop
  pktpath_machine_drops_total{reason,location,netns}  every drop on the machine (`drops`,
                                                  `--drops all`): the kernel's exact counts
  pktpath_events_lost_total                       records the tracer lost (full ring buffer)
  pktpath_records_shed_total                      records read past the bound on packets held
                                                  unfinished (a flood faster than the tracer
                                                  finishes packets), not kept
  pktpath_kernel_skipped_runs_total{hook}         runs of pktpath's programs the kernel skipped
                                                  (recursion_misses: already running on that
                                                  CPU; absent where the kernel cannot say)
  pktpath_hooks_attached                          hooks attached
  pktpath_hook_info{hook,method,status}           1 per hook of the plan

Nothing here is imported unless --metrics is given.
"""
import ipaddress
import socket
import struct
import threading
from bisect import bisect_left
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pktpath.errors import UserError
from pktpath.events import records

# segment latency buckets (seconds): a hop inside a host takes microseconds, a wire or a queue
# milliseconds
BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2,
           1e-1, 1.0)
_BOUNDS_NS = tuple(round(b * 1e9) for b in BUCKETS)
# the tracer observes the segments of at most this many packets per flush (4 a second); the
# others are counted (by verdict, drops) but not timed: at ~85k packets/s, timing every packet
# made the tracer lose ring-buffer records (bench, 2026-11-30)
LATENCY_BUDGET = 500

# the header fields read, in one small unpack (layout checked against bpf/pktpath.h's)
_HDR_OFF = records.PATH.offset("location")
_HDR = struct.Struct("<Q8xIHBxI")     # location, reason, port, final_kind, nhops
assert [records.PATH.offset(n) - _HDR_OFF for n in ("reason", "port", "final_kind", "nhops")] \
    == [16, 20, 22, 24], "pp_path changed: update metrics._HDR"
_H_LOC, _H_REASON, _H_FINAL, _H_NHOPS = 0, 1, 3, 4
_DROP = records.KINDS.index("drop")
_K = len(records.HOP.names)
_HOP_FMT = records.HOP.fmt.format.lstrip("<=@!>")
(_I_DT, _I_HOOK, _I_KIND, _I_FLAGS, _I_NETNS, _I_DEV) = (
    records.HOP.names.index(n) for n in ("dt", "hook", "kind", "flags", "netns", "dev"))


def parse_address(spec):
    """(host, port) of `[ADDR:]PORT` (ADDR: an IPv4 or IPv6 address, [IPv6] too, or a host
    name; default all interfaces); UserError when it is not one."""
    text = (spec or "").strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UserError("--metrics %s: write an IPv6 address in brackets, e.g. [::1]:9911" % spec)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError("--metrics %s: expected [ADDR:]PORT with PORT 1-65535" % spec)
    return host or "0.0.0.0", int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def run_served(addr, run, **metrics_kw):
    """run(metrics) with a Metrics(**metrics_kw) served at `addr` ([ADDR:]PORT) while it runs;
    the server stops when run returns (the tracer and `drops` share this)."""
    metrics = Metrics(**metrics_kw)
    server = serve(addr, metrics.registry)
    try:
        return run(metrics)
    finally:
        server.stop()


def serve(spec, registry):
    """Serve `registry` at http://ADDR:PORT/metrics in a daemon thread; returns the server
    (stop() it). A bad address or a port in use is a UserError (one line, exit 2)."""
    from prometheus_client import make_wsgi_app
    host, port = parse_address(spec)
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except OSError as e:
            raise UserError("--metrics %s: cannot resolve %s (%s)" % (spec, host, e)) from None
    cls = type("MetricsServer", (_Server,), {"address_family": family})
    try:
        httpd = make_server(host, port, make_wsgi_app(registry), cls, handler_class=_Quiet)
    except OSError as e:
        raise UserError("--metrics %s: cannot listen there (%s)" % (spec, e.strerror or e)) \
            from None
    thread = threading.Thread(target=httpd.serve_forever, name="pktpath-metrics", daemon=True)
    thread.start()
    return Server(httpd, thread)


class Server:
    def __init__(self, httpd, thread):
        self.httpd, self.thread = httpd, thread
        self.port = httpd.server_address[1]

    def stop(self):
        """Stop serving and close the socket (idempotent)."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.httpd = None


class Metrics:
    """The metric families of one run (see the module doc), on `self.registry`.

    `decoder` (records.PathDecoder) names hooks, drop reasons and locations of raw records;
    `netns_names`: callable -> {inode: name}; `latency_budget`: at most this many packets'
    segments observed between two tick()s (None: all): past it, packets are still counted, and
    their segments counted in pktpath_latency_unsampled_total instead (a flood must not make
    the tracer lose events to its metrics)."""

    def __init__(self, decoder=None, netns_names=dict, latency_budget=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge
        self.decoder, self.netns_names = decoder, netns_names
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._drops = Counter("pktpath_drops", "Traced packets dropped, by drop reason, "
                              "location and namespace", ["reason", "location", "netns"],
                              registry=r)
        self._attached = Gauge("pktpath_hooks_attached", "Hooks attached", registry=r)
        self._hook = Gauge("pktpath_hook_info", "Hooks of the plan (1 each), with how they are "
                           "attached", ["hook", "method", "status"], registry=r)
        self._lock = threading.Lock()
        self._segments = {}     # (from, to) -> [bucket counts (+Inf last), sum ns]
        self._lost = 0
        self._shed = 0
        self._skipped = None        # {hook: runs the kernel skipped}, None: not readable
        self.latency_budget = latency_budget
        self._left = latency_budget if latency_budget is not None else -1
        self._unsampled = 0
        self._machine = []      # [(reason, location, netns, count)]
        self._verdicts = {}     # verdict -> packets (a plain dict: the cheapest count)
        self._by_drop = {}      # label children, looked up once
        self._paths, self._hops, self._loc, self._ns = {}, {}, {}, None
        r.register(_Collector(self))

    # ---- fed by the pipeline ----

    def record(self, data, verdict, names):
        """A raw pp_path record finished with `verdict` ("delivered", "dropped", "lost"): its
        count, its drop, its segments (read from its bytes, no events built). `names`:
        {inode (int): netns name}. Run for every packet of a busy trace: what a path of hops
        means (its segments' accumulators, its drop's namespace) is worked out once per kind
        of path, then each record costs one unpack and a bisect per segment."""
        if names is not self._ns:   # new mapping: labels of hops may change
            self._ns = names
            self._paths.clear()
        counts = self._verdicts
        counts[verdict] = counts.get(verdict, 0) + 1
        if not self._left and verdict != "dropped":
            self._unsampled += 1    # the common case of a flood: counted, nothing more
            return
        t = _HDR.unpack_from(data, _HDR_OFF)
        path = None
        if verdict == "dropped":
            path = self._path(data, t, names)
            location, reason = t[_H_LOC], t[_H_REASON]
            loc = self._loc.get(location)
            if loc is None:
                loc = self._loc[location] = _location(self.decoder.symbolize(location))
            self._drop(self.decoder.reasons.get(reason, str(reason)), loc, path[0][1] or "")
        if not self._left:
            self._unsampled += 1
            return
        self._left -= 1
        (segs, _drop_ns), flat = path or self._path(data, t, names)
        dts = flat[_I_DT::_K]
        bounds = _BOUNDS_NS
        with self._lock:
            for i, j, seg in segs:
                ns = dts[j] - dts[i]
                if ns >= 0:     # else hops out of time order (CPUs' clocks): nothing to say
                    seg[0][bisect_left(bounds, ns)] += 1
                    seg[1] += ns

    def _path(self, data, t, names):
        """((segments, netns of the drop) of the record's kind of path, its hops unpacked)."""
        n = min(t[_H_NHOPS], records.MAX_HOPS, (len(data) - records.PATH_HDR) // records.HOP_SIZE)
        fmt = self._hops.get(n)
        if fmt is None:
            fmt = self._hops[n] = struct.Struct("<" + _HOP_FMT * n)
        flat = fmt.unpack_from(data, records.PATH_HDR)
        key = (t[_H_FINAL], flat[_I_HOOK::_K], flat[_I_KIND::_K], flat[_I_FLAGS::_K],
               flat[_I_NETNS::_K], flat[_I_DEV::_K])
        shape = self._paths.get(key)
        if shape is None:
            if len(self._paths) > 4096:
                self._paths.clear()
            shape = self._paths[key] = self._shape(key, names)
        return shape, flat

    def tick(self):
        """A new latency budget (called 4 times a second by the tracer's flush)."""
        if self.latency_budget is not None:
            self._left = self.latency_budget

    def _shape(self, key, names):
        """([(hop i, next hop j, segment accumulator)], netns of the drop) of a kind of path."""
        final_kind, hooks, kinds, flags, netns, devs = key
        hops, drop_ns = [], None
        for i in range(len(hooks)):
            if not flags[i] & records.F_HOP_SET:
                continue    # a slot lost to a race between CPUs (see pp_summary)
            hops.append((i, "%s@%s/%s" % (
                self.decoder.hook_name(hooks[i]),
                devs[i].split(b"\0", 1)[0].decode(errors="replace") or "-",
                names.get(netns[i]) or str(netns[i]))))
            if kinds[i] == _DROP and kinds[i] == final_kind:
                drop_ns = names.get(netns[i]) or str(netns[i])
        segs = []
        for (i, a), (j, b) in zip(hops, hops[1:]):
            seg = self._segments.get((a, b))
            if seg is None:
                with self._lock:
                    seg = self._segments[(a, b)] = [[0] * (len(_BOUNDS_NS) + 1), 0]
            segs.append((i, j, seg))
        return segs, drop_ns

    def packet(self, pkt):
        """A packet built by process/reconstruct.py, finished."""
        self._count(pkt["verdict"])
        drop = pkt.get("drop")
        if pkt["verdict"] == "dropped" and drop:
            self._drop(drop.get("reason") or "", _location(drop.get("location")),
                       drop.get("netns_name") or str(drop.get("netns") or ""))
        if not self._left:
            self._unsampled += 1
            return
        self._left -= 1
        prev = prev_t = None
        with self._lock:
            for hop in pkt.get("path") or ():
                label = "%s@%s/%s" % (hop["hook"], hop.get("dev") or "-",
                                      hop.get("netns_name") or str(hop.get("netns")))
                if prev is not None:
                    self._observe(prev, label, hop["t_ns"] - prev_t)
                prev, prev_t = label, hop["t_ns"]

    def _count(self, verdict):
        self._verdicts[verdict] = self._verdicts.get(verdict, 0) + 1

    def _drop(self, reason, location, netns):
        key = (reason, location, netns)
        child = self._by_drop.get(key)
        if child is None:
            child = self._by_drop[key] = self._drops.labels(*key)
        child.inc()

    def _observe(self, src, dst, ns):
        if ns < 0:
            return      # hops out of time order (CPUs' clocks): no latency to say
        seg = self._segments.get((src, dst))
        if seg is None:
            seg = self._segments[(src, dst)] = [[0] * (len(_BOUNDS_NS) + 1), 0]
        seg[0][bisect_left(_BOUNDS_NS, ns)] += 1
        seg[1] += ns

    # ---- fed by the tracer ----

    def set_counters(self, counters):
        """The tracer's counters (collect/maps.py): events lost; and `shed` (stream.py)."""
        self._lost = counters.get("lost", 0) or 0
        self._shed = counters.get("shed", 0) or 0

    def set_skipped(self, by_hook):
        """Runs of the tracer's programs the kernel skipped, {hook: n} (Tracer.recursion_misses),
        or None where they cannot be read (the family is then left out)."""
        self._skipped = None if by_hook is None else dict(by_hook)

    def set_coverage(self, coverage):
        """The plan's hooks as attached (collect/tracer.py coverage rows)."""
        self._attached.set(sum(c["status"] == "attached" for c in coverage))
        for c in coverage:
            self._hook.labels(c["hook"], c.get("method") or "", c["status"]).set(1)

    def set_machine_drops(self, counts):
        """The drop monitor's exact counts, symbolized: [(location, reason, netns, count)]
        (netns an inode or a name)."""
        names = {int(k): v for k, v in (self.netns_names() or {}).items()}
        self._machine = [(reason, _location(loc), names.get(ns) or str(ns)
                          if isinstance(ns, int) else str(ns), n)
                         for loc, reason, ns, n in counts]


def _location(symbol):
    """A drop location as a label: the function, without its offset (bounded, and what a
    dashboard groups by)."""
    return (symbol or "").split("+", 1)[0]


class _Collector:
    """The families computed at scrape time: latency histograms, events lost, machine drops."""

    def __init__(self, m):
        self.m = m

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        m = self.m
        h = HistogramMetricFamily("pktpath_segment_latency_seconds",
                                  "Time from one hop (hook@dev/netns) of a traced packet to its "
                                  "next hop", labels=["from", "to"])
        with m._lock:
            segments = [(k, list(v[0]), v[1]) for k, v in m._segments.items()]
        for (src, dst), counts, total in sorted(segments):
            acc, buckets = 0, []
            for bound, c in zip(BUCKETS + (float("inf"),), counts):
                acc += c
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            h.add_metric([src, dst], buckets, total / 1e9)
        yield h
        c = CounterMetricFamily("pktpath_packets", "Traced packets finished, by verdict",
                                labels=["verdict"])
        for verdict, n in sorted(dict(m._verdicts).items()):
            c.add_metric([verdict], n)
        yield c
        yield CounterMetricFamily("pktpath_latency_unsampled", "Packets finished whose segments "
                                  "were not observed in the latency histograms (over the "
                                  "latency budget of a busy trace)", value=m._unsampled)
        yield CounterMetricFamily("pktpath_events_lost", "Records the tracer lost (ring buffer "
                                  "full)", value=m._lost)
        yield CounterMetricFamily("pktpath_records_shed", "Records read past the bound on "
                                  "packets held unfinished (a flood faster than the tracer "
                                  "finishes packets), not kept", value=m._shed)
        if m._skipped is not None:
            c = CounterMetricFamily("pktpath_kernel_skipped_runs", "Runs of pktpath's programs "
                                    "the kernel skipped (the same program already running on "
                                    "that CPU): hops or drops not seen", labels=["hook"])
            for hook, n in sorted(m._skipped.items()):
                c.add_metric([hook], n)
            yield c
        c = CounterMetricFamily("pktpath_machine_drops", "Every drop on the machine (drop "
                                "monitor), by reason, location and namespace",
                                labels=["reason", "location", "netns"])
        merged = {}
        for reason, loc, ns, n in m._machine:
            merged[(reason, loc, ns)] = merged.get((reason, loc, ns), 0) + n
        for key, n in sorted(merged.items()):
            c.add_metric(list(key), n)
        yield c
