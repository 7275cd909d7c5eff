"""The tracer: one object that runs the collection pipeline for a plan of hooks.

    capabilities.py  what this kernel offers (probes), in-place reads, page fragments
    program.py       the C text and its -D flags
    loader.py        compile (bcc.py) or take the cached compile, load, attach by method,
                     the fallback when tp_btf is refused, detach
    pagebases.py     page-base learning, between load and attach
    ringbuf.py       the records, read from the mapped ring buffers
    maps.py          counters, open paths, stacks, drop counts, lost IDs

The trace and probes commands use only this façade: Tracer(...).start(on_event) -> coverage,
poll/drain, the map readers, close.
"""
import time

from pktpath.collect import bpfsys
from pktpath.collect import capabilities as capmod
from pktpath.collect import loader
from pktpath.collect import maps as mapsmod
from pktpath.collect import pagebases
from pktpath.collect import program
from pktpath.collect import ringbuf
from pktpath.errors import UserError

# what the commands call before a Tracer exists
capabilities = capmod.capabilities
check_privileges = capmod.check_privileges


class Tracer:
    """Loads the program for `plan` (list of hooks.Hook), attaches, and calls `on_event(bytes)`.

    After start: `coverage` (one dict per hook), `cached` (the compile came from the image
    cache), `compile_s`, `attach_s`; `frags`/`paged_why` (IDs in page fragments read, how or
    why not), `direct`/`direct_why` (tp_btf programs read headers in place, or why not);
    `text`/`cflags`: the program as last built (a fallback builds it again); `misses_why`: why
    the kernel's recursion misses cannot be read (None when they can, see recursion_misses)."""

    def __init__(self, cfg, plan, btf, stacks=False, drops_all=False, summary=True,
                 frags=True, kallsyms=None, cache=True, extra=None, on_snap=None):
        self.cfg, self.btf, self.cache = cfg, btf, cache
        self.plan = list(plan)
        self.drops_all = drops_all
        self.text = program.program(self.plan)
        paged, self.paged_why = capmod.page_fragments(btf, kallsyms, frags)
        self.frags = bool(paged)
        self.direct, self.direct_why = capmod.in_place_reads(btf, self.plan)
        self._misses_at, self.misses_why = recursion_misses_offset(btf)
        # --pcap: the program also copies each traced hop's headers to the `snaps` ring, each
        # handed to on_snap(bytes)
        self._on_snap = on_snap
        if on_snap is not None:
            extra = dict(extra or {}, **program.pcap_defines(btf))
        self._build = dict(offsets=program.resolve_offsets(btf), paged=paged, stacks=stacks,
                           drops_all=drops_all, summary=summary, extra=extra)
        self.cflags = self._cflags()
        self.coverage, self.cached, self.compile_s, self.attach_s = [], False, 0.0, 0.0
        self._programs = None   # loader.Programs, once started
        self._rings = None      # ringbuf.Rings, once started
        self._on_event = None
        self._maps = mapsmod.MapReader({}, summary=summary, stacks=stacks, drops_all=drops_all)

    def _cflags(self):
        b = self._build
        return program.cflags(self.cfg, b["offsets"], paged=b["paged"], direct=self.direct,
                              stacks=b["stacks"], drops_all=b["drops_all"],
                              summary=b["summary"], extra=b["extra"])

    def start(self, on_event):
        """Compile (or take the compile from the cache), load and attach; when tp_btf hooks are
        refused, fall back (loader.fallback) and start again. Returns the coverage list."""
        capmod.ensure_tracefs()
        while True:
            self._load()
            t0 = time.monotonic()
            if pagebases.wanted(self.cflags):
                self.frags, self.paged_why = pagebases.learn(self._programs.maps,
                                                             self._programs.code)
            self.coverage = self._programs.attach_plan(self.plan, self.btf, self.direct)
            self.attach_s = time.monotonic() - t0
            step = loader.fallback(self.plan, self.coverage, self.direct)
            if step is None:
                break
            self.close()
            self.plan, self.direct, why = step
            self.direct_why = why or self.direct_why
            self.text = program.program(self.plan)
            self.cflags = self._cflags()
        # records are read straight from the mapped ring buffers (see ringbuf.py); a summary
        # record is exactly the packet's header and its recorded hops
        self._on_event = on_event
        self._rings = ringbuf.Rings(self._programs.maps, self.cfg.ringbuf_pages,
                                    program.RESCUE_PAGES,
                                    snaps=(program.SNAP_PAGES, self._on_snap)
                                    if self._on_snap is not None else None)
        self._maps.maps = self._programs.maps
        return self.coverage

    def _load(self):
        """The program into the kernel (from the image cache when it can): self._programs."""
        t0 = time.monotonic()
        self.cached = False
        funcs = ["pp_h%d" % i for i, h in enumerate(self.plan) if h.attached]
        if pagebases.wanted(self.cflags):
            funcs.append(pagebases.FUNC)
        path = loader.image_path(self.plan, self.text, self.cflags, self.cache)
        self._programs = loader.Programs.load(self.text, self.cflags, funcs, path)
        self.cached = self._programs.cached
        self.compile_s = time.monotonic() - t0

    def poll(self, timeout_ms=100):
        """Wait for records (up to timeout_ms) and hand each to on_event."""
        return self._rings.poll(self._on_event, timeout_ms)

    def wake_on(self, fd):
        """End poll()'s wait as soon as `fd` is readable (session.Stop's signal pipe)."""
        if self._rings is not None:
            self._rings.events.watch(fd)

    def drain(self, limit=None):
        """Hand every waiting record to on_event, without waiting (none once closed); at most
        about `limit` records if given (the rest stay: see unread)."""
        if self._rings is None:
            return 0
        return self._rings.consume(self._on_event, limit)

    def unread(self):
        """How many complete records wait in the ring buffers (0 once closed)."""
        return self._rings.waiting() if self._rings is not None else 0

    def counters(self):
        """See maps.MapReader.counters."""
        return self._maps.counters()

    def sweep(self, older_than_ns=None):
        """See maps.MapReader.sweep."""
        return self._maps.sweep(older_than_ns)

    def stack(self, stack_id):
        """See maps.MapReader.stack."""
        return self._maps.stack(stack_id)

    def drop_counts(self):
        """See maps.MapReader.drop_counts."""
        return self._maps.drop_counts()

    def drop_flows(self):
        """See maps.MapReader.drop_flows."""
        return self._maps.drop_flows()

    def lost_ids(self):
        """See maps.MapReader.lost_ids."""
        return self._maps.lost_ids()

    def recursion_misses(self):
        """{hook name: runs the kernel skipped} over the attached programs (the kernel does not
        run a program already running on that CPU, e.g. at a tracepoint fired again in a
        softirq that interrupted it: it counts the run in bpf_prog_info.recursion_misses), or
        None when they cannot be read (misses_why says why). Before close."""
        if self._misses_at is None or self._programs is None:
            return None
        out = {}
        try:
            for i, fds in sorted(self._programs.prog_fds.items()):
                name = self.plan[i].name
                for fd in fds:
                    n = bpfsys.prog_info_u64(fd, self._misses_at)
                    if n is None:
                        self.misses_why = ("recursion misses not counted (the kernel's "
                                           "bpf_prog_info ends before it)")
                        return None
                    out[name] = out.get(name, 0) + n
        except OSError as e:
            self.misses_why = "recursion misses not counted (bpf_prog_info: %s)" % e
            return None
        return out

    def close(self):
        """Detach everything and unload (idempotent)."""
        if self._rings is not None:
            self._rings.close()
            self._rings = None
        self._maps.maps = {}
        if self._programs is not None:
            programs, self._programs = self._programs, None
            programs.close()


def recursion_misses_offset(btf):
    """(byte offset of recursion_misses in struct bpf_prog_info, None) from the kernel's BTF, or
    (None, why not)."""
    try:
        return btf.offset("bpf_prog_info", "recursion_misses"), None
    except (UserError, AttributeError) as e:
        return None, "recursion misses not counted (%s)" % e


__all__ = ["Tracer", "capabilities", "check_privileges"]
