"""The event record: ctypes mirror of `struct pp_event` (bpf/pktpath.h) and its decoding.

tests/test_events.py parses bpf/pktpath.h and checks this mirror field by field.
"""
import ctypes
import socket
import struct

DEV_LEN = 16
KINDS = ("pass", "drop", "deliver")
F_ENCAP = 1
F_FROM_MAP = 2


class RawEvent(ctypes.Structure):
    """Mirror of struct pp_event in bpf/pktpath.h."""
    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("skb", ctypes.c_uint64),
        ("location", ctypes.c_uint64),
        ("id", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("vni", ctypes.c_uint32),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("osaddr", ctypes.c_uint32),
        ("odaddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("osport", ctypes.c_uint16),
        ("odport", ctypes.c_uint16),
        ("hook", ctypes.c_uint16),
        ("cpu", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("dev", ctypes.c_char * DEV_LEN),
        ("stack_id", ctypes.c_int32),
    ]


# the same layout for struct.unpack_from, which is several times faster than ctypes per event
_FMT = struct.Struct("<QQQ9I6HBBH%dsi" % DEV_LEN)
assert _FMT.size == ctypes.sizeof(RawEvent)
SIZE = _FMT.size


def _ip(addr):
    return socket.inet_ntoa(struct.pack("<I", addr))


class Decoder:
    """Turns raw event bytes into event dicts (see docs/DESIGN.md).

    hook_names: list indexed by the event's hook number; reasons: {code: name};
    symbolize: address -> "func+0xoff" (or None).
    """

    def __init__(self, hook_names, reasons=None, symbolize=None):
        self.hook_names = list(hook_names)
        self.reasons = reasons or {}
        self.symbolize = symbolize or (lambda addr: "0x%x" % addr)
        self._ipcache = {}

    def _ip(self, addr):
        s = self._ipcache.get(addr)
        if s is None:
            s = self._ipcache[addr] = _ip(addr)
        return s

    def decode(self, data):
        (ts, skb, location, pid, netns, ifindex, reason, vni, saddr, daddr, osaddr, odaddr,
         sport, dport, osport, odport, hook, cpu, kind, flags, port, dev, stack_id) = \
            _FMT.unpack_from(data)
        encap = bool(flags & F_ENCAP)
        kind_name = KINDS[kind] if kind < len(KINDS) else "pass"
        is_drop = kind_name == "drop"
        ip = self._ip
        ev = {
            "t_ns": ts,
            "hook": self.hook_names[hook] if hook < len(self.hook_names) else "hook%d" % hook,
            "kind": kind_name,
            "id": pid,
            "skb": skb,
            "cpu": cpu,
            "dev": dev.split(b"\0", 1)[0].decode(errors="replace"),
            "ifindex": ifindex,
            "netns": netns,
            "encap": encap,
            "vni": vni if encap else None,
            "src": "%s:%d" % (ip(saddr), sport),
            "dst": "%s:%d" % (ip(daddr), dport),
            "outer_src": "%s:%d" % (ip(osaddr), osport) if encap else None,
            "outer_dst": "%s:%d" % (ip(odaddr), odport) if encap else None,
            "reason": self.reasons.get(reason, str(reason)) if is_drop else None,
            "reason_code": reason if is_drop else None,
            "location": self.symbolize(location) if is_drop else None,
            "port": port if kind_name == "deliver" else None,
            "from_map": bool(flags & F_FROM_MAP),
        }
        if stack_id >= 0 and is_drop:
            ev["stack_id"] = stack_id
        return ev
