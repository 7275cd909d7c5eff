"""Collection: the only module that imports bcc. Compile, attach, poll, detach.

The flow is that of bcc's own tools: build the C text (bpfgen) -> load -> attach each planned hook
(skipping, with the reason, any that fails) -> poll the ring buffer -> detach everything.
"""
import ctypes
import dataclasses
import glob
import mmap
import os
import re
import socket
import struct
import subprocess
import sys
import time

from pktpath.collect import program
from pktpath.collect import bpfsys
from pktpath.events import records
from pktpath.collect import hooks as hooksmod
from pktpath.collect import ringbuf
from pktpath.errors import UserError

HEADER_CACHE = "/var/cache/pktpath"
# compiled programs (bpfsys.Image), by a hash of everything the compile depends on
# (PKTPATH_IMAGE_CACHE: another directory, e.g. for tests)
IMAGE_CACHE = os.environ.get("PKTPATH_IMAGE_CACHE") or os.path.join(HEADER_CACHE, "images")


def import_bcc():
    """bcc's Python module; found in Debian's dist-packages even from a non-system python3."""
    try:
        import bcc
        return bcc
    except ImportError:
        pass
    for d in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"):
        if os.path.isdir(os.path.join(d, "bcc")) and d not in sys.path:
            sys.path.append(d)
    try:
        import bcc
        return bcc
    except ImportError:
        raise UserError("bcc is not installed (Debian: apt-get install python3-bpfcc; "
                        "or run `make deps`)") from None
    except Exception as e:  # libbcc.so missing, wrong version, ...
        raise UserError("bcc failed to load: %s" % str(e).splitlines()[0]) from None


def _merge_tree(dst, srcs):
    """Make `dst` a directory whose entries are symlinks into the union of `srcs` (recursively
    for directories present in several sources)."""
    os.makedirs(dst, exist_ok=True)
    names = {}
    for src in srcs:
        for name in os.listdir(src):
            names.setdefault(name, []).append(os.path.join(src, name))
    for name, paths in names.items():
        target = os.path.join(dst, name)
        dirs = [p for p in paths if os.path.isdir(p)]
        if len(dirs) > 1:
            _merge_tree(target, dirs)
        elif not os.path.lexists(target):
            os.symlink(os.path.realpath(paths[0]), target)


def kernel_headers():
    """A kernel header directory bcc can compile against, or UserError.

    The matching /lib/modules/$(uname -r)/build wins. Otherwise the newest Debian headers package:
    Debian splits it into -amd64 (generated files) and -common (the rest), so a merged symlink
    tree is built once under /var/cache/pktpath. Struct layouts from these headers are never used
    (offsets come from BTF); bcc only needs something that compiles.
    """
    build = "/lib/modules/%s/build" % os.uname().release
    if os.path.isdir(os.path.join(build, "include")):
        return None  # bcc finds it itself
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and os.path.isdir(env):
        return env
    arch = sorted(glob.glob("/usr/src/linux-headers-*-amd64") +
                  glob.glob("/usr/src/linux-headers-*-arm64"), key=_version_key)
    for d in reversed(arch):
        common = re.sub(r"-(amd64|arm64)$", "-common", d)
        srcs = [d] + ([common] if os.path.isdir(common) else [])
        dst = os.path.join(HEADER_CACHE, "kheaders-" + os.path.basename(d))
        done = os.path.join(dst, ".pktpath-complete")
        if not os.path.exists(done):
            try:
                _merge_tree(dst, srcs)
                open(done, "w").close()
            except OSError as e:
                raise UserError("cannot prepare kernel headers in %s: %s" % (dst, e)) from None
        return dst
    raise UserError("no kernel headers found (Debian: apt-get install linux-headers-amd64; "
                    "or run `make deps`)")


def _version_key(path):
    return [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", os.path.basename(path))]


def ensure_tracefs():
    """Mount tracefs/debugfs if missing (bcc looks there for some attach types)."""
    for path, fstype in (("/sys/kernel/tracing", "tracefs"), ("/sys/kernel/debug", "debugfs")):
        if os.path.isdir(path) and not os.listdir(path):
            subprocess.run(["mount", "-t", fstype, "nodev", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def check_privileges():
    if os.geteuid() != 0:
        raise UserError("tracing needs root (CAP_BPF, CAP_PERFMON): run with sudo")


class _QuietStderr:
    """Send libbpf/bcc's own stderr chatter (fd 2: compiler errors, verifier logs) to `path`
    (default: nowhere) instead of the terminal."""

    def __init__(self, path=os.devnull):
        self.path = path

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)


BPF_LOG = "/tmp/pktpath-bpf.log"


def probe_fentry():
    """(works, why not): load and attach a trivial fentry program, as the kernel is the judge."""
    bcc = import_bcc()
    if not bcc.BPF.support_kfunc():
        return False, "fentry not supported (no BPF trampoline on this kernel)"
    hdr = kernel_headers()
    if hdr:
        os.environ["BCC_KERNEL_SOURCE"] = hdr
    try:
        with _QuietStderr():
            b = bcc.BPF(text="KFUNC_PROBE(netif_rx, u64 a0)\n{\n    return 0;\n}\n")
        b.cleanup()
        return True, ""
    except Exception as e:
        why = _first_line(e)
        if "super-user" in why:  # bcc's wording for EPERM from BPF_PROG_LOAD
            why = "EPERM"
        return False, "fentry refused by the kernel (%s)" % why


# BTF-typed raw tracepoints (tp_btf): bcc 0.26 does not load them (its load_func left the
# program's attach_btf_id unset: EINVAL), so they are loaded with bpf(2) (bpfsys.py); so are raw
# tracepoint programs, which lets a cached compile (bpfsys.Image) be loaded without bcc.
def load_tp_btf(insns, insn_cnt, name, btf_id, log_size=None):
    """Load `insn_cnt` instructions at address `insns` as a tp_btf program attached (at load) to
    BTF type `btf_id`; returns the program fd, or raises OSError with the verifier's last line
    (`log_size`: see bpfsys.load)."""
    return bpfsys.load(insns, insn_cnt, name, bpfsys.PROG_TRACING, bpfsys.TRACE_RAW_TP, btf_id,
                       log_size=log_size)


def patch_kfunc_calls(insns, placeholder, func_id):
    """Turn every helper call `call placeholder` in the instruction buffer `insns` into a call
    of the kernel function with BTF id `func_id` (BPF_PSEUDO_KFUNC_CALL: bcc 0.26's compiler
    cannot emit one). Returns how many were patched."""
    n = 0
    for off in range(0, len(insns) - 7, 8):
        code, regs, _, imm = struct.unpack_from("<BBhi", insns, off)
        if code == 0x85 and regs == 0 and imm == placeholder:   # BPF_JMP | BPF_CALL
            struct.pack_into("<BBhi", insns, off, code, 2 << 4, 0, func_id)
            n += 1
    return n


def attach_tp_btf(prog_fd):
    """Attach a loaded tp_btf program (its target came with the load); returns the link fd."""
    return bpfsys.raw_tracepoint_open(prog_fd)


def bcc_lib():
    return import_bcc().lib


RETURN_0 = bytes.fromhex("b700000000000000" "9500000000000000")   # r0 = 0; exit


def probe_tp_btf(btf):
    """(works, why not): load a two-instruction tp_btf program (r0 = 0; exit)."""
    btf_id = btf.trace_type_id("net_dev_queue")
    if not btf_id:
        return False, "no btf_trace_net_dev_queue in the kernel's BTF"
    prog = ctypes.create_string_buffer(RETURN_0)
    try:
        os.close(load_tp_btf(ctypes.addressof(prog), 2, "pp_probe", btf_id, log_size=0))
        return True, ""
    except OSError as e:
        return False, "tp_btf refused by the kernel (%s)" % e.strerror


def capabilities(btf, kallsyms=None, want_fentry=False):
    """What this kernel offers for attaching (see hooks.Capabilities). fentry is probed only
    when a function hook may use it (the probe costs a compile)."""
    kprobe_pmu = os.path.exists("/sys/bus/event_source/devices/kprobe/type")
    tp_btf = probe_tp_btf(btf)[0] if os.geteuid() == 0 else False
    fentry, fentry_why = probe_fentry() if want_fentry else (False, "fentry not needed")
    return hooksmod.Capabilities(
        tracepoint_args=btf.tracepoint_args,
        kprobes=kprobe_pmu,
        kprobe_why="kprobes not available (no kprobe PMU: kernel built without CONFIG_KPROBES)",
        fentry=fentry,
        fentry_why=fentry_why,
        tp_btf=tp_btf,
        tp_btf_direct=tp_btf and bool(program.direct_pkt(btf)[0]),
        symbols=kallsyms,   # lazy: read only if a function hook asks
    )


class Tracer:
    """Loads the program for `plan` (list of hooks.Hook), attaches, and calls `on_event(bytes)`."""

    def __init__(self, cfg, plan, btf, stacks=False, drops_all=False, summary=True,
                 frags=True, kallsyms=None, cache=True):
        self.cfg, self.btf = cfg, btf
        self.plan = list(plan)
        self.bpf = None         # bcc's object, when this start compiled
        self.maps = {}          # table name -> bpfsys.Map
        self.code = {}          # function name -> instructions (with this process's map fds)
        self.cache = cache      # load a cached compile when there is one (bpfsys.Image)
        self.cached = False     # this start used one
        self.ring = None
        self._fds = []
        self.coverage = []
        self.text = program.program(self.plan)
        # paged_why: how IDs in page fragments are read (frags True), or why not
        paged, self.paged_why = program.paged_layout(
            btf, symbol=kallsyms.address if kallsyms else None) if frags else ({}, "--no-frags")
        self.frags = bool(paged)
        # tp_btf programs read packet headers in place where the kernel allows (bpf_rdonly_cast)
        self.direct, self.direct_why = ({}, "no tp_btf hook")
        if any(h.method == "tp_btf" for h in self.plan):
            self.direct, self.direct_why = program.direct_pkt(btf)
        self._offsets, self._paged = program.resolve_offsets(btf), paged
        self._cflags_kw = dict(stacks=stacks, drops_all=drops_all, summary=summary)
        self.cflags = self._make_cflags()
        self.stacks, self.drops_all, self.summary = stacks, drops_all, summary
        self.attach_s = 0.0
        self.compile_s = 0.0

    def _make_cflags(self):
        return program.cflags(self.cfg, self._offsets, paged=self._paged, direct=self.direct,
                             **self._cflags_kw)

    def start(self, on_event):
        """Compile (or take the compile from the cache), load and attach. Returns the coverage
        list (one dict per hook)."""
        ensure_tracefs()
        t0 = time.monotonic()
        self.cached = False
        funcs = ["pp_h%d" % i for i, h in enumerate(self.plan) if h.attached]
        if "-DPP_LEARN_BASES=1" in self.cflags:
            funcs.append("pp_learn")
        path = self._image_path()
        image = bpfsys.Image.read(path) if path else None
        if image is not None and set(image.funcs) == set(funcs):
            try:
                self.maps, self.code = image.instantiate()
                self.cached = True
            except (OSError, KeyError):
                image = None
        if not self.cached:
            self._compile(funcs)
            if path:
                try:
                    bpfsys.Image.capture(self.maps, self.code).save(path)
                except (OSError, KeyError):
                    pass    # no cache then: the next start compiles again
        self.compile_s = time.monotonic() - t0
        t0 = time.monotonic()
        if "-DPP_LEARN_BASES=1" in self.cflags:
            self.frags, self.paged_why = self._learn_page_bases()
        for i, hook in enumerate(self.plan):
            status, why = "skipped", hook.why
            if hook.attached:
                try:
                    with _QuietStderr(BPF_LOG):
                        self._attach(i, hook)
                    status = "attached"
                except Exception as e:
                    why = "attach failed: %s" % _first_line(e)
            self.coverage.append({"hook": hook.name, "target": hook.target,
                                  "requested": hook.requested, "method": hook.method,
                                  "status": status, "why": why})
        self.attach_s = time.monotonic() - t0
        failed = [c for c in self.coverage if c["method"] == "tp_btf" and c["status"] != "attached"]
        if failed and self.direct:
            # refused with headers read in place: tp_btf again, copying them; the delivery hook
            # (whose skbs need in-place reads to be tp_btf) goes back to a raw tracepoint
            self.direct_why = "tp_btf refused it (%s)" % failed[0]["why"]
            self.direct = {}
            return self._restart(on_event, lambda h: h.kind == "deliver", "tracepoint")
        if failed:
            # a kernel that loads tp_btf programs but refuses ours: all hooks back to raw
            # tracepoints, saying why
            return self._restart(on_event, lambda h: True,
                                 "tp_btf refused (%s): raw tracepoint" % failed[0]["why"])

        # records are read straight from the mapped ring buffer (see ringbuf.py); a summary
        # record is exactly the packet's header and its recorded hops
        self._on_event = on_event
        self.ring = ringbuf.RingReader(self.maps["events"].fd,
                                       self.cfg.ringbuf_pages * mmap.PAGESIZE)
        self.rescue = ringbuf.RingReader(self.maps["rescue"].fd,
                                         program.RESCUE_PAGES * mmap.PAGESIZE)
        return self.coverage

    def _image_path(self):
        """Where this program's compile is cached, or None (not cacheable: hooks that bcc
        attaches itself, kprobes and fentry, need bcc's object)."""
        if not self.cache or any(h.attached and h.method not in ("raw_tracepoint", "tp_btf")
                                 for h in self.plan):
            return None
        hdr = kernel_headers()
        u = os.uname()
        key = bpfsys.image_key(self.text, " ".join(self.cflags), _bcc_version(), hdr,
                               u.release, u.version, u.machine)
        return os.path.join(IMAGE_CACHE, key + ".json")

    def _compile(self, funcs):
        """bcc compiles the C text; its maps and the instructions of `funcs` are kept."""
        bcc = import_bcc()
        hdr = kernel_headers()
        if hdr:
            os.environ["BCC_KERNEL_SOURCE"] = hdr
        try:
            with _QuietStderr(BPF_LOG):
                self.bpf = bcc.BPF(text=self.text.encode(), cflags=self.cflags)
        except Exception as e:
            raise UserError("BPF program failed to load: %s (compiler/verifier log: %s; "
                            "generated C: run with --ebpf)" % (_first_line(e), BPF_LOG)) from None
        lib, module = bcc_lib(), self.bpf.module
        lib.bpf_num_tables.restype = ctypes.c_size_t
        lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.bpf_table_fd_id.restype = ctypes.c_int
        lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        for i in range(lib.bpf_num_tables(module)):
            name = lib.bpf_table_name(module, i).decode()
            self.maps[name] = bpfsys.Map.from_fd(lib.bpf_table_fd_id(module, i), name)
        for fn in funcs:
            start = lib.bpf_function_start(module, fn.encode())
            size = lib.bpf_function_size(module, fn.encode())
            if start and size:
                self.code[fn] = ctypes.string_at(start, size)

    def _restart(self, on_event, which, why):
        """Detach everything, make the tp_btf hooks `which(hook)` picks raw tracepoints (with
        `why`), and start again (one more compile)."""
        self.close()
        self.plan = [dataclasses.replace(h, method="raw_tracepoint", why=why)
                     if h.method == "tp_btf" and which(h) else h for h in self.plan]
        self.text = program.program(self.plan)
        self.cflags = self._make_cflags()
        self.coverage = []
        return self.start(on_event)

    LEARN_TP = "sock_send_length"   # fires in sendmsg, with the socket as first argument

    def _learn_page_bases(self):
        """Let the kernel side learn the page bases (bpf/pktpath.c, pp_learn): attach pp_learn,
        send one datagram from a socket of our own (before any hook is attached, so it is never
        traced), detach. Returns (learned, how IDs in page fragments are read or why not)."""
        table = self.maps["pagebases"]
        try:
            prog = bpfsys.load_bytes(self.code["pp_learn"], "pp_learn",
                                     bpfsys.PROG_RAW_TRACEPOINT)
        except (OSError, KeyError) as e:
            return False, _first_line(e)
        try:
            link = bpfsys.raw_tracepoint_open(prog, self.LEARN_TP)
        except OSError as e:
            os.close(prog)
            return False, _first_line(e)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(20):
                    try:
                        s.sendto(b"pktpath", ("127.0.0.1", 9))
                    except OSError:
                        pass
                    if struct.unpack("<Q", table.lookup(struct.pack("<I", 0)))[0]:
                        return True, "page bases learned from a slab"
                    time.sleep(0.005)
        finally:
            os.close(link)
            os.close(prog)
        return False, "no partial slab found to learn page bases from"

    def _attach(self, i, hook):
        fn = "pp_h%d" % i
        if hook.method == "raw_tracepoint":
            prog = bpfsys.load_bytes(self.code[fn], fn, bpfsys.PROG_RAW_TRACEPOINT)
            self._fds.append(prog)
            self._fds.append(bpfsys.raw_tracepoint_open(prog, hook.tp_name))
        elif hook.method == "kprobe":
            self.bpf.attach_kprobe(event=hook.target, fn_name=fn)
        elif hook.method == "kretprobe":
            self.bpf.attach_kprobe(event=hook.target, fn_name=fn + "_entry")
            self.bpf.attach_kretprobe(event=hook.target, fn_name=fn)
        elif hook.method == "fentry":
            pass  # bcc attached KFUNC_PROBE programs when it loaded the object
        elif hook.method == "tp_btf":
            btf_id = self.btf.trace_type_id(hook.tp_name)
            if not btf_id:
                raise RuntimeError("no btf_trace_%s in the kernel's BTF" % hook.tp_name)
            size = len(self.code[fn])
            insns = ctypes.create_string_buffer(self.code[fn], size)
            if self.direct:
                patch_kfunc_calls(insns, program.CAST_CALL, self.direct["PP_CAST_FUNC_ID"])
            prog = load_tp_btf(ctypes.addressof(insns), size // 8, fn, btf_id)
            self._fds.append(prog)
            self._fds.append(attach_tp_btf(prog))
        else:
            raise RuntimeError("method %s not supported" % hook.method)

    def poll(self, timeout_ms=100):
        """Wait for records (up to timeout_ms) and hand each to on_event."""
        return (self.ring.poll(self._on_event, timeout_ms) +
                self.rescue.consume(self._on_event))

    def drain(self):
        """Hand every waiting record to on_event, without waiting (none once closed)."""
        if self.ring is None:
            return 0
        return self.ring.consume(self._on_event) + self.rescue.consume(self._on_event)

    def counters(self):
        """{"lost": n, "unreachable": n, "from_map": n, "lost_paths_full": n} summed over
        CPUs ("lost" includes "lost_paths_full")."""
        names = ("lost", "unreachable", "from_map", None, "lost_paths_full", "rescued",
                 "from_frags")
        table = self.maps.get("counters")
        if table is None:
            return {n: 0 for n in names if n}
        out = {}
        for i, n in enumerate(names):
            if n:
                v = table.lookup(struct.pack("<I", i))
                out[n] = sum(struct.unpack("<Q", c)[0] for c in table.per_cpu(v)) if v else 0
        return out

    def sweep(self, older_than_ns=None):
        """Summary mode: remove and return (as pp_path bytes) the open paths whose last sighting
        is older than `older_than_ns` ago (all of them when None): packets that went quiet."""
        table = self.maps.get("paths")
        if table is None or not self.summary:
            return []
        limit = None if older_than_ns is None else time.monotonic_ns() - older_than_ns
        out, seen = [], set()
        for k, v in table.items():
            # a key listing taken while the kernel adds and removes paths restarts from the
            # first key (keys seen twice); and the kernel may finish a path (delivered, dropped:
            # its record is on the ring) between the listing and the delete: only a path this
            # delete removed went quiet
            if k in seen:
                continue
            seen.add(k)
            if (limit is None or records.path_last_ts(v) < limit) and table.delete(k):
                out.append(v[:records.path_used_bytes(v)])
        return out

    def stack(self, stack_id):
        """Kernel addresses of a stack recorded at a drop (innermost first)."""
        table = self.maps.get("stacks")
        if table is None or not self.stacks or stack_id < 0:
            return []
        v = table.lookup(struct.pack("<I", stack_id))
        if v is None:
            return []
        ips = struct.unpack("<%dQ" % (len(v) // 8), v)
        return list(ips[:ips.index(0)] if 0 in ips else ips)

    def drop_counts(self):
        """[(location, reason, netns, count)] of every drop counted in --drops all mode."""
        table = self.maps.get("dropcounts")
        if table is None or not self.drops_all:
            return []
        return [struct.unpack("<QII", k) + struct.unpack("<Q", v) for k, v in table.items()]

    def lost_ids(self):
        """{packet ID: events lost} for packets that lost events to a full ring buffer."""
        table = self.maps.get("lostids")
        if table is None:
            return {}
        return {struct.unpack("<I", k)[0]: struct.unpack("<Q", v)[0] for k, v in table.items()}

    def close(self):
        """Detach everything and unload (idempotent)."""
        if self.ring is not None:
            self.ring.close()
            self.rescue.close()
            self.ring = None
        for fd in reversed(self._fds):   # links and programs loaded here (bcc does not know them)
            os.close(fd)
        self._fds = []
        for m in self.maps.values():    # maps created from a cached image (bcc closes its own)
            m.close()
        self.maps, self.code = {}, {}
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None


def _bcc_version():
    """bcc's version: its compiler made the instructions a cached image holds."""
    try:
        with open(os.path.join(os.path.dirname(import_bcc().__file__), "version.py")) as f:
            return f.read()
    except OSError:
        return "?"


def _first_line(e):
    text = str(e).strip() or e.__class__.__name__
    return text.splitlines()[0][:300]


__all__ = ["Tracer", "import_bcc", "kernel_headers", "capabilities", "check_privileges",
           "records"]
