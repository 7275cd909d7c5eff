"""The records user space reads: records.py derives them from bpf/pktpath.h; this test parses the
header again, independently (a different reading of the same text), and checks every record,
key, constant and counter against what records.py derived. Changing the header without the
Python that reads it (or the Python's expectations without the header) fails here."""
import ipaddress
import json
import os
import re
import socket
import struct

import pytest

from pktpath.events import records

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "pktpath.h")
C_SIZES = {"__u64": 8, "__u32": 4, "__s32": 4, "__u16": 2, "__u8": 1, "char": 1}


def _text():
    return re.sub(r"/\*.*?\*/", "", open(HEADER).read(), flags=re.S)


def _consts():
    return dict((k, int(v, 0)) for k, v in
                re.findall(r"#define (PP_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", _text()))


def c_fields(struct_name):
    """[(name, size, align, sub)] of a struct in the C header (its fields parsed from the text);
    sub is the nested struct's name or None."""
    consts = _consts()
    body = re.search(r"struct %s \{(.*?)\};" % struct_name, _text(), re.S).group(1)
    out = []
    for ctype, name in re.findall(r"(__u64|__u32|__s32|__u16|__u8|char|struct \w+)\s+([^;]+);",
                                  body):
        m = re.match(r"(\w+)\[(\w+)\]", name.strip())
        sub = None
        if ctype.startswith("struct "):
            sub = ctype.split()[1]
            size, align = _layout(c_fields(sub))
        else:
            size = align = C_SIZES[ctype]
        if m:
            n = int(m.group(2)) if m.group(2).isdigit() else consts[m.group(2)]
            out.append((m.group(1), size * n, align, sub and (sub, n)))
        else:
            out.append((name.strip(), size, align, sub))
    return out


def _layout(fields):
    off, maxalign = 0, 1
    for _name, size, align, _sub in fields:
        off = (off + align - 1) // align * align + size
        maxalign = max(maxalign, align)
    return (off + maxalign - 1) // maxalign * maxalign, maxalign


def c_offsets(struct_name, prefix="", base=0):
    """{flat field name: (offset, size)} of a struct, nested structs flattened with "a.b",
    padding (_*) left out; arrays of structs as one entry."""
    out, off = {}, 0
    for name, size, align, sub in c_fields(struct_name):
        off = (off + align - 1) // align * align
        if isinstance(sub, str):
            out.update(c_offsets(sub, prefix + name + ".", base + off))
        elif not name.startswith("_"):
            out[prefix + name] = (base + off, size)
        off += size
    return out


RECORDS = [("pp_event", records.EVENT), ("pp_hop", records.HOP), ("pp_path", records.PATH),
           ("pp_flow", records.LAYOUTS["pp_flow"]), ("pp_tunnel", records.LAYOUTS["pp_tunnel"]),
           ("pp_dropkey", records.DROPKEY), ("pp_dropinfo", records.LAYOUTS["pp_dropinfo"]),
           ("pp_dropflow", records.LAYOUTS["pp_dropflow"]),
           ("pp_dropquota", records.LAYOUTS["pp_dropquota"]),
           ("pp_snap", records.LAYOUTS["pp_snap"])]


@pytest.mark.parametrize("cname,layout", RECORDS)
def test_derived_layout_matches_header(cname, layout):
    c = c_offsets(cname)
    py = {n: (o, s) for n, o, s, _code in layout.fields}
    py.update({n: (a[0], a[1].size * a[2]) for n, a in layout.arrays.items()})
    assert py == c
    assert layout.size == _layout(c_fields(cname))[0]
    # the fast format reads each field at its offset
    rec = layout.pack({n: (b"\x01" * s if code.endswith("s") else 1)
                       for n, _o, s, code in layout.fields if _o < layout.hdr_size})
    for n, o, s, code in layout.fields:
        if o < layout.hdr_size and not code.endswith("s"):
            assert int.from_bytes(rec[o:o + s], "little") == 1, n


def test_every_record_user_space_reads_is_checked():
    """A struct added to the header must be added to RECORDS above (or to this list, with why
    user space never reads it)."""
    names = set(re.findall(r"struct (pp_\w+) \{", _text()))
    assert names == {n for n, _l in RECORDS}


def test_records_the_decoders_rely_on():
    """What the Python code expects of the header (names it uses, sizes it assumes)."""
    consts = _consts()
    assert records.KINDS == ("pass", "drop", "deliver", "consume")
    assert [consts["PP_KIND_" + k.upper()] for k in records.KINDS] == [0, 1, 2, 3]
    assert (records.F_ENCAP, records.F_FROM_MAP, records.F_HOP_SET) == \
        (consts["PP_F_ENCAP"], consts["PP_F_FROM_MAP"], consts["PP_F_HOP_SET"])
    assert records.MAX_HOPS == consts["PP_MAX_HOPS"] and records.DEV_LEN == consts["PP_DEV_LEN"]
    assert records.TUN_NONE == consts["PP_TUN_NONE"] == 0
    ev, path = c_offsets("pp_event"), c_offsets("pp_path")
    assert records.SIZE == _layout(c_fields("pp_event"))[0]
    assert records.PATH_HDR == path["hops"][0]
    assert records.HOP_SIZE == _layout(c_fields("pp_hop"))[0]
    assert records.PATH_SIZE == records.PATH_HDR + records.MAX_HOPS * records.HOP_SIZE
    assert records.NHOPS_OFFSET == path["nhops"][0]
    assert records.LAST_TS_OFFSET == path["last_ts"][0]
    for flow in ("inner.", "tun.outer."):
        for f in ("saddr", "daddr"):
            # written with 8-byte stores (pp_flow_put): 16 bytes, 8-aligned in every record
            for rec in (ev, path):
                assert rec[flow + f][1] == consts["PP_ADDR_LEN"] == 16
                assert rec[flow + f][0] % 8 == 0, flow + f
    assert c_offsets("pp_dropkey") == {"location": (0, 8), "reason": (8, 4), "netns": (12, 4)}


def test_counters_match_header_enum():
    body = re.search(r"enum pp_counter \{(.*?)\}", _text(), re.S).group(1)
    names = [n.strip() for n in body.split(",") if n.strip()]
    assert names[-1] == "PP_CNT_COUNT"
    assert records.COUNTERS == tuple(n[7:].lower() for n in names[:-1])
    # the names reported (tracer.counters, the stats file, recordings) stay what they were
    assert [n for n in records.COUNTERS if n not in records.INTERNAL_COUNTERS] == \
        ["lost", "unreachable", "from_map", "lost_paths_full", "rescued", "from_frags",
         "ip6_ext_unwalked", "geneve_opts_unread", "deliver_resumed",
         "deliver_head", "deliver_reader", "deliver_late"]
    assert set(records.INTERNAL_COUNTERS) <= set(records.COUNTERS)
    # the C uses each by its enum name, and sizes the map by the count
    c = open(os.path.join(os.path.dirname(HEADER), "pktpath.c")).read()
    assert "BPF_PERCPU_ARRAY(counters, u64, PP_CNT_COUNT)" in c
    assert not re.search(r"#define PP_CNT_", c)


def test_header_parse_rejects_what_it_cannot_read():
    with pytest.raises(ValueError):
        records.parse_header("struct pp_x { __u32 a : 3; };")
    with pytest.raises(ValueError):
        records.parse_header("enum pp_e { A = 2, B };")
    d, e, lay = records.parse_header(
        "#define N 3\nenum pp_e { A, B, C };\nstruct pp_y { __u8 k; __u64 v; };\n"
        "struct pp_z { __u16 a[N]; struct pp_y y; __u8 _p; };")
    assert d == {"N": 3} and e == {"pp_e": ["A", "B", "C"]}
    assert lay["pp_z"].offsets == {"a": 0, "y.k": 8, "y.v": 16} and lay["pp_z"].size == 32


def test_format_addr():
    v4 = socket.inet_aton("198.51.100.1") + bytes(12)
    assert records.format_addr(4, v4, 5000) == "198.51.100.1:5000"
    assert records.format_addr(0, bytes(16), 0) == "0.0.0.0:0"       # not parsed
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert records.format_addr(6, v6, 5000) == "[2001:db8::1]:5000"


def _a(ip):
    return socket.inet_aton(ip) + bytes(12)


def _flow(prefix, src, dst, sport=0, dport=0):
    return {prefix + "family": 4, prefix + "protocol": 17, prefix + "saddr": _a(src),
            prefix + "daddr": _a(dst), prefix + "sport": sport, prefix + "dport": dport}


def _raw(flows=(), **kw):
    v = {}
    for f in flows:
        v.update(f)
    return records.EVENT.pack(v, **kw)


def _path(flows=(), hops=(), **kw):
    v = {}
    for f in flows:
        v.update(f)
    return records.PATH.pack(v, **kw) + b"".join(records.HOP.pack(h) for h in hops)


def test_decode_encapsulated_drop():
    data = _raw([_flow("inner.", "198.51.100.1", "198.51.100.2", 40000, 5000),
                 _flow("tun.outer.", "192.0.2.1", "192.0.2.2", 51000, 4789)],
                ts=5, skb=0xffff888000001000, location=0xffffffff81000010, id=17,
                netns=4026532315, ifindex=3, reason=110, tun__type=1, tun__vni=42, hook=1,
                cpu=1, kind=1, flags=records.F_ENCAP, dev=b"pp-ul")
    assert len(data) == records.SIZE
    d = records.Decoder(["a", "kfree_skb"], {110: "VXLAN_VNI_NOT_FOUND"},
                        lambda a: "vxlan_rcv+0x10").decode(data)
    assert d["hook"] == "kfree_skb" and d["kind"] == "drop" and d["id"] == 17
    assert d["src"] == "198.51.100.1:40000" and d["dst"] == "198.51.100.2:5000"
    assert d["outer_src"] == "192.0.2.1:51000" and d["outer_dst"] == "192.0.2.2:4789"
    assert d["vni"] == 42 and d["encap"] is True
    assert d["reason"] == "VXLAN_VNI_NOT_FOUND" and d["reason_code"] == 110
    assert d["location"] == "vxlan_rcv+0x10" and d["dev"] == "pp-ul" and d["port"] is None
    assert d["skb"] == 0xffff888000001000 and d["netns"] == 4026532315 and d["cpu"] == 1


def test_decode_plain_deliver():
    d = records.Decoder(["sk_data_ready"]).decode(
        _raw([_flow("inner.", "10.0.0.1", "0.0.0.0", 0, 5000)], id=3, kind=2, port=5000))
    assert d["kind"] == "deliver" and d["port"] == 5000 and d["src"] == "10.0.0.1:0"
    assert d["vni"] is None and d["outer_src"] is None and d["reason"] is None


def test_decode_ipv6_flow():
    v6 = {"inner.family": 6, "inner.saddr": socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
          "inner.daddr": socket.inet_pton(socket.AF_INET6, "2001:db8::2"), "inner.sport": 1,
          "inner.dport": 5000}
    d = records.Decoder(["a"]).decode(_raw([v6]))
    assert d["src"] == "[2001:db8::1]:1" and d["dst"] == "[2001:db8::2]:5000"


def _hop(hook, kind, flags, **kw):
    return dict(hook=hook, kind=kind, flags=flags, **kw)


def test_decode_path_expands_hops_and_skips_unset_slots():
    hops = [_hop(0, 0, records.F_HOP_SET, dt=0, dev=b"d0"),
            _hop(1, 0, records.F_HOP_SET | records.F_ENCAP, dt=10, dev=b"d1"),
            _hop(0, 0, 0, dt=20, dev=b"d2"),            # slot lost to a race: skipped
            _hop(2, 1, records.F_HOP_SET, dt=30, dev=b"d3")]
    data = _path([_flow("inner.", "198.51.100.1", "198.51.100.2", 1, 5000),
                  _flow("tun.outer.", "192.0.2.1", "192.0.2.2", 0, 4789)], hops,
                 first_ts=1000, skb=7, id=42, tun__type=1, tun__vni=42, final_kind=1, reason=3,
                 location=0x10, nhops=4, stack_id=-1)
    assert records.path_used_bytes(data) == len(data)
    evs = records.PathDecoder(["a", "b", "kfree_skb"], {3: "NO_SOCKET"},
                              lambda a: "f+0x10").decode_path(data)
    assert [e["hook"] for e in evs] == ["a", "b", "kfree_skb"]
    assert [e["t_ns"] for e in evs] == [1000, 1010, 1030]
    assert evs[1]["encap"] and evs[1]["vni"] == 42 and evs[1]["outer_dst"] == "192.0.2.2:4789"
    assert not evs[0]["encap"] and evs[0]["outer_dst"] is None
    assert evs[0]["src"] == "198.51.100.1:1" and evs[0]["dst"] == "198.51.100.2:5000"
    assert evs[2]["kind"] == "drop" and evs[2]["reason"] == "NO_SOCKET"
    assert evs[2]["location"] == "f+0x10" and evs[2]["id"] == 42


def test_path_record_shorter_than_nhops():
    """The emitter sends the hops it claimed; another CPU may have bumped nhops since. Only the
    hops carried by the record are decoded, and path_key agrees."""
    data = _path(hops=[_hop(0, 0, records.F_HOP_SET)] * 2,   # 2 hops carried, nhops 3
                 first_ts=5, id=9, final_kind=2, nhops=3, stack_id=-1)
    assert records.path_key(data) == (9, 2, records.KIND_DELIVER)
    assert records.path_last_ts(records.PATH.pack(last_ts=77)) == 77
    evs = records.PathDecoder(["a"]).decode_path(data)
    assert len(evs) == 2


def _rand_ip(rng):
    return socket.inet_ntoa(struct.pack("<I", rng.randrange(2 ** 32)))


def _random_delivered(rng, pid):
    encap = rng.choice([0, 1])
    n = rng.randrange(1, 12)
    hops, dt = [], 0
    for i in range(n):
        dt += rng.choice([0, 1, 700, 12345])    # ties: two CPUs (one CPU's clock moves on)
        hops.append(dict(dt=dt, hook=rng.randrange(5), kind=2 if i == n - 1 else 0,
                         flags=records.F_HOP_SET | (records.F_ENCAP if rng.random() < 0.3 else 0),
                         netns=rng.choice([0, 4026531840, 4026532315]), ifindex=i,
                         cpu=i,
                         dev=rng.choice([b"", b"eth0", b"pp-vx", b'we"ird\\\xc3\xa9'])))
    return _path([_flow("inner.", _rand_ip(rng), _rand_ip(rng), rng.randrange(65536), 5000),
                  _flow("tun.outer.", _rand_ip(rng), _rand_ip(rng), rng.randrange(65536), 4789)],
                 hops, first_ts=rng.randrange(1, 10 ** 12), id=pid, final_kind=2, port=5000,
                 stack_id=-1, tun__type=encap, tun__vni=rng.choice([0, 42]), nhops=n)


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
        _same_packet(fast, dec, rec, names)


def _same_packet(fast, dec, rec, names):
    """DeliveredJSON.packet: the general path's packet dict, equal and in the same key order
    (the report and --json read them), hops not shared between packets."""
    from pktpath.process import reconstruct
    ref = reconstruct.build_packets(dec.decode_path(rec), names)
    got = fast.packet(rec, reconstruct.ns_names(names))
    assert [got] == ref
    assert json.dumps(got) == json.dumps(ref[0])
    assert got["path"][0] is not fast.packet(rec, reconstruct.ns_names(names))["path"][0]
    keyed = records.PathDecoder(dec.hook_names, key="headers")     # key, proto, flow
    ref = reconstruct.build_packets(keyed.decode_path(rec), names)
    got = records.DeliveredJSON(keyed).packet(rec, reconstruct.ns_names(names))
    assert [got] == ref and list(got) == list(ref[0]) and "key" in got


def test_delivered_json_declines_what_it_does_not_cover():
    dec = records.PathDecoder(["a"])
    fast = records.DeliveredJSON(dec)
    rng = __import__("random").Random(1)
    rec = bytearray(_random_delivered(rng, 1))
    rec[records.PATH.offset("final_kind")] = 1                   # a drop
    assert fast(bytes(rec), {}) is None
    assert fast.packet(bytes(rec), {}) is None
    data = _path(hops=[_hop(0, 0, 0),                             # slot lost to a race
                       _hop(0, 2, records.F_HOP_SET)], id=2, final_kind=2, nhops=2, stack_id=-1)
    assert fast(data, {}) is None
    assert fast.packet(data, {}) is None


# ---- IPv6 and Geneve records ----

def _a6(ip):
    return socket.inet_pton(socket.AF_INET6, ip)


def _flow_any(prefix, src, dst, sport=0, dport=0):
    """A flow of either family (by the address text)."""
    if ":" not in src:
        return _flow(prefix, src, dst, sport, dport)
    return {prefix + "family": 6, prefix + "protocol": 17, prefix + "saddr": _a6(src),
            prefix + "daddr": _a6(dst), prefix + "sport": sport, prefix + "dport": dport}


TUN_GENEVE = records.DEFINES["PP_TUN_GENEVE"]


def test_tunnel_names_come_from_the_header():
    assert records.TUNNELS == {records.DEFINES["PP_TUN_VXLAN"]: "vxlan", TUN_GENEVE: "geneve"}


@pytest.mark.parametrize("outer,inner", [
    (("2001:db8:1::1", "2001:db8:1::2"), ("198.51.100.1", "198.51.100.2")),
    (("192.0.2.1", "192.0.2.2"), ("2001:db8:2::1", "2001:db8:2::2")),
    (("2001:db8:1::1", "2001:db8:1::2"), ("2001:db8:2::1", "2001:db8:2::2"))])
def test_decode_geneve_drop_with_ipv6(outer, inner):
    data = _raw([_flow_any("inner.", inner[0], inner[1], 40000, 5000),
                 _flow_any("tun.outer.", outer[0], outer[1], 51000, 6081)],
                id=5, kind=1, reason=3, tun__type=TUN_GENEVE, tun__vni=77,
                flags=records.F_ENCAP, dev=b"pp-ul")
    d = records.Decoder(["kfree_skb"], {3: "NO_SOCKET"}).decode(data)
    fmt = lambda a, p: ("[%s]:%d" if ":" in a else "%s:%d") % (a, p)  # noqa: E731
    assert (d["src"], d["dst"]) == (fmt(inner[0], 40000), fmt(inner[1], 5000))
    assert (d["outer_src"], d["outer_dst"]) == (fmt(outer[0], 51000), fmt(outer[1], 6081))
    assert (d["tunnel"], d["vni"], d["reason"]) == ("geneve", 77, "NO_SOCKET")
    plain = records.Decoder(["a"]).decode(_raw([_flow_any("inner.", inner[0], inner[1], 1, 2)]))
    assert plain["tunnel"] is None and plain["vni"] is None and plain["outer_src"] is None


def test_decode_path_geneve_ipv6_to_packet_json():
    """A pp_path record of a Geneve packet over IPv6 -> hops -> the packet record: the schema,
    the addresses, "tunnel" and the VNI on each encapsulated hop, the timeline's cells."""
    from pktpath.events import schema
    from pktpath.output import report
    from pktpath.process import reconstruct
    hops = [_hop(0, 0, records.F_HOP_SET | records.F_ENCAP, dt=0, dev=b"pp-ul", netns=1),
            _hop(1, 0, records.F_HOP_SET | records.F_ENCAP, dt=9, dev=b"pp-ul", netns=2),
            _hop(2, 1, records.F_HOP_SET | records.F_ENCAP, dt=20, dev=b"pp-ul", netns=2)]
    data = _path([_flow_any("inner.", "2001:db8:2::1", "2001:db8:2::2", 40000, 5000),
                  _flow_any("tun.outer.", "2001:db8:1::1", "2001:db8:1::2", 51000, 6081)],
                 hops, first_ts=1000, skb=7, id=3, tun__type=TUN_GENEVE, tun__vni=77,
                 final_kind=1, reason=3, location=0x10, nhops=3, stack_id=-1)
    evs = records.PathDecoder(["net_dev_queue", "netif_receive_skb", "kfree_skb"],
                              {3: "NO_SOCKET"}, lambda a: "__udp6_lib_rcv+0x10").decode_path(data)
    (pkt,) = reconstruct.build_packets(evs, {1: "pp-hostA", 2: "pp-hostB"})
    assert schema.check(pkt) == []
    assert pkt["verdict"] == "dropped" and pkt["drop"]["netns_name"] == "pp-hostB"
    for h in pkt["path"]:
        assert (h["tunnel"], h["vni"]) == ("geneve", 77)
        assert h["src"] == "[2001:db8:2::1]:40000" and h["dst"] == "[2001:db8:2::2]:5000"
        assert h["outer_src"] == "[2001:db8:1::1]:51000"
        assert h["outer_dst"] == "[2001:db8:1::2]:6081"
    line = json.loads(schema.packet_line(pkt))
    assert line["path"][0]["tunnel"] == "geneve"
    text = report.render_timeline([pkt])
    assert "geneve:77" in text and "[2001:db8:1::1]:51000 > [2001:db8:1::2]:6081" in text


def _random_delivered_any(rng, pid):
    """As _random_delivered, with either family in each layer and any tunnel type."""
    rec = bytearray(_random_delivered(rng, pid))
    v = {}
    for prefix in ("inner.", "tun.outer."):
        if rng.random() < 0.5:
            a = lambda: str(ipaddress.IPv6Address(rng.randrange(2 ** 128)))  # noqa: E731
            v.update(_flow_any(prefix, a(), a(), rng.randrange(65536), 5000))
    tun = rng.choice([0, 1, TUN_GENEVE])
    fields = dict(v, **{"tun.type": tun})
    for name, value in fields.items():
        off = records.PATH.offset(name)
        if isinstance(value, bytes):
            rec[off:off + len(value)] = value
        else:
            size = {"family": 1, "protocol": 1, "type": 1, "sport": 2, "dport": 2}[
                name.rsplit(".", 1)[1]]
            rec[off:off + size] = value.to_bytes(size, "little")
    return bytes(rec)


def test_delivered_json_is_the_general_path_with_ipv6_and_geneve():
    import io
    import random
    from pktpath.process import reconstruct
    from pktpath.output import report
    rng = random.Random(11)
    dec = records.PathDecoder(["a", "b", "c"])
    fast = records.DeliveredJSON(dec)
    seen = set()
    for pid in range(400):
        rec = _random_delivered_any(rng, pid)
        ref = io.StringIO()
        report.write_json(reconstruct.build_packets(dec.decode_path(rec), {}), ref)
        assert fast(rec, {}) == ref.getvalue()
        _same_packet(fast, dec, rec, {})
        seen.update(h["tunnel"] for line in ref.getvalue().splitlines()
                    for h in json.loads(line)["path"])
        seen.add("[" in ref.getvalue())
    assert {"vxlan", "geneve", None, True} <= seen
