"""The ctypes mirror in pktpath/events.py must match struct pp_event in bpf/pktpath.h."""
import ctypes
import os
import re
import socket
import struct

from pktpath import events

HEADER = os.path.join(os.path.dirname(__file__), "..", "bpf", "pktpath.h")
C_SIZES = {"__u64": 8, "__u32": 4, "__s32": 4, "__u16": 2, "__u8": 1, "char": 1}


def c_fields():
    """[(name, size)] of struct pp_event, parsed from the C header."""
    text = open(HEADER).read()
    body = re.search(r"struct pp_event \{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    out = []
    for ctype, names in re.findall(r"(__u64|__u32|__s32|__u16|__u8|char)\s+([^;]+);", body):
        for name in names.split(","):
            name = name.strip()
            m = re.match(r"(\w+)\[(\w+)\]", name)
            if m:
                out.append((m.group(1), C_SIZES[ctype] * {"PP_DEV_LEN": 16}.get(m.group(2), 0)))
            else:
                out.append((name, C_SIZES[ctype]))
    return out


def test_mirror_matches_header():
    c = c_fields()
    py = [(n, ctypes.sizeof(t)) for n, t in events.RawEvent._fields_]
    assert py == c
    # natural alignment: offsets agree too
    off = 0
    for (name, size), (pyname, _t) in zip(c, events.RawEvent._fields_):
        align = min(size, 8) if name != "dev" else 1
        off = (off + align - 1) // align * align
        assert getattr(events.RawEvent, pyname).offset == off, name
        off += size
    assert ctypes.sizeof(events.RawEvent) == events.SIZE == off


def _raw(**kw):
    ev = events.RawEvent()
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
                flags=events.F_ENCAP, dev=b"pp-ul")
    d = events.Decoder(["a", "kfree_skb"], {110: "VXLAN_VNI_NOT_FOUND"},
                       lambda a: "vxlan_rcv+0x10").decode(data)
    assert d["hook"] == "kfree_skb" and d["kind"] == "drop" and d["id"] == 17
    assert d["src"] == "198.51.100.1:40000" and d["dst"] == "198.51.100.2:5000"
    assert d["outer_src"] == "192.0.2.1:51000" and d["outer_dst"] == "192.0.2.2:4789"
    assert d["vni"] == 42 and d["encap"] is True
    assert d["reason"] == "VXLAN_VNI_NOT_FOUND" and d["reason_code"] == 110
    assert d["location"] == "vxlan_rcv+0x10" and d["dev"] == "pp-ul" and d["port"] is None


def test_decode_plain_deliver():
    d = events.Decoder(["sk_data_ready"]).decode(
        _raw(id=3, kind=2, port=5000, saddr=_addr("10.0.0.1"), dport=5000))
    assert d["kind"] == "deliver" and d["port"] == 5000
    assert d["vni"] is None and d["outer_src"] is None and d["reason"] is None
