"""bpf(2) without bcc: load and attach programs, create and read maps.

bcc compiles pktpath's C (bcc.py); everything after that goes through here, so that a program
compiled once can be loaded again without compiling (`Image`, the compiled-program cache: bcc's
clang compile is ~0.7 s of a ~1.1 s start-up). Pure ctypes on the bpf syscall, no bcc.
"""
import base64
import ctypes
import errno
import hashlib
import json
import os
import struct

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
(_MAP_CREATE, _MAP_LOOKUP, _MAP_UPDATE, _MAP_DELETE, _MAP_NEXT_KEY, _PROG_LOAD) = range(6)
_OBJ_INFO, _RAW_TRACEPOINT_OPEN = 15, 17
PROG_RAW_TRACEPOINT, PROG_TRACING, TRACE_RAW_TP = 17, 26, 23
_PERCPU_TYPES = {5, 6, 10}     # percpu hash, percpu array, lru percpu hash
_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd, attr):
    """bpf(cmd, attr): (result, errno)."""
    if _NR_BPF is None:
        return -1, 38   # ENOSYS: syscall number unknown for this architecture
    ret = _libc.syscall(_NR_BPF, cmd, attr, len(attr))
    return ret, ctypes.get_errno() if ret < 0 else 0


def _check(ret, err):
    if ret < 0:
        raise OSError(err, os.strerror(err))
    return ret


def load(insns, insn_cnt, name, prog_type, attach_type=0, btf_id=0, log_size=None):
    """Load `insn_cnt` instructions at address `insns`; returns the program fd, or raises OSError
    with the verifier's last line. `log_size` None: without a verifier log (logging slows the
    verifier down), and only if that fails again with one, for the why; 0: never a log."""
    if log_size is None:
        try:
            return load(insns, insn_cnt, name, prog_type, attach_type, btf_id, 0)
        except OSError:
            log_size = 1 << 20
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = ctypes.create_string_buffer(144)
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, insn_cnt, insns,
                     ctypes.addressof(lic), 1 if log else 0, log_size if log else 0,
                     ctypes.addressof(log) if log else 0)
    struct.pack_into("<16s", attr, 48, name.encode()[:15])
    struct.pack_into("<I", attr, 68, attach_type)       # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_id)           # attach_btf_id
    fd, err = _bpf(_PROG_LOAD, attr)
    for _ in range(4):  # the verifier gives up with EAGAIN when a signal arrives: try again
        if fd >= 0 or err != errno.EAGAIN:
            break
        fd, err = _bpf(_PROG_LOAD, attr)
    if fd < 0:
        lines = log.value.decode(errors="replace").strip().splitlines() if log else []
        # the verifier ends with a "processed N insns" summary: the error is the line before
        lines = [ln for ln in lines if not ln.startswith(("processed ", "verification time"))]
        if log and os.environ.get("PKTPATH_VERIFIER_LOG"):   # for developers
            with open(os.environ["PKTPATH_VERIFIER_LOG"], "w") as f:
                f.write(log.value.decode(errors="replace"))
        raise OSError(err, "%s%s" % (os.strerror(err), (": " + lines[-1]) if lines else ""))
    return fd


def load_bytes(code, name, prog_type, **kw):
    """`load` for instructions held in a bytes-like object."""
    buf = ctypes.create_string_buffer(bytes(code), len(code))
    return load(ctypes.addressof(buf), len(code) // 8, name, prog_type, **kw)


def raw_tracepoint_open(prog_fd, tp_name=None):
    """Attach a raw tracepoint program to `tp_name` (None: a tp_btf program, whose target came
    with the load); returns the link fd (close it to detach)."""
    name = ctypes.create_string_buffer(tp_name.encode()) if tp_name else None
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(name) if name else 0, prog_fd)
    return _check(*_bpf(_RAW_TRACEPOINT_OPEN, attr))


# BTF-typed raw tracepoints (tp_btf): bcc 0.26 does not load them (its load_func left the
# program's attach_btf_id unset: EINVAL), so they are loaded here; so are raw tracepoint
# programs, which lets a cached compile (Image) be loaded without bcc.
def load_tp_btf(insns, insn_cnt, name, btf_id, log_size=None):
    """Load `insn_cnt` instructions at address `insns` as a tp_btf program attached (at load) to
    BTF type `btf_id`; returns the program fd, or raises OSError with the verifier's last line
    (`log_size`: see load)."""
    return load(insns, insn_cnt, name, PROG_TRACING, TRACE_RAW_TP, btf_id, log_size=log_size)


def attach_tp_btf(prog_fd):
    """Attach a loaded tp_btf program (its target came with the load); returns the link fd."""
    return raw_tracepoint_open(prog_fd)


def prog_info_u64(prog_fd, offset):
    """The 8-byte field at byte `offset` of the program's struct bpf_prog_info
    (BPF_OBJ_GET_INFO_BY_FD; the offset comes from BTF), or None when this kernel's
    bpf_prog_info ends before it. Raises OSError if the kernel refuses."""
    info = ctypes.create_string_buffer(offset + 8)   # zeroed: no arrays asked for
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIQ", attr, 0, prog_fd, len(info), ctypes.addressof(info))
    _check(*_bpf(_OBJ_INFO, attr))
    if struct.unpack_from("<I", attr, 4)[0] < offset + 8:   # info_len: what the kernel filled
        return None
    return struct.unpack_from("<Q", info, offset)[0]


RETURN_0 = bytes.fromhex("b700000000000000" "9500000000000000")   # r0 = 0; exit


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


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """How many CPUs per-CPU map values hold (e.g. "0-1" -> 2)."""
    with open(path) as f:
        n = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n = max(n, int(hi or lo) + 1)
        return n


class Map:
    """A BPF map by fd: its shape, and lookup/update/delete/iteration on bytes."""

    def __init__(self, fd, map_type, key_size, value_size, max_entries, flags, name, owned):
        self.fd, self.type, self.key_size, self.value_size = fd, map_type, key_size, value_size
        self.max_entries, self.flags, self.name, self.owned = max_entries, flags, name, owned
        self.percpu = map_type in _PERCPU_TYPES
        # a per-CPU value is one 8-byte-aligned slot per possible CPU
        self._slot = (value_size + 7) // 8 * 8
        self.buf_size = self._slot * possible_cpus() if self.percpu else value_size

    def spec(self):
        return {"name": self.name, "type": self.type, "key_size": self.key_size,
                "value_size": self.value_size, "max_entries": self.max_entries,
                "flags": self.flags}

    @classmethod
    def from_fd(cls, fd, name=None):
        """A map someone else created (bcc): not closed by us."""
        info = ctypes.create_string_buffer(88)
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
        _check(*_bpf(_OBJ_INFO, attr))
        t, _, ks, vs, n, fl, nm = struct.unpack_from("<6I16s", info)
        return cls(fd, t, ks, vs, n, fl, name or nm.rstrip(b"\0").decode(), owned=False)

    @classmethod
    def create(cls, spec):
        attr = ctypes.create_string_buffer(72)
        struct.pack_into("<5I", attr, 0, spec["type"], spec["key_size"], spec["value_size"],
                         spec["max_entries"], spec["flags"])
        struct.pack_into("<16s", attr, 28, spec["name"].encode()[:15])
        fd = _check(*_bpf(_MAP_CREATE, attr))
        return cls(fd, spec["type"], spec["key_size"], spec["value_size"], spec["max_entries"],
                   spec["flags"], spec["name"], owned=True)

    def _elem(self, cmd, key, value=None, flags=0):
        k = ctypes.create_string_buffer(bytes(key), max(self.key_size, 1))
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIQQQ", attr, 0, self.fd, 0, ctypes.addressof(k),
                         ctypes.addressof(value) if value is not None else 0, flags)
        return _bpf(cmd, attr)

    def lookup(self, key):
        """The value (bytes; per CPU: one slot per CPU) of `key`, or None."""
        v = ctypes.create_string_buffer(self.buf_size)
        ret, _ = self._elem(_MAP_LOOKUP, key, v)
        return None if ret < 0 else v.raw

    def update(self, key, value):
        _check(*self._elem(_MAP_UPDATE, key, ctypes.create_string_buffer(bytes(value),
                                                                           self.buf_size)))

    def delete(self, key):
        """Remove `key`; False if it was not there."""
        return self._elem(_MAP_DELETE, key)[0] == 0

    def keys(self):
        """Every key (a snapshot: iteration restarts from the first key at the end)."""
        out, key = [], None
        while True:
            nxt = ctypes.create_string_buffer(self.key_size)
            k = ctypes.create_string_buffer(bytes(key) if key is not None else b"",
                                            self.key_size)
            attr = ctypes.create_string_buffer(24)
            struct.pack_into("<IIQQ", attr, 0, self.fd, 0,
                             ctypes.addressof(k) if key is not None else 0,
                             ctypes.addressof(nxt))
            if _bpf(_MAP_NEXT_KEY, attr)[0] < 0:
                return out
            key = nxt.raw
            out.append(key)
            if len(out) > self.max_entries:   # a map changing under us: stop, don't loop
                return out

    def items(self):
        out = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out

    def per_cpu(self, value):
        """A per-CPU value split into its CPUs' slots."""
        return [value[i:i + self.value_size] for i in range(0, len(value), self._slot)]

    def close(self):
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


# ---- the compiled-program cache ----
IMAGE_VERSION = 1
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE = 1, 2


def relocate(code, mapping):
    """Rewrite the map references (ld_imm64 of a map fd) in the instructions `code` through
    `mapping` (old number -> new number: fds to table indexes, or back). Returns new bytes."""
    out = bytearray(code)
    for off in range(0, len(out) - 15, 8):
        op, regs, _, imm = struct.unpack_from("<BBhi", out, off)
        if op == _LD_IMM64 and (regs >> 4) in (_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE):
            if imm not in mapping:
                raise KeyError("instruction %d refers to map %d, which is not known" %
                               (off // 8, imm))
            struct.pack_into("<i", out, off + 4, mapping[imm])
    return bytes(out)


def image_key(*parts):
    """The cache key of a compiled program: everything the compiler's output depends on."""
    h = hashlib.sha256(b"pktpath-image-%d" % IMAGE_VERSION)
    for p in parts:
        h.update(b"\0" + (p if isinstance(p, bytes) else str(p).encode()))
    return h.hexdigest()


class Image:
    """A compiled program: its maps' shapes and each function's instructions, whose map
    references are table indexes (fds are per process)."""

    def __init__(self, tables, funcs):
        self.tables, self.funcs = tables, funcs   # [spec], {name: bytes}

    @classmethod
    def capture(cls, maps, funcs):
        """From live maps ({name: Map}) and instructions holding their fds ({name: bytes})."""
        names = sorted(maps)
        index = {maps[n].fd: i for i, n in enumerate(names)}
        return cls([maps[n].spec() for n in names],
                   {f: relocate(code, index) for f, code in funcs.items()})

    def instantiate(self):
        """Create the maps; returns ({name: Map}, {function: instructions with their fds})."""
        maps = {}
        try:
            for spec in self.tables:
                maps[spec["name"]] = Map.create(spec)
            fds = {i: maps[s["name"]].fd for i, s in enumerate(self.tables)}
            return maps, {f: relocate(code, fds) for f, code in self.funcs.items()}
        except (OSError, KeyError):
            for m in maps.values():
                m.close()
            raise

    def save(self, path):
        """Write atomically (a reader never sees half a file)."""
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as f:
            json.dump({"version": IMAGE_VERSION, "tables": self.tables,
                       "funcs": {k: base64.b64encode(v).decode() for k, v in
                                 self.funcs.items()}}, f)
        os.replace(tmp, path)
        prune(os.path.dirname(path), KEEP_IMAGES)

    @classmethod
    def read(cls, path):
        """The image at `path`, or None if there is none, it is not one of ours, or someone else
        than this user could have written it (its instructions go into the kernel)."""
        try:
            for p in (os.path.dirname(path), path):
                st = os.stat(p)
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    return None
            with open(path) as f:
                d = json.load(f)
            if d.get("version") != IMAGE_VERSION:
                return None
            return cls([dict(t) for t in d["tables"]],
                       {k: base64.b64decode(v) for k, v in d["funcs"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


KEEP_IMAGES = 32


def prune(directory, keep):
    """Keep the `keep` most recently written images in `directory`."""
    try:
        names = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".json")]
        names.sort(key=os.path.getmtime, reverse=True)
        for old in names[keep:]:
            os.unlink(old)
    except OSError:
        pass    # another process pruned it first
