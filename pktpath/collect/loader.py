"""Loading and attaching: the compiled program (from the image cache, or compiled by bcc) goes
into the kernel, each planned hook is attached by its method, and everything is detached again.

A hook that fails to attach is skipped with the reason (its coverage row says why). When tp_btf
hooks fail, `fallback` says what to try next: first the same hooks with packet headers copied
instead of read in place, then raw tracepoints; the caller builds the program again and loads.
"""
import ctypes
import dataclasses
import os

from pktpath.collect import bcc
from pktpath.collect import bpfsys
from pktpath.collect import program
from pktpath.errors import first_line

# compiled programs (bpfsys.Image), by a hash of everything the compile depends on
# (PKTPATH_IMAGE_CACHE: another directory, e.g. for tests)
IMAGE_CACHE = os.environ.get("PKTPATH_IMAGE_CACHE") or os.path.join(bcc.HEADER_CACHE, "images")
# hooks whose programs are loaded and attached with bpf(2); kprobes and fentry need bcc's object
BPFSYS_METHODS = ("raw_tracepoint", "tp_btf")


def image_path(plan, text, cflags, cache=True):
    """Where this program's compile is cached, or None (`cache` False, or not cacheable: hooks
    that bcc attaches itself need bcc's object)."""
    if not cache or any(h.attached and h.method not in BPFSYS_METHODS for h in plan):
        return None
    hdr = bcc.kernel_headers()
    u = os.uname()
    key = bpfsys.image_key(text, " ".join(cflags), bcc.version(), hdr,
                           u.release, u.version, u.machine)
    return os.path.join(IMAGE_CACHE, key + ".json")


class Programs:
    """One load of the program: its maps ({name: bpfsys.Map}), its functions' instructions
    ({name: bytes}, with this process's map fds), what is attached, and bcc's object
    (bcc.Compiled) when this load compiled. `cached`: the compile came from the image cache."""

    def __init__(self, maps, code, compiled=None):
        self.maps, self.code, self.compiled = maps, code, compiled
        self.cached = compiled is None
        self._fds = []      # links and programs loaded here, closed in reverse order
        self.prog_fds = {}  # hook index -> fds of its attached programs (their bpf_prog_info)

    @classmethod
    def load(cls, text, cflags, funcs, path=None):
        """The program `text` built with `cflags`, keeping the instructions of `funcs`: from
        the image at `path` when there is a good one, else compiled (and saved there)."""
        image = bpfsys.Image.read(path) if path else None
        if image is not None and set(image.funcs) == set(funcs):
            try:
                return cls(*image.instantiate())
            except (OSError, KeyError):
                pass
        compiled = bcc.Compiled(text, cflags, funcs)
        if path:
            try:
                bpfsys.Image.capture(compiled.maps, compiled.code).save(path)
            except (OSError, KeyError):
                pass    # no cache then: the next start compiles again
        return cls(compiled.maps, compiled.code, compiled)

    def attach_plan(self, plan, btf, direct):
        """Attach every attachable hook of `plan` (hook i runs function pp_h<i>); returns the
        coverage list, one dict per hook, with why a hook was skipped or failed."""
        coverage = []
        for i, hook in enumerate(plan):
            status, why = "skipped", hook.why
            if hook.attached:
                try:
                    with bcc.QuietStderr(bcc.BPF_LOG):
                        self.attach(i, hook, btf, direct)
                    status = "attached"
                    if hook.method not in BPFSYS_METHODS and self.compiled is not None:
                        self.prog_fds[i] = self.compiled.prog_fds(
                            "pp_h%d" % i, hook.target if hook.method == "fentry" else None)
                except Exception as e:
                    why = "attach failed: %s" % first_line(e)
            coverage.append({"hook": hook.name, "target": hook.target, "kind": hook.kind,
                             "requested": hook.requested, "method": hook.method,
                             "status": status, "why": why})
        return coverage

    def attach(self, i, hook, btf, direct):
        """Attach hook `i` by its method (raises why not). `direct`: the in-place read values
        (program.direct_pkt), whose kfunc calls tp_btf programs get patched in."""
        fn = "pp_h%d" % i
        if hook.method == "raw_tracepoint":
            prog = bpfsys.load_bytes(self.code[fn], fn, bpfsys.PROG_RAW_TRACEPOINT)
            self._fds.append(prog)
            self._fds.append(bpfsys.raw_tracepoint_open(prog, hook.tp_name))
            self.prog_fds[i] = [prog]
        elif hook.method == "kprobe":
            self.compiled.attach_kprobe(hook.target, fn)
        elif hook.method == "kretprobe":
            self.compiled.attach_kprobe(hook.target, fn + "_entry")
            self.compiled.attach_kretprobe(hook.target, fn)
        elif hook.method == "fentry":
            pass  # bcc attached KFUNC_PROBE programs when it loaded the object
        elif hook.method == "tp_btf":
            btf_id = btf.trace_type_id(hook.tp_name)
            if not btf_id:
                raise RuntimeError("no btf_trace_%s in the kernel's BTF" % hook.tp_name)
            size = len(self.code[fn])
            insns = ctypes.create_string_buffer(self.code[fn], size)
            if direct:
                bpfsys.patch_kfunc_calls(insns, program.CAST_CALL, direct["PP_CAST_FUNC_ID"])
            prog = bpfsys.load_tp_btf(ctypes.addressof(insns), size // 8, fn, btf_id)
            self._fds.append(prog)
            self._fds.append(bpfsys.attach_tp_btf(prog))
            self.prog_fds[i] = [prog]
        else:
            raise RuntimeError("method %s not supported" % hook.method)

    def close(self):
        """Detach everything and unload (idempotent)."""
        for fd in reversed(self._fds):   # links and programs loaded here (bcc does not know them)
            os.close(fd)
        self._fds, self.prog_fds = [], {}
        for m in self.maps.values():    # maps created from a cached image (bcc closes its own)
            m.close()
        self.maps, self.code = {}, {}
        if self.compiled is not None:
            try:
                self.compiled.close()
            finally:
                self.compiled = None


def fallback(plan, coverage, direct):
    """After attaching: None when every tp_btf hook attached; else the next try, (plan, direct,
    why in-place reads stopped or None):
    - refused with headers read in place: tp_btf again, copying them; the delivery hook (whose
      skbs need in-place reads to be tp_btf) goes back to a raw tracepoint;
    - refused with headers copied (a kernel that loads tp_btf programs but not ours): every
      hook back to a raw tracepoint, saying why."""
    failed = [c for c in coverage if c["method"] == "tp_btf" and c["status"] != "attached"]
    if not failed:
        return None
    if direct:
        return (_to_raw(plan, lambda h: h.kind in ("deliver", "reader"), "tracepoint"), {},
                "tp_btf refused it (%s)" % failed[0]["why"])
    return (_to_raw(plan, lambda h: True, "tp_btf refused (%s): raw tracepoint"
                    % failed[0]["why"]), direct, None)


def _to_raw(plan, which, why):
    """`plan` with the tp_btf hooks `which(hook)` picks made raw tracepoints (with `why`)."""
    return [dataclasses.replace(h, method="raw_tracepoint", why=why)
            if h.method == "tp_btf" and which(h) else h for h in plan]
