"""Facts read from the running kernel without BPF: kernel symbols and drop-reason names.

Pure Python over /proc and /sys; every function takes its source path so tests can feed it files.
"""
import bisect
import os
import re

from pktpath.errors import UserError

_TEXT_SYM = re.compile(rb"^([0-9a-f]+) [tT] (\S+)", re.M)


class Kallsyms:
    """Address -> "function+0xoff" from /proc/kallsyms (text symbols), plus the addresses of
    any symbol by name (`address`). Read once; the text symbols are parsed on first use only
    (~0.1 s: not on the start-up path when the program needs no function symbols)."""

    def __init__(self, path="/proc/kallsyms"):
        self._path = path
        self._cache = {}
        self._bytes = None
        self._loaded = None

    def _raw(self):
        """The file's bytes, read once (one read: ~40 ms; parsing the lines costs more)."""
        if self._bytes is None:
            try:
                with open(self._path, "rb") as f:
                    self._bytes = f.read()
            except OSError:
                self._bytes = b""
        return self._bytes

    def _load(self):
        if self._loaded is None:
            rows = sorted((int(a, 16), n.decode()) for a, n in _TEXT_SYM.findall(self._raw()))
            if rows and rows[-1][0] == 0:   # kptr_restrict hides addresses
                rows = []
            self._loaded = ([a for a, _ in rows], [n for _, n in rows])
        return self._loaded

    @property
    def _addrs(self):
        return (self._loaded or self._load())[0]

    @property
    def _names(self):
        return (self._loaded or self._load())[1]

    def address(self, name):
        """Address of symbol `name` (data symbols too), or None (data symbols are listed only
        with CONFIG_KALLSYMS_ALL; addresses hidden by kptr_restrict). Needs no parse."""
        raw, key = self._raw(), b" " + name.encode() + b"\n"
        i = raw.find(key)
        while i >= 0:
            fields = raw[raw.rfind(b"\n", 0, i) + 1:i].split()   # address, type
            if len(fields) == 2:
                return int(fields[0], 16) or None
            i = raw.find(key, i + 1)
        return None

    def __call__(self, addr):
        if not addr:
            return None
        s = self._cache.get(addr)
        if s is None:
            addrs, names = self._addrs, self._names
            i = bisect.bisect_right(addrs, addr) - 1
            s = "%s+0x%x" % (names[i], addr - addrs[i]) if i >= 0 else "0x%x" % addr
            self._cache[addr] = s
        return s

    def __contains__(self, name):
        """Whether function `name` can be probed: True when unknown (no symbols readable)."""
        if not hasattr(self, "_nameset"):
            self._nameset = set(self._names)
        return not self._nameset or name in self._nameset


def drop_reasons(btf):
    """{code: "NAME"} of enum skb_drop_reason, from the running kernel's BTF."""
    out = {}
    for name, val in btf.enum("skb_drop_reason").items():
        out[val] = name[len("SKB_DROP_REASON_"):] if name.startswith("SKB_DROP_REASON_") else name
    return out
