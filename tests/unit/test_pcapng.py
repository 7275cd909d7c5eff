"""--pcap: the snap store's bound and the pcap-ng writer, read back by tshark (a real reader, not
this writer's own idea of the format). Snaps are built from bytes here as the kernel lays them
out (struct pp_snap)."""
import struct
import subprocess

import pytest

from pktpath.events import records
from pktpath.output import pcapng
from pktpath.process import snaps as snapmod
from pktpath.errors import UserError

HOOKS = ["net_dev_queue", "netif_receive_skb", "sk_data_ready", "kfree_skb"]
NS = {"4026531001": "hostA-ns", "4026531002": "ctrB"}


def _csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff


def ipv4_udp(src, dst, sport, dport, payload, ident=1):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0x4000, 64, 17, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + udp


def eth(payload, ethertype=0x0800):
    return b"\x02\0\0\0\0\x0b" + b"\x02\0\0\0\0\x0a" + struct.pack("!H", ethertype) + payload


def inner_frame(pid):
    return eth(ipv4_udp("198.51.100.1", "198.51.100.2", 40000, 5000,
                        struct.pack("!I", pid) + b"x" * 60))


def vxlan_frame(pid, vni=42):
    vx = struct.pack("!II", 0x08000000, vni << 8) + inner_frame(pid)
    return eth(ipv4_udp("192.0.2.1", "192.0.2.2", 50000, 4789, vx))


def snap(ts, pid, hook, data, dev="eth0", netns=4026531001, kind=0, l2=True, skb=0xffff1):
    cap = data[:snapmod.SNAP_LEN]
    return snapmod.pack(ts=ts, skb=skb, id=pid, netns=netns, ifindex=3, len=len(data),
                        caplen=len(cap), hook=HOOKS.index(hook), kind=kind,
                        flags=snapmod.SNAP_L2 if l2 else 0,
                        dev=dev.encode().ljust(records.DEV_LEN, b"\0"),
                        data=cap.ljust(snapmod.SNAP_LEN, b"\0"))


def hop(ts, hook, dev, ns):
    inode = {v: int(k) for k, v in NS.items()}.get(ns)
    return {"t_ns": ts, "hook": hook, "dev": dev, "netns": inode, "netns_name": ns}


def tshark(path, *fields, decode=()):
    cmd = ["tshark", "-r", str(path)]
    for d in decode:
        cmd += ["-d", d]
    cmd += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [line.split("|") for line in p.stdout.splitlines()]


def recorded_trace():
    """Two packets: 805 delivered (4 hops, one VXLAN, one raw-IP at the socket), 806 dropped
    (2 hops); plus a snap of 805 that is none of its hops (a slot lost to a race)."""
    store = snapmod.SnapStore()
    t = 1_000_000_000
    for data in (snap(t + 10, 805, "net_dev_queue", inner_frame(805), "eth0", 4026531002),
                 snap(t + 20, 805, "net_dev_queue", vxlan_frame(805), "pp-vx"),
                 snap(t + 25, 805, "netif_receive_skb", inner_frame(805), "pp-vx"),
                 snap(t + 30, 805, "sk_data_ready", inner_frame(805)[14:], "", 4026531002,
                      kind=2, l2=False),
                 snap(t + 40, 806, "net_dev_queue", inner_frame(806), "eth0", 4026531002),
                 snap(t + 50, 806, "kfree_skb", vxlan_frame(806), "pp-vx", kind=1)):
        store.add(data)
    packets = [
        {"id": 805, "verdict": "delivered",
         "path": [hop(t + 10, "net_dev_queue", "eth0", "ctrB"),
                  hop(t + 20, "net_dev_queue", "pp-vx", "hostA-ns"),
                  hop(t + 30, "sk_data_ready", "", "ctrB")]},
        {"id": 806, "verdict": "dropped",
         "path": [hop(t + 40, "net_dev_queue", "eth0", "ctrB"),
                  hop(t + 50, "kfree_skb", "pp-vx", "hostA-ns")]}]
    return store, packets


def test_snap_record_round_trip():
    s = snapmod.decode(snap(7, 9, "kfree_skb", b"abc", "pp-vx", kind=1))
    assert (s.ts, s.id, s.dev, s.data, s.len, s.l2, s.kind_name) == \
        (7, 9, "pp-vx", b"abc", 3, True, "drop")
    assert snapmod.SNAP.size == records.LAYOUTS["pp_snap"].size


def test_tshark_reads_hops_comments_interfaces_and_vxlan(tmp_path):
    store, packets = recorded_trace()
    path = tmp_path / "t.pcapng"
    st = pcapng.write(str(path), store, packets, HOOKS, NS, wall_offset_ns=5 * 10 ** 18)
    assert st["packets"] == 5 and st["unmatched"] == 1 and st["interfaces"] == 3
    assert st["missing"] == 0
    assert not (tmp_path / "t.pcapng.tmp").exists()
    rows = tshark(path, "frame.comment", "frame.interface_name", "frame.cap_len", "frame.len",
                  "vxlan.vni", "ip.src", "ip.dst", "udp.dstport", "frame.time_epoch")
    assert [r[0] for r in rows] == [
        "hook=net_dev_queue id=805 verdict=delivered",
        "hook=net_dev_queue id=805 verdict=delivered",
        "hook=sk_data_ready id=805 verdict=delivered",
        "hook=net_dev_queue id=806 verdict=dropped",
        "hook=kfree_skb id=806 verdict=dropped"]
    assert [r[1] for r in rows] == ["eth0@ctrB", "pp-vx@hostA-ns", "sock@ctrB", "eth0@ctrB",
                                    "pp-vx@hostA-ns"]
    # a VXLAN frame is cut at 128 bytes and keeps its original length
    vx = rows[1]
    assert (vx[2], vx[3]) == ("128", str(len(vxlan_frame(805))))
    assert vx[4] == "42"
    assert vx[5] == "192.0.2.1,198.51.100.1" and vx[6] == "192.0.2.2,198.51.100.2"
    assert vx[7] == "4789,5000"
    # the socket's hop starts at the IP header (link type raw IP): still decoded
    assert rows[2][5:8] == ["198.51.100.1", "198.51.100.2", "5000"]
    # nanosecond time stamps, on the wall clock
    assert rows[0][8] == "5000000001.000000010"


def test_hops_without_a_snap_are_counted(tmp_path):
    store, packets = recorded_trace()
    packets[0]["path"].append(hop(1_000_000_099, "kfree_skb", "eth0", "ctrB"))
    st = pcapng.write(str(tmp_path / "m.pcapng"), store, packets, HOOKS, NS)
    assert st["missing"] == 1 and st["packets"] == 5


def test_section_comment_and_interface_options(tmp_path):
    store, packets = recorded_trace()
    path = tmp_path / "t.pcapng"
    pcapng.write(str(path), store, packets, HOOKS, NS)
    p = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Capture application: pktpath" in p.stdout
    assert "up to 128 bytes" in p.stdout
    assert "Encapsulation = Raw IP" in p.stdout and "Encapsulation = Ethernet" in p.stdout


def test_bound_on_packets_kept_is_said(tmp_path):
    store = snapmod.SnapStore(max_packets=2, per_packet=3)
    for pid in (1, 2, 3, 4):
        for i in range(5):
            store.add(snap(100 * pid + i, pid, "net_dev_queue", inner_frame(pid)))
    assert sorted(store.by_id) == [1, 2]
    assert [len(v) for v in store.by_id.values()] == [3, 3]
    assert store.left_out_packets == 2
    assert store.left_out_snaps == 2 * 2 + 2 * 5
    path = tmp_path / "b.pcapng"
    # packets the report did not keep: every snap, verdict from the last snap's kind
    st = pcapng.write(str(path), store, [], HOOKS, NS)
    assert st["packets"] == 6
    rows = tshark(path, "frame.comment")
    assert {r[0].split()[-1] for r in rows} == {"verdict=unknown"}
    p = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60)
    assert "left out: 2 packets (14 snaps)" in p.stdout


def test_bad_path_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot write --pcap"):
        pcapng.check_path(str(tmp_path / "no" / "x.pcapng"))
    with pytest.raises(UserError, match="is a directory"):
        pcapng.check_path(str(tmp_path))
    pcapng.check_path(str(tmp_path / "ok.pcapng"))


def test_default_program_has_no_snap_code():
    """Without --pcap nothing of it is compiled: every line of the kernel side that names the
    snaps ring or pp_snap is inside an #ifdef PP_PCAP, and only --pcap's cflags define it."""
    import re
    from types import SimpleNamespace
    from pktpath.collect import program
    with open(program.BPF_DIR + "/pktpath.c") as f:
        lines = f.read().splitlines()
    stack, seen = [], 0
    for ln in lines:
        d = ln.strip()
        if re.match(r"#\s*if", d):
            stack.append(d)
        elif re.match(r"#\s*endif", d):
            stack.pop()
        elif re.search(r"\bsnaps\b|\bpp_snap\b|PP_SNAP_|PP_OFF_SKB_(LEN|DATA)", d):
            seen += 1
            assert "#ifdef PP_PCAP" in stack, ln
    assert seen >= 4 and not stack
    cfg = SimpleNamespace(id_offset=0, proto="udp", vxlan_port=4789, geneve_port=0,
                          id_byteorder="big", ringbuf_pages=64, shost=None, dhost=None,
                          sip=None, dip=None, port=None, id_from="payload")
    offs = {m: 8 * i for i, (m, _s, _p) in enumerate(program.FIELDS)}
    assert not [f for f in program.cflags(cfg, offs) if "PCAP" in f or "SNAP" in f]


def test_delivery_after_its_reader_borrows_the_header_before(tmp_path):
    """A delivery hop with no snap of its own (seen after the reader took the datagram: the
    fallback to the packet this CPU saw last) is written with the header of the packet's hop
    before, said in its comment; a pass hop with no snap stays missing."""
    store, packets = recorded_trace()
    t = 1_000_000_000
    packets[0]["path"][-1] = hop(t + 35, "sk_data_ready", "", "ctrB")    # no snap at t+35
    path = tmp_path / "d.pcapng"
    st = pcapng.write(str(path), store, packets, HOOKS, NS, deliver_hooks={"sk_data_ready"})
    assert st["borrowed"] == 1 and st["missing"] == 0 and st["packets"] == 5
    rows = tshark(path, "frame.comment", "frame.interface_name", "udp.dstport")
    assert rows[2][0] == "hook=sk_data_ready id=805 verdict=delivered header_of=net_dev_queue"
    # on the socket's interface (the hop's namespace), with the bytes of the hop before
    assert rows[2][1] == "sock@ctrB" and rows[2][2] == "4789,5000"
    # without the delivery hooks named, the same hop is missing
    st = pcapng.write(str(path), store, packets, HOOKS, NS)
    assert st["borrowed"] == 0 and st["missing"] == 1
