"""The kernel's records, derived from bpf/pktpath.h, and their decoding.

bpf/pktpath.h declares every record, map key and counter that user space reads. This module
parses it (#defines, enums, struct bodies: the subset the header's comment names) and derives
from it, once at import, each record's layout: its flattened fields ("inner.saddr",
"tun.outer.dport", ...), their offsets, and a struct.Struct over them (unpack_from with a
precomputed format is the fast way to read a record). Nothing here repeats the header by hand;
tests/unit/test_events.py parses the header independently and checks both agree.
"""
import json
import os
from operator import itemgetter
import re
import socket
import struct

from pktpath.paths import data_dir

HEADER = os.path.join(data_dir("bpf"), "pktpath.h")

_SCALARS = {"__u64": "Q", "__u32": "I", "__s32": "i", "__u16": "H", "__u8": "B", "char": "B"}


class Layout:
    """One C struct of the header: `fields` [(flat name, offset, size, struct code)] of its
    leaves in order (arrays of scalars are one bytes field, code "<n>s"); `arrays` {name:
    (offset, element Layout, count)} for arrays of structs, which are not in `fmt`; `fmt` a
    little-endian struct.Struct of the leaves from offset 0 up to the first struct array (or
    the end), with its padding."""

    def __init__(self, name, size, align, fields, arrays):
        self.name, self.size, self.align = name, size, align
        self.fields, self.arrays = fields, arrays
        self.offsets = {f[0]: f[1] for f in fields}
        self.names = tuple(f[0] for f in fields)
        end = min([a[0] for a in arrays.values()] or [size])
        fmt, pos = "<", 0
        for _name, off, size_, code in fields:
            if off >= end:
                break
            if off > pos:
                fmt += "%dx" % (off - pos)
            fmt += code
            pos = off + size_
        if end > pos:
            fmt += "%dx" % (end - pos)
        self.fmt = struct.Struct(fmt)
        self.hdr_size = end

    def offset(self, name):
        return self.offsets[name] if name in self.offsets else self.arrays[name][0]

    def pack(self, values=(), **kw):
        """The record's bytes (up to any struct array) with `values` ({flat name: value},
        and/or keywords with "__" for "."); unnamed fields are zero."""
        v = dict(values)
        v.update({k.replace("__", "."): x for k, x in kw.items()})
        unknown = set(v) - set(self.names)
        if unknown:
            raise KeyError("%s has no field %s" % (self.name, ", ".join(sorted(unknown))))
        return self.fmt.pack(*[v.get(n, b"" if code.endswith("s") else 0)
                               for n, _o, _s, code in self.fields if _o < self.hdr_size])

    def unpack(self, data, offset=0):
        """{flat name: value} of a record (up to any struct array)."""
        return dict(zip(self.names, self.fmt.unpack_from(data, offset)))


def parse_header(text):
    """(defines {NAME: int}, enums {enum name: [member names in order]}, layouts {struct
    name: Layout}) from the header's text."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    defines = {k: int(v, 0) for k, v in
               re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M)}
    enums = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*\{(.*?)\}", text, re.S):
        members = [m.strip() for m in body.split(",") if m.strip()]
        if any("=" in m for m in members):
            raise ValueError("enum %s: explicit values not supported" % name)
        enums[name] = members
    layouts = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, re.S):
        layouts[name] = _layout(name, body, defines, layouts)
    return defines, enums, layouts


def _layout(sname, body, defines, layouts):
    fields, arrays, off, align = [], {}, 0, 1
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        m = re.fullmatch(r"(struct\s+\w+|\w+)\s+(\w+)(?:\s*\[\s*(\w+)\s*\])?", decl)
        if not m:
            raise ValueError("struct %s: cannot read %r" % (sname, decl))
        ctype, name, count = m.groups()
        n = None if count is None else (int(count) if count.isdigit() else defines[count])
        if ctype.startswith("struct"):
            sub = layouts[ctype.split()[1]]
            off = -(-off // sub.align) * sub.align
            if n is not None:
                arrays[name] = (off, sub, n)
                off += sub.size * n
            else:
                fields += [(name + "." + f, off + o, s, c) for f, o, s, c in sub.fields]
                for a, (ao, el, an) in sub.arrays.items():
                    arrays[name + "." + a] = (off + ao, el, an)
                off += sub.size
            align = max(align, sub.align)
            continue
        code = _SCALARS[ctype]
        size = struct.calcsize("<" + code)
        off = -(-off // size) * size
        if n is None:
            fields.append((name, off, size, code))
        else:
            fields.append((name, off, size * n, "%ds" % (size * n)))
            size *= n
        off += size
        align = max(align, struct.calcsize("<" + code))
    size = -(-off // align) * align
    fields = [f for f in fields if not f[0].rsplit(".", 1)[-1].startswith("_")]
    return Layout(sname, size, align, fields, arrays)


with open(HEADER) as _f:
    DEFINES, ENUMS, LAYOUTS = parse_header(_f.read())

EVENT, HOP, PATH = LAYOUTS["pp_event"], LAYOUTS["pp_hop"], LAYOUTS["pp_path"]
DROPKEY = LAYOUTS["pp_dropkey"]

DEV_LEN = DEFINES["PP_DEV_LEN"]
MAX_HOPS = DEFINES["PP_MAX_HOPS"]
KINDS = tuple(k[len("PP_KIND_"):].lower() for k, _v in
              sorted(((k, v) for k, v in DEFINES.items() if k.startswith("PP_KIND_")),
                     key=lambda kv: kv[1]))
F_ENCAP = DEFINES["PP_F_ENCAP"]
F_FROM_MAP = DEFINES["PP_F_FROM_MAP"]
F_DATA = DEFINES["PP_F_DATA"]
F_REWRITTEN = DEFINES["PP_F_REWRITTEN"]
F_HOP_SET = DEFINES["PP_F_HOP_SET"]
TUN_NONE = DEFINES["PP_TUN_NONE"]
# tunnel type -> its name in the output (PP_TUN_VXLAN -> "vxlan"); PP_TUN_NONE -> None
TUNNELS = {v: k[len("PP_TUN_"):].lower() for k, v in DEFINES.items()
           if k.startswith("PP_TUN_") and v != TUN_NONE}
# counter index -> name (PP_CNT_LOST -> "lost"); INTERNAL ones are not reported
COUNTERS = tuple(c[len("PP_CNT_"):].lower() for c in ENUMS["pp_counter"] if c != "PP_CNT_COUNT")
INTERNAL_COUNTERS = ("submitted",)

SIZE = EVENT.size
PATH_SIZE = PATH.size
PATH_HDR, HOP_SIZE = PATH.hdr_size, HOP.size
NHOPS_OFFSET = PATH.offset("nhops")
LAST_TS_OFFSET = PATH.offset("last_ts")
KIND_DELIVER = KINDS.index("deliver")
assert PATH.arrays["hops"][0] == PATH_HDR and HOP.fmt.size == HOP_SIZE

_FMT, _PATH, _HOP = EVENT.fmt, PATH.fmt, HOP.fmt
# the positions of a record's fields in its unpacked tuple
_E = {n: i for i, n in enumerate(EVENT.names)}
_P = {n: i for i, n in enumerate(PATH.names)}
_H = {n: i for i, n in enumerate(HOP.names)}
assert HOP.names == ("dt", "hook", "kind", "flags", "ifindex", "netns", "cpu", "dev")
_FLOW = ("family", "saddr", "daddr", "sport", "dport")
_EV_INNER = itemgetter(*[_E["inner." + f] for f in _FLOW])
_EV_OUTER = itemgetter(*[_E["tun.outer." + f] for f in _FLOW])
_EVENT_FIELDS = itemgetter(*[_E[n] for n in (
    "ts", "skb", "location", "id", "netns", "ifindex", "reason", "hook", "cpu", "kind", "flags",
    "port", "dev", "stack_id", "tun.vni", "tun.type")])
_PA_INNER = itemgetter(*[_P["inner." + f] for f in _FLOW])
_EV_PROTO, _PA_PROTO = _E["inner.protocol"], _P["inner.protocol"]
# transport protocol number -> its name in the output
PROTOS = {17: "udp", 6: "tcp"}
# how packets are keyed (config packet_id.from): the events' and packets' "key"
KEY_FROM = ("payload", "headers")
_PA_OUTER = itemgetter(*[_P["tun.outer." + f] for f in _FLOW])
_PA_NAT = itemgetter(*[_P["nat." + f] for f in _FLOW])
_PA_NAT_HOP = itemgetter(_P["nat_hop"])


def format_host(family, addr):
    """An address's text: "198.51.100.1" (family 4, or 0: not parsed, all zero) or
    "[2001:db8::1]" (family 6). `addr` is the record's PP_ADDR_LEN bytes."""
    if family == 6:
        return "[%s]" % socket.inet_ntop(socket.AF_INET6, addr[:16])
    return socket.inet_ntoa(addr[:4])


def format_addr(family, addr, port):
    """(family, address bytes, port) -> "198.51.100.1:5000" or "[2001:db8::1]:5000"."""
    return "%s:%d" % (format_host(family, addr), port)


def _dev(raw):
    """A device name from its NUL-padded bytes."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class Decoder:
    """Turns raw event bytes into event dicts (see docs/DESIGN.md).

    hook_names: list indexed by the event's hook number; reasons: {code: name};
    symbolize: address -> "func+0xoff" (or None).
    """

    def __init__(self, hook_names, reasons=None, symbolize=None, key=None):
        self.hook_names = list(hook_names)
        # "payload" or "headers" (KEY_FROM): events then carry "key" and "proto", and packets
        # their key, proto and flow (events/schema.py); None: neither (older recordings)
        self.key = key
        self.reasons = reasons or {}
        self.symbolize = symbolize or (lambda addr: "0x%x" % addr)
        self._hosts = ({}, {})     # (IPv4-or-unparsed, IPv6): address bytes -> text

    def hook_name(self, hook):
        return self.hook_names[hook] if hook < len(self.hook_names) else "hook%d" % hook

    def _host(self, family, addr):
        cache = self._hosts[family == 6]
        s = cache.get(addr)
        if s is None:
            if len(cache) > 65536:
                cache.clear()
            s = cache[addr] = format_host(family, addr)
        return s

    def _flows(self, t, inner, outer, encap):
        """(src, dst, outer_src, outer_dst) texts from an unpacked record `t`."""
        fam, sa, da, sp, dp = inner(t)
        cache = self._hosts[fam == 6]
        src = "%s:%d" % (cache.get(sa) or self._host(fam, sa), sp)
        dst = "%s:%d" % (cache.get(da) or self._host(fam, da), dp)
        if not encap:
            return src, dst, None, None
        fam, sa, da, sp, dp = outer(t)
        cache = self._hosts[fam == 6]
        return (src, dst, "%s:%d" % (cache.get(sa) or self._host(fam, sa), sp),
                "%s:%d" % (cache.get(da) or self._host(fam, da), dp))

    def decode(self, data):
        t = _FMT.unpack_from(data)
        (ts, skb, location, pid, netns, ifindex, reason, hook, cpu, kind, flags, port, dev,
         stack_id, vni, tun) = _EVENT_FIELDS(t)
        encap = bool(flags & F_ENCAP)
        kind_name = KINDS[kind] if kind < len(KINDS) else "pass"
        is_drop = kind_name == "drop"
        src, dst, osrc, odst = self._flows(t, _EV_INNER, _EV_OUTER, encap)
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
            "tunnel": TUNNELS.get(tun, str(tun)) if encap else None,
            "vni": vni if encap else None,
            "src": src,
            "dst": dst,
            "outer_src": osrc,
            "outer_dst": odst,
            "reason": self.reasons.get(reason, str(reason)) if is_drop else None,
            "reason_code": reason if is_drop else None,
            "location": self.symbolize(location) if is_drop else None,
            "port": port if kind_name == "deliver" else None,
            "from_map": bool(flags & F_FROM_MAP),
        }
        if self.key:
            ev["key"] = self.key
            p = t[_EV_PROTO]
            ev["proto"] = PROTOS.get(p) or str(p)
        if stack_id >= 0 and is_drop:
            ev["stack_id"] = stack_id
        if flags & F_DATA:
            ev["tcp_data"] = True   # tcp_probe: the segment has data (or FIN)
        if flags & F_REWRITTEN:
            ev["rewritten"] = True  # not the filter's flow: the ID is the skb map's (NAT)
        return ev


# what events mode needs of an event before decoding it: (id, netns) in one unpack (the stream
# sheds an event of an ID it does not hold past its bound: stream.MAX_EVENTS)
_EV_ID_OFF = EVENT.offset("id")
assert EVENT.offset("netns") == _EV_ID_OFF + 8
EVENT_KEY = struct.Struct("<QI").unpack_from


def event_key(data):
    """(packet ID, netns inode) of a pp_event record, without decoding it."""
    return EVENT_KEY(data, _EV_ID_OFF)


# what a live trace needs of a record before decoding it (see path_key):
# id, final_kind and nhops in one unpack
_ID_OFF, _FINAL_OFF = PATH.offset("id"), PATH.offset("final_kind")
assert _ID_OFF < _FINAL_OFF < NHOPS_OFFSET
_KEY = struct.Struct("<Q%dxB%dxI" % (_FINAL_OFF - _ID_OFF - 8,
                                     NHOPS_OFFSET - _FINAL_OFF - 1)).unpack_from
_LAST_TS = struct.Struct("<Q").unpack_from
_NHOPS = struct.Struct("<I").unpack_from


# path_key's work, for stream.PacketStream.record_adder to do inline (the live path)
PATH_KEY_FIELDS = (_KEY, _ID_OFF, PATH_HDR, HOP_SIZE)


def path_key(data):
    """(packet ID, hops carried, final kind) of a pp_path record, without decoding it. A record
    carries the hops its emitter claimed; another CPU may have claimed more since (nhops)."""
    pid, final, nhops = _KEY(data, _ID_OFF)
    carried = (len(data) - PATH_HDR) // HOP_SIZE
    return pid, nhops if nhops < carried else carried, final


def path_last_ts(data):
    """A pp_path record's last sighting (kernel monotonic ns)."""
    return _LAST_TS(data, LAST_TS_OFFSET)[0]


def path_used_bytes(data):
    """How many leading bytes of a pp_path record carry data (header + recorded hops)."""
    nhops = _NHOPS(data, NHOPS_OFFSET)[0]
    return PATH_HDR + min(nhops, MAX_HOPS) * HOP_SIZE


# the header fields the decoders use, in one itemgetter each
_PATH_FIELDS = itemgetter(*[_P[n] for n in (
    "first_ts", "skb", "location", "id", "reason", "port", "final_kind", "nhops", "stack_id",
    "tun.type", "tun.vni")])
_JSON_FIELDS = itemgetter(*[_P[n] for n in (
    "final_kind", "nhops", "first_ts", "tun.vni", "id", "port", "tun.type")])


class PathDecoder(Decoder):
    """Expands one pp_path record into the same event dicts as Decoder (one per hop), so that
    everything downstream works the same in both modes. Hops past MAX_HOPS are counted in
    `truncated`."""

    truncated = 0

    def decode_path(self, data):
        t = _PATH.unpack_from(data)
        (first_ts, skb, location, pid, reason, port, final_kind, nhops, stack_id, tun,
         vni) = _PATH_FIELDS(t)
        if nhops > MAX_HOPS:
            self.truncated += nhops - MAX_HOPS
        src, dst, osrc, odst = self._flows(t, _PA_INNER, _PA_OUTER, tun != TUN_NONE)
        tname = TUNNELS.get(tun, str(tun)) if tun != TUN_NONE else None
        key = self.key
        if key:
            proto = PROTOS.get(t[_PA_PROTO]) or str(t[_PA_PROTO])
        # NAT: from hop slot nat_hop on, the packet carried the rewritten flow
        nat_hop = _PA_NAT_HOP(t) or MAX_HOPS
        if nat_hop < MAX_HOPS:
            nsrc, ndst, _o, _d = self._flows(t, _PA_NAT, _PA_OUTER, False)
        # the kernel path this record is (of) is its key, (skb, ID), begun at first_ts: two
        # datagrams of one ID sent on two CPUs may begin their paths in the same nanosecond
        path = "%d:%x" % (first_ts, skb)
        out = []
        # a record carries the hops its emitter claimed; another CPU may have claimed more since
        for i in range(min(nhops, MAX_HOPS, (len(data) - PATH_HDR) // HOP_SIZE)):
            dt, hook, kind, flags, ifindex, netns, cpu, dev = \
                _HOP.unpack_from(data, PATH_HDR + i * HOP_SIZE)
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
                "tunnel": tname if encap else None,
                "vni": vni if encap else None,
                "src": src if i < nat_hop else nsrc,
                "dst": dst if i < nat_hop else ndst,
                "outer_src": osrc if encap else None,
                "outer_dst": odst if encap else None,
                "reason": None, "reason_code": None, "location": None, "port": None,
                "from_map": bool(flags & F_FROM_MAP),
                "path": path,       # one kernel-built path: one packet (reconstruct)
            }
            if kind_name == "drop":
                ev["reason"] = self.reasons.get(reason, str(reason)) if final else None
                ev["reason_code"] = reason if final else None
                ev["location"] = self.symbolize(location) if final else None
                if final and stack_id >= 0:
                    ev["stack_id"] = stack_id
            elif kind_name == "deliver":
                ev["port"] = port if final else None
            if key:
                ev["key"] = key
                ev["proto"] = proto
            if flags & F_DATA:
                ev["tcp_data"] = True   # tcp_probe: the segment has data (or FIN)
            out.append(ev)
        return out


class _HopParts:
    """The parts of a hop that repeat from packet to packet, rendered once each: `heads` by (hook,
    dev bytes, netns) -> render_head(decoder, hook, dev, netns, names), re-rendered when the netns
    names change; `tails` by (encap, tunnel, vni, src, dst, outer src, outer dst) ->
    render_tail(*that key)."""

    __slots__ = ("heads", "tails", "names", "render_head", "render_tail")

    def __init__(self, render_head, render_tail):
        self.heads, self.tails, self.names = {}, {}, None
        self.render_head, self.render_tail = render_head, render_tail


def _json_head(d, hook, dev, netns, names):
    dumps = json.dumps
    return '"hook":%s,"dev":%s,"netns":%d,"netns_name":%s,' % (
        dumps(d.hook_name(hook)), dumps(_dev(dev)), netns, dumps(names.get(netns)))


def _json_tail(encap, tname, vni, src, dst, osrc, odst):
    dumps = json.dumps
    return '"encap":%s,"tunnel":%s,"vni":%s,"src":%s,"dst":%s,"outer_src":%s,"outer_dst":%s}' % (
        dumps(encap), dumps((tname or "vxlan") if encap else None),
        dumps(vni if encap else None), dumps(src), dumps(dst),
        dumps(osrc if encap else None), dumps(odst if encap else None))


def _dict_head(d, hook, dev, netns, names):
    return {"hook": d.hook_name(hook), "dev": _dev(dev), "netns": netns,
            "netns_name": names.get(netns)}


def _dict_tail(encap, tname, vni, src, dst, osrc, odst):
    return {"encap": encap, "tunnel": (tname or "vxlan") if encap else None,
            "vni": vni if encap else None, "src": src, "dst": dst,
            "outer_src": osrc if encap else None, "outer_dst": odst if encap else None}


_JSON_HOP = '{"t_ns":%d,%s"cpu":%d,%s'     # (t_ns, head, cpu, tail): one hop of the path


class DeliveredJSON:
    """The `--json` line of a packet whose only record is a plain delivery, written straight from
    the record: the same text as report.write_json(reconstruct.build_packets(decode_path(r)))
    (tests/unit/test_events.py checks it), at a fraction of the cost (no event or packet dicts;
    the parts of a hop that repeat from packet to packet are rendered once). Returns None for
    any record that needs the general path (a drop, a hop slot lost to a race, hops out of
    order, more than one delivery, truncated hops)."""

    def __init__(self, decoder):
        self.d = decoder
        self._json = _HopParts(_json_head, _json_tail)     # rendered text, for __call__
        self._dict = _HopParts(_dict_head, _dict_tail)     # the hop dicts' parts, for packet()

    def _hops(self, data, names, parts):
        """What __call__ and packet() need of a plain delivery's record: (unpacked record, ID,
        port, src, dst, hops, and the last hop's hook, dev bytes, ifindex and netns), `hops` a
        list of (t_ns, head, cpu, tail) with head and tail from `parts`; None where __call__
        declines."""
        t = _PATH.unpack_from(data)
        final_kind, nhops, first_ts, vni, pid, port, tun = _JSON_FIELDS(t)
        n = (len(data) - PATH_HDR) // HOP_SIZE
        if final_kind != KIND_DELIVER or nhops > MAX_HOPS or nhops != n or n == 0 or \
                _PA_NAT_HOP(t):
            return None
        heads, tails = parts.heads, parts.tails
        if names is not parts.names:
            heads.clear()           # netns names changed: re-render
            parts.names = names
        d = self.d
        src, dst, osrc, odst = d._flows(t, _PA_INNER, _PA_OUTER, tun != TUN_NONE)
        tname = TUNNELS.get(tun, str(tun)) if tun != TUN_NONE else None
        hops, prev = [], -1
        for i in range(n):
            dt, hook, kind, flags, ifindex, netns, cpu, dev = \
                _HOP.unpack_from(data, PATH_HDR + i * HOP_SIZE)
            if not flags & F_HOP_SET or dt < prev or kind != (KIND_DELIVER if i == n - 1 else 0):
                return None
            prev = dt
            key = (hook, dev, netns)
            head = heads.get(key)
            if head is None:
                if len(heads) > 4096:
                    heads.clear()
                head = heads[key] = parts.render_head(d, hook, dev, netns, names)
            tkey = (bool(flags & F_ENCAP), tname, vni, src, dst, osrc, odst)
            tail = tails.get(tkey)
            if tail is None:
                if len(tails) > 4096:
                    tails.clear()
                tail = tails[tkey] = parts.render_tail(*tkey)
            hops.append((first_ts + dt, head, cpu, tail))
        return t, pid, port, src, dst, hops, hook, dev, ifindex, netns

    def packet(self, data, names):
        """The packet record (dict) of the same records __call__ writes, built straight from
        the record: equal, key order included, to build_packets(decode_path(data), names)[0]
        (`names`: reconstruct.ns_names, int keys; tests/unit/test_events.py checks it), at a
        third of the cost (a stop expands the kept delivered packets: up to --keep-delivered).
        None where __call__ declines."""
        r = self._hops(data, names, self._dict)
        if r is None:
            return None
        t, pid, port, src, dst, hops, _hook, _dev_raw, ifindex, netns = r
        head = hops[-1][1]
        nsname = names.get(netns)
        pkt = {"id": pid, "verdict": "delivered", "events": len(hops), "first_ns": hops[0][0],
               "last_ns": hops[-1][0],
               "last": {"hook": head["hook"], "dev": head["dev"], "ifindex": ifindex,
                        "netns": netns, "netns_name": nsname},
               "drop": None, "delivered": {"netns": netns, "netns_name": nsname, "port": port},
               "path": [{"t_ns": ts, **head, "cpu": cpu, **tail}
                        for ts, head, cpu, tail in hops]}
        if self.d.key:
            p = t[_PA_PROTO]
            pkt["key"] = self.d.key
            pkt["proto"] = PROTOS.get(p) or str(p)
            pkt["src"] = src
            pkt["dst"] = dst
        return pkt

    def __call__(self, data, names):
        r = self._hops(data, names, self._json)
        if r is None:
            return None
        t, pid, port, src, dst, hops, hook, dev, ifindex, netns = r
        dumps = json.dumps
        nsname = dumps(names.get(netns))
        flow = ""
        if self.d.key:
            p = t[_PA_PROTO]
            flow = ',"key":%s,"proto":%s,"src":%s,"dst":%s' % (
                dumps(self.d.key), dumps(PROTOS.get(p) or str(p)), dumps(src), dumps(dst))
        return ('{"id":%d,"verdict":"delivered","events":%d,"first_ns":%d,"last_ns":%d,'
                '"last":{"hook":%s,"dev":%s,"ifindex":%d,"netns":%d,"netns_name":%s},'
                '"drop":null,"delivered":{"netns":%d,"netns_name":%s,"port":%d},'
                '"path":[%s]%s}\n' % (pid, len(hops), hops[0][0], hops[-1][0],
                                      dumps(self.d.hook_name(hook)), dumps(_dev(dev)), ifindex,
                                      netns, nsname, netns, nsname, port,
                                      ",".join([_JSON_HOP % h for h in hops]), flow))
