"""The ctypes mirror in pktpath/events.py must match struct pp_event in bpf/pktpath.h."""
import ctypes
import os
import re
import socket
import struct

import pytest

from pktpath.events import records

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "pktpath.h")
C_SIZES = {"__u64": 8, "__u32": 4, "__s32": 4, "__u16": 2, "__u8": 1, "char": 1}


def c_fields(struct_name):
    """[(name, size, align)] of a struct in the C header (its fields parsed from the text)."""
    text = open(HEADER).read()
    consts = dict((k, int(v)) for k, v in re.findall(r"#define (PP_\w+)\s+(\d+)\b", text))
    body = re.search(r"struct %s \{(.*?)\};" % struct_name, text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    out = []
    for ctype, name in re.findall(r"(__u64|__u32|__s32|__u16|__u8|char|struct \w+)\s+([^;]+);",
                                  body):
        m = re.match(r"(\w+)\[(\w+)\]", name.strip())
        if ctype.startswith("struct "):
            sub = c_fields(ctype.split()[1])
            size, align = _layout(sub)
        else:
            size = align = C_SIZES[ctype]
        if m:
            out.append((m.group(1), size * consts[m.group(2)], align))
        else:
            out.append((name.strip(), size, align))
    return out


def _layout(fields):
    off, maxalign = 0, 1
    for _name, size, align in fields:
        off = (off + align - 1) // align * align + size
        maxalign = max(maxalign, align)
    return (off + maxalign - 1) // maxalign * maxalign, maxalign


@pytest.mark.parametrize("cname,pyclass", [("pp_event", records.RawEvent),
                                           ("pp_hop", records.RawHop),
                                           ("pp_path", records.RawPath)])
def test_mirror_matches_header(cname, pyclass):
    c = c_fields(cname)
    assert [(n, s) for n, s, _a in c] == [(n, ctypes.sizeof(t)) for n, t in pyclass._fields_]
    off = 0
    for name, size, align in c:
        off = (off + align - 1) // align * align
        assert getattr(pyclass, name).offset == off, name
        off += size
    assert ctypes.sizeof(pyclass) == _layout(c)[0]


def _raw(**kw):
    ev = records.RawEvent()
    for k, v in kw.items():
        setattr(ev, k, v)
    return bytes(ev)


def _addr(ip):
    return struct.unpack("<I", socket.inet_aton(ip))[0]


def test_decode_encapsulated_drop():
    data = _raw(ts=5, skb=0xffff888000001000, location=0xffffffff81000010, id=17, netns=4026532315,
                ifindex=3, reason=110, vni=42, saddr=_addr("198.51.100.1"),
                daddr=_addr("198.51.100.2"), osaddr=_addr("192.0.2.1"), odaddr=_addr("192.0.2.2"),
                sport=40000, dport=5000, osport=51000, odport=4789, hook=1, cpu=1, kind=1,
                flags=records.F_ENCAP, dev=b"pp-ul")
    d = records.Decoder(["a", "kfree_skb"], {110: "VXLAN_VNI_NOT_FOUND"},
                       lambda a: "vxlan_rcv+0x10").decode(data)
    assert d["hook"] == "kfree_skb" and d["kind"] == "drop" and d["id"] == 17
    assert d["src"] == "198.51.100.1:40000" and d["dst"] == "198.51.100.2:5000"
    assert d["outer_src"] == "192.0.2.1:51000" and d["outer_dst"] == "192.0.2.2:4789"
    assert d["vni"] == 42 and d["encap"] is True
    assert d["reason"] == "VXLAN_VNI_NOT_FOUND" and d["reason_code"] == 110
    assert d["location"] == "vxlan_rcv+0x10" and d["dev"] == "pp-ul" and d["port"] is None


def test_decode_plain_deliver():
    d = records.Decoder(["sk_data_ready"]).decode(
        _raw(id=3, kind=2, port=5000, saddr=_addr("10.0.0.1"), dport=5000))
    assert d["kind"] == "deliver" and d["port"] == 5000
    assert d["vni"] is None and d["outer_src"] is None and d["reason"] is None


def test_decode_path_expands_hops_and_skips_unset_slots():
    path = records.RawPath(first_ts=1000, skb=7, id=42, saddr=_addr("198.51.100.1"),
                          daddr=_addr("198.51.100.2"), sport=1, dport=5000, has_encap=1, vni=42,
                          osaddr=_addr("192.0.2.1"), odaddr=_addr("192.0.2.2"), odport=4789,
                          final_kind=1, reason=3, location=0x10, nhops=4, stack_id=-1)
    for i, (hook, kind, flags) in enumerate([(0, 0, records.F_HOP_SET),
                                             (1, 0, records.F_HOP_SET | records.F_ENCAP),
                                             (0, 0, 0),   # slot lost to a race: skipped
                                             (2, 1, records.F_HOP_SET)]):
        path.hops[i].dt, path.hops[i].hook, path.hops[i].kind = i * 10, hook, kind
        path.hops[i].flags, path.hops[i].dev = flags, b"d%d" % i
    data = bytes(path)[:records.path_used_bytes(bytes(path))]
    evs = records.PathDecoder(["a", "b", "kfree_skb"], {3: "NO_SOCKET"},
                             lambda a: "f+0x10").decode_path(data)
    assert [e["hook"] for e in evs] == ["a", "b", "kfree_skb"]
    assert [e["t_ns"] for e in evs] == [1000, 1010, 1030]
    assert evs[1]["encap"] and evs[1]["vni"] == 42 and evs[1]["outer_dst"] == "192.0.2.2:4789"
    assert not evs[0]["encap"] and evs[0]["outer_dst"] is None
    assert evs[2]["kind"] == "drop" and evs[2]["reason"] == "NO_SOCKET"
    assert evs[2]["location"] == "f+0x10" and evs[2]["id"] == 42


def test_path_record_shorter_than_nhops():
    """The emitter sends the hops it claimed; another CPU may have bumped nhops since. Only the
    hops carried by the record are decoded, and path_key agrees."""
    path = records.RawPath(first_ts=5, id=9, final_kind=2, nhops=3, stack_id=-1)
    for i in range(3):
        path.hops[i].hook, path.hops[i].flags = 0, records.F_HOP_SET
    data = bytes(path)[:records.PATH_HDR + 2 * records.HOP_SIZE]   # 2 hops carried, nhops 3
    assert records.path_key(data) == (9, 2, records.KIND_DELIVER)
    evs = records.PathDecoder(["a"]).decode_path(data)
    assert len(evs) == 2


def _random_delivered(rng, pid):
    p = records.RawPath(first_ts=rng.randrange(1, 10 ** 12), id=pid, final_kind=2,
                       saddr=rng.randrange(2 ** 32), daddr=rng.randrange(2 ** 32),
                       sport=rng.randrange(65536), dport=5000, port=5000, stack_id=-1,
                       has_encap=rng.choice([0, 1]), vni=rng.choice([0, 42]),
                       osaddr=rng.randrange(2 ** 32), odaddr=rng.randrange(2 ** 32),
                       osport=rng.randrange(65536), odport=4789)
    n = rng.randrange(1, 12)
    p.nhops = n
    dt = 0
    for i in range(n):
        h = p.hops[i]
        dt += rng.choice([0, 1, 700, 12345])
        h.dt, h.hook, h.kind = dt, rng.randrange(5), 2 if i == n - 1 else 0
        h.flags = records.F_HOP_SET | (records.F_ENCAP if rng.random() < 0.3 else 0)
        h.netns, h.ifindex, h.cpu = rng.choice([0, 4026531840, 4026532315]), i, rng.randrange(4)
        h.dev = rng.choice([b"", b"eth0", b"pp-vx", b'we"ird\\\xc3\xa9'])
    return bytes(p)[:records.PATH_HDR + n * records.HOP_SIZE]


def test_delivered_json_is_the_general_path_to_the_byte():
    """DeliveredJSON must write exactly what decode -> build_packets -> write_json writes."""
    import io
    import random
    from pktpath.process import reconstruct
    from pktpath.output import report
    rng = random.Random(7)
    dec = records.PathDecoder(["a", "b", "c"])           # hook 3, 4: names past the list
    fast = records.DeliveredJSON(dec)
    names = {4026531840: "root", 4026532315: 'pp-"ctrA"'}
    for pid in range(400):
        rec = _random_delivered(rng, pid)
        ref = io.StringIO()
        report.write_json(reconstruct.build_packets(dec.decode_path(rec), names), ref)
        assert fast(rec, names) == ref.getvalue()


def test_delivered_json_declines_what_it_does_not_cover():
    dec = records.PathDecoder(["a"])
    fast = records.DeliveredJSON(dec)
    rng = __import__("random").Random(1)
    rec = bytearray(_random_delivered(rng, 1))
    rec[records.RawPath.final_kind.offset] = 1                    # a drop
    assert fast(bytes(rec), {}) is None
    p = records.RawPath(id=2, final_kind=2, nhops=2, stack_id=-1)
    p.hops[0].flags = 0                                          # slot lost to a race
    p.hops[1].flags, p.hops[1].kind = records.F_HOP_SET, 2
    assert fast(bytes(p)[:records.PATH_HDR + 2 * records.HOP_SIZE], {}) is None
