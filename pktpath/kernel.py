"""Facts read from the running kernel without BPF: symbols, netns names, drop-reason names.

Pure Python over /proc and /sys; every function takes its source path so tests can feed it files.
"""
import bisect
import os

from pktpath.errors import UserError

NETNS_DIR = "/run/netns"


class Kallsyms:
    """Address -> "function+0xoff" from /proc/kallsyms (text symbols only)."""

    def __init__(self, path="/proc/kallsyms"):
        self._addrs, self._names = [], []
        self._cache = {}
        try:
            with open(path) as f:
                rows = []
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tT":
                        rows.append((int(parts[0], 16), parts[2]))
        except OSError:
            rows = []
        rows.sort()
        if rows and rows[-1][0] == 0:   # kptr_restrict hides addresses: nothing to symbolize
            rows = []
        self._addrs = [a for a, _ in rows]
        self._names = [n for _, n in rows]

    def __call__(self, addr):
        if not addr:
            return None
        s = self._cache.get(addr)
        if s is None:
            i = bisect.bisect_right(self._addrs, addr) - 1
            s = "%s+0x%x" % (self._names[i], addr - self._addrs[i]) if i >= 0 else "0x%x" % addr
            self._cache[addr] = s
        return s

    def __contains__(self, name):
        if not hasattr(self, "_nameset"):
            self._nameset = set(self._names)
        return name in self._nameset


def symbol_address(name, path="/proc/kallsyms"):
    """Address of kernel symbol `name` (data symbols too), or None (absent, or hidden by
    kptr_restrict)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == name:
                    return int(parts[0], 16) or None
    except OSError:
        pass
    return None


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


def drop_reasons(btf):
    """{code: "NAME"} of enum skb_drop_reason, from the running kernel's BTF."""
    out = {}
    for name, val in btf.enum("skb_drop_reason").items():
        out[val] = name[len("SKB_DROP_REASON_"):] if name.startswith("SKB_DROP_REASON_") else name
    return out
