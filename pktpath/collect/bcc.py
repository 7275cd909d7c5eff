"""Everything that touches bcc, and the only module that imports it.

bcc compiles pktpath's C text (with clang, against a kernel header tree) and attaches the hooks
that only bcc can attach: kprobes and kretprobes by name, fentry (KFUNC_PROBE) programs when it
loads them. Everything after a compile goes through bpf(2) directly (bpfsys.py).
"""
import ctypes
import glob
import os
import re
import sys

from pktpath.collect import bpfsys
from pktpath.errors import UserError, first_line

HEADER_CACHE = "/var/cache/pktpath"
BPF_LOG = "/tmp/pktpath-bpf.log"    # the compiler's and the verifier's chatter


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


def version():
    """bcc's version: its compiler made the instructions a cached image holds."""
    try:
        with open(os.path.join(os.path.dirname(import_bcc().__file__), "version.py")) as f:
            return f.read()
    except OSError:
        return "?"


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


class QuietStderr:
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


def _compiler():
    """bcc's module, with BCC_KERNEL_SOURCE set to the kernel headers (UserError if either is
    missing)."""
    bcc = import_bcc()
    hdr = kernel_headers()
    if hdr:
        os.environ["BCC_KERNEL_SOURCE"] = hdr
    return bcc


def kfunc_supported():
    """bcc's view: does this kernel have the BPF trampoline fentry programs need?"""
    return import_bcc().BPF.support_kfunc()


def load_and_unload(text):
    """Compile and load `text` (fentry programs are attached at load), then unload it: a probe
    (raises what bcc raises)."""
    bcc = _compiler()
    with QuietStderr():
        b = bcc.BPF(text=text)
    b.cleanup()


class Compiled:
    """pktpath's C text compiled and loaded by bcc: its maps ({name: bpfsys.Map}) and the
    instructions of the functions asked for ({name: bytes}, with this process's map fds); bcc's
    object attaches the kprobes and kretprobes."""

    def __init__(self, text, cflags, funcs):
        bcc = _compiler()
        try:
            with QuietStderr(BPF_LOG):
                self._bpf = bcc.BPF(text=text.encode(), cflags=cflags)
        except Exception as e:
            raise UserError("BPF program failed to load: %s (compiler/verifier log: %s; "
                            "generated C: run with --ebpf)" % (first_line(e), BPF_LOG)) from None
        self.maps, self.code = {}, {}
        lib, module = bcc.lib, self._bpf.module
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

    def attach_kprobe(self, target, fn):
        self._bpf.attach_kprobe(event=target, fn_name=fn)

    def attach_kretprobe(self, target, fn):
        self._bpf.attach_kretprobe(event=target, fn_name=fn)

    def prog_fds(self, fn, target=None):
        """The fds of the programs bcc loaded for entry point `fn` (its kretprobe's `fn`_entry
        too; `target`: a KFUNC_PROBE's, named after it by bcc): [] when bcc loaded none."""
        names = {fn.encode(), (fn + "_entry").encode()}
        out = []
        for name, f in self._bpf.funcs.items():
            name = name if isinstance(name, bytes) else str(name).encode()
            if name in names or (target and name.startswith(b"kfunc__")
                                 and name.endswith(target.encode())):
                out.append(f.fd)
        return out

    def close(self):
        """Detach what bcc attached and unload (bcc closes its own maps)."""
        self._bpf.cleanup()
