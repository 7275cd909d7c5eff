"""Network namespaces: names of netns inodes (`ip netns`), and entering one from Python (3.11 has
no os.setns)."""
import ctypes
import ctypes.util
import os

from pktpath.errors import UserError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_setns = None


def _libc_setns():
    """libc's setns, looked up once: in the symbols already loaded (ctypes.util.find_library
    would run `ldconfig -p` in a child process at every call)."""
    global _setns
    if _setns is None:
        try:
            _setns = ctypes.CDLL(None, use_errno=True).setns
        except AttributeError:
            _setns = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                 use_errno=True).setns
    return _setns


def enter(name):
    """Move the calling process (thread) into the network namespace `name` (`ip netns` name)."""
    path = os.path.join(NETNS_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UserError("netns '%s' does not exist (ip netns list)" % name) from None
    except PermissionError:
        raise UserError("entering netns '%s' needs root" % name) from None
    try:
        if _libc_setns()(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise UserError("cannot enter netns '%s': %s" % (name, os.strerror(err)))
    finally:
        os.close(fd)


def netns_names(netns_dir=NETNS_DIR):
    """{netns inode: name} for namespaces named by `ip netns` (bind mounts in /run/netns)."""
    out = {}
    try:
        entries = os.listdir(netns_dir)
    except OSError:
        entries = []
    for name in entries:
        try:
            out[os.stat(os.path.join(netns_dir, name)).st_ino] = name
        except OSError:
            continue
    for path, label in (("/proc/1/ns/net", "init"), ("/proc/self/ns/net", "root")):
        try:
            out.setdefault(os.stat(path).st_ino, label)
        except OSError:
            pass
    return out


def netns_inode(name, netns_dir=NETNS_DIR):
    """Inode of the named netns, or UserError."""
    try:
        return os.stat(os.path.join(netns_dir, name)).st_ino
    except OSError:
        raise UserError("netns '%s' not found in %s" % (name, netns_dir)) from None
