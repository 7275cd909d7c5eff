"""The event record: ctypes mirror of `struct pp_event` (bpf/pktpath.h) and its decoding.

tests/test_events.py parses bpf/pktpath.h and checks this mirror field by field.
"""
import ctypes
import json
import socket
import struct

DEV_LEN = 16
KINDS = ("pass", "drop", "deliver")
F_ENCAP = 1
F_FROM_MAP = 2
F_HOP_SET = 0x80


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


def _dev(raw):
    """A device name from its NUL-padded bytes."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


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

    def hook_name(self, hook):
        return self.hook_names[hook] if hook < len(self.hook_names) else "hook%d" % hook

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
            "hook": self.hook_name(hook),
            "kind": kind_name,
            "id": pid,
            "skb": skb,
            "cpu": cpu,
            "dev": _dev(dev),
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


# ---- summary mode: one struct pp_path per packet (bpf/pktpath.h) ----
MAX_HOPS = 32


class RawHop(ctypes.Structure):
    """Mirror of struct pp_hop in bpf/pktpath.h."""
    _fields_ = [
        ("dt", ctypes.c_uint32),
        ("hook", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("ifindex", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("cpu", ctypes.c_uint16),
        ("_hpad", ctypes.c_uint16),
        ("dev", ctypes.c_char * DEV_LEN),
    ]


class RawPath(ctypes.Structure):
    """Mirror of struct pp_path in bpf/pktpath.h."""
    _fields_ = [
        ("first_ts", ctypes.c_uint64),
        ("last_ts", ctypes.c_uint64),
        ("skb", ctypes.c_uint64),
        ("location", ctypes.c_uint64),
        ("id", ctypes.c_uint32),
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
        ("port", ctypes.c_uint16),
        ("final_kind", ctypes.c_uint8),
        ("has_encap", ctypes.c_uint8),
        ("nhops", ctypes.c_uint32),
        ("stack_id", ctypes.c_int32),
        ("last_skb", ctypes.c_uint64),
        ("last_head", ctypes.c_uint64),
        ("last_tail", ctypes.c_uint32),
        ("_pad2", ctypes.c_uint32),
        ("hops", RawHop * MAX_HOPS),
    ]


_PATH = struct.Struct("<QQQQ7I5HBBIiQQII")
_HOP = struct.Struct("<IHBBIIHH%ds" % DEV_LEN)
assert _PATH.size == RawPath.hops.offset and _HOP.size == ctypes.sizeof(RawHop)
PATH_SIZE = ctypes.sizeof(RawPath)
PATH_HDR, HOP_SIZE, NHOPS_OFFSET = _PATH.size, _HOP.size, RawPath.nhops.offset
LAST_TS_OFFSET = RawPath.last_ts.offset


# what a live trace needs of a record before decoding it (see path_key)
_ID_OFF, _FINAL_OFF = RawPath.id.offset, RawPath.final_kind.offset
KIND_DELIVER = KINDS.index("deliver")


# id, final_kind and nhops in one unpack (they are 40 bytes apart in the header)
_KEY = struct.Struct("<I%dxB%dxI" % (_FINAL_OFF - _ID_OFF - 4,
                                     NHOPS_OFFSET - _FINAL_OFF - 1)).unpack_from


def path_key(data):
    """(packet ID, hops carried, final kind) of a pp_path record, without decoding it. A record
    carries the hops its emitter claimed; another CPU may have claimed more since (nhops)."""
    pid, final, nhops = _KEY(data, _ID_OFF)
    carried = (len(data) - PATH_HDR) // HOP_SIZE
    return pid, nhops if nhops < carried else carried, final


def path_last_ts(data):
    """A pp_path record's last sighting (kernel monotonic ns)."""
    return struct.unpack_from("<Q", data, LAST_TS_OFFSET)[0]


def path_used_bytes(data):
    """How many leading bytes of a pp_path record carry data (header + recorded hops)."""
    nhops = struct.unpack_from("<I", data, NHOPS_OFFSET)[0]
    return PATH_HDR + min(nhops, MAX_HOPS) * HOP_SIZE


class PathDecoder(Decoder):
    """Expands one pp_path record into the same event dicts as Decoder (one per hop), so that
    everything downstream works the same in both modes. Hops past MAX_HOPS are counted in
    `truncated`."""

    truncated = 0

    def decode_path(self, data):
        (first_ts, _last, skb, location, pid, reason, vni, saddr, daddr, osaddr, odaddr,
         sport, dport, osport, odport, port, final_kind, has_encap, nhops, stack_id, _ls, _lh, _lt, _p2) = \
            _PATH.unpack_from(data)
        if nhops > MAX_HOPS:
            self.truncated += nhops - MAX_HOPS
        ip = self._ip
        src, dst = "%s:%d" % (ip(saddr), sport), "%s:%d" % (ip(daddr), dport)
        osrc = "%s:%d" % (ip(osaddr), osport) if has_encap else None
        odst = "%s:%d" % (ip(odaddr), odport) if has_encap else None
        out = []
        # a record carries the hops its emitter claimed; another CPU may have claimed more since
        for i in range(min(nhops, MAX_HOPS, (len(data) - _PATH.size) // _HOP.size)):
            dt, hook, kind, flags, ifindex, netns, cpu, _p, dev = \
                _HOP.unpack_from(data, _PATH.size + i * _HOP.size)
            if not flags & F_HOP_SET:
                continue  # a slot lost to a race between CPUs (see pp_summary)
            encap = bool(flags & F_ENCAP)
            kind_name = KINDS[kind] if kind < len(KINDS) else "pass"
            final = kind_name != "pass" and kind == final_kind
            ev = {
                "t_ns": first_ts + dt,
                "hook": self.hook_name(hook),
                "kind": kind_name,
                "id": pid,
                "skb": skb,
                "cpu": cpu,
                "dev": _dev(dev),
                "ifindex": ifindex,
                "netns": netns,
                "encap": encap,
                "vni": vni if encap else None,
                "src": src,
                "dst": dst,
                "outer_src": osrc if encap else None,
                "outer_dst": odst if encap else None,
                "reason": None, "reason_code": None, "location": None, "port": None,
                "from_map": bool(flags & F_FROM_MAP),
            }
            if kind_name == "drop":
                ev["reason"] = self.reasons.get(reason, str(reason)) if final else None
                ev["reason_code"] = reason if final else None
                ev["location"] = self.symbolize(location) if final else None
                if final and stack_id >= 0:
                    ev["stack_id"] = stack_id
            elif kind_name == "deliver":
                ev["port"] = port if final else None
            out.append(ev)
        return out


class DeliveredJSON:
    """The `--json` line of a packet whose only record is a plain delivery, written straight from
    the record: the same text as report.write_json(reconstruct.build_packets(decode_path(r)))
    (tests/test_events.py checks it), at a fraction of the cost (no event or packet dicts; the
    parts of a hop that repeat from packet to packet are rendered once). Returns None for any
    record that needs the general path (a drop, a hop slot lost to a race, hops out of order,
    more than one delivery, truncated hops)."""

    def __init__(self, decoder):
        self.d = decoder
        self._head = {}     # (hook, dev bytes, netns) -> rendered '"hook":..,"netns_name":..,'
        self._tail = {}     # (encap, vni, addresses) -> rendered '"encap":..}'
        self._names = None

    def __call__(self, data, names):
        (first_ts, _l, _skb, _loc, pid, _r, vni, saddr, daddr, osaddr, odaddr, sport, dport,
         osport, odport, port, final_kind, has_encap, nhops, _st, _ls, _lh, _lt, _p2) = \
            _PATH.unpack_from(data)
        n = (len(data) - _PATH.size) // _HOP.size
        if final_kind != KIND_DELIVER or nhops > MAX_HOPS or nhops != n or n == 0:
            return None
        if names is not self._names:
            self._head.clear()      # netns names changed: re-render
            self._names = names
        ip, dumps = self.d._ip, json.dumps
        src, dst = "%s:%d" % (ip(saddr), sport), "%s:%d" % (ip(daddr), dport)
        osrc = "%s:%d" % (ip(osaddr), osport) if has_encap else None
        odst = "%s:%d" % (ip(odaddr), odport) if has_encap else None
        parts, prev = [], -1
        for i in range(n):
            dt, hook, kind, flags, ifindex, netns, cpu, _p, dev = \
                _HOP.unpack_from(data, _PATH.size + i * _HOP.size)
            if not flags & F_HOP_SET or dt < prev or kind != (KIND_DELIVER if i == n - 1 else 0):
                return None
            prev = dt
            key = (hook, dev, netns)
            head = self._head.get(key)
            if head is None:
                name = self.d.hook_name(hook)
                head = self._head[key] = '"hook":%s,"dev":%s,"netns":%d,"netns_name":%s,' % (
                    dumps(name), dumps(_dev(dev)), netns,
                    dumps(names.get(netns)))
            encap = bool(flags & F_ENCAP)
            tkey = (encap, vni, src, dst, osrc, odst)
            tail = self._tail.get(tkey)
            if tail is None:
                if len(self._tail) > 4096:
                    self._tail.clear()
                tail = self._tail[tkey] = '"encap":%s,"vni":%s,"src":%s,"dst":%s,' \
                    '"outer_src":%s,"outer_dst":%s}' % (
                        dumps(encap), dumps(vni if encap else None), dumps(src), dumps(dst),
                        dumps(osrc if encap else None), dumps(odst if encap else None))
            parts.append('{"t_ns":%d,%s"cpu":%d,%s' % (first_ts + dt, head, cpu, tail))
        name = self.d.hook_name(hook)
        devs = dumps(_dev(dev))
        nsname = dumps(names.get(netns))
        first = first_ts + _HOP.unpack_from(data, _PATH.size)[0]
        return ('{"id":%d,"verdict":"delivered","events":%d,"first_ns":%d,"last_ns":%d,'
                '"last":{"hook":%s,"dev":%s,"ifindex":%d,"netns":%d,"netns_name":%s},'
                '"drop":null,"delivered":{"netns":%d,"netns_name":%s,"port":%d},'
                '"path":[%s]}\n' % (pid, n, first, first_ts + dt, dumps(name), devs, ifindex,
                                    netns, nsname, netns, nsname, port, ",".join(parts)))
