"""The `drops` command's pure parts, on records packed with the layouts derived from
bpf/pktpath.h: decoding, the detail lines, interval tables, "more like this", top flows, hints,
--json objects, and the report of a recording (the same output as live)."""
import io
import json
import socket

import pytest

from pktpath.collect import program
from pktpath.commands import report as reportcmd
from pktpath.events import dropinfo, recording
from pktpath.output import drophints
from pktpath.output import drops as out
from pktpath.output import dropmonitor as dropsmod

CLOCK = {"mono_ns": 1_000_000_000, "wall_ns": 1_700_000_000_000_000_000}
NAMES = {"4026532384": "pp-ctrB", "4026532246": "pp-hostB"}
REASONS = {2: "NO_SOCKET", 6: "NETFILTER_DROP", 77: "VXLAN_VNI_NOT_FOUND", 200: "NEW_ONE"}
SYMS = {0xffffffff81000010: "nft_do_chain+0x3e8", 0xffffffff81000020: "__udp4_lib_rcv+0x4bc",
        0xffffffff81000030: "vxlan_rcv+0x84"}


def v4(ip):
    return socket.inet_aton(ip) + b"\0" * 12


def v6(ip):
    return socket.inet_pton(socket.AF_INET6, ip)


def record(**kw):
    base = {"ts": 2_000_000_000, "location": 0xffffffff81000010, "reason": 6,
            "netns": 4026532384, "ifindex": 2, "pid": 4242, "tid": 4242, "stack_id": -1,
            "ethertype": 0x0800, "sk_state": 0xff, "cpu": 1, "dev": b"eth0", "comm": b"curl",
            "flow.family": 4, "flow.protocol": 6, "flow.saddr": v4("198.51.100.1"),
            "flow.daddr": v4("198.51.100.2"), "flow.sport": 40000, "flow.dport": 8080,
            "tcp_flags": 0x02}
    base.update(kw)
    return dropinfo.DROPINFO.pack(base)


def decoder(stack=None):
    return dropinfo.DropDecoder(REASONS, SYMS.get, CLOCK, lambda: NAMES, stack)


def test_layout_matches_the_header():
    assert dropinfo.DROPINFO.size == 168 and dropinfo.DROPINFO.offset("flow.saddr") == 80
    assert dropinfo.DROPFLOW.size == 56


def test_decode_tcp_syn():
    d = decoder().decode(record())
    for key in ("t_ns", "time", "reason", "reason_code", "location", "netns", "netns_name",
                "dev", "proto", "src", "dst", "tunnel", "vni", "outer_src", "outer_dst",
                "tcp_flags", "sk_state", "pid", "comm", "stack"):
        assert key in d
    assert d["proto"] == "tcp" and d["tcp_flags"] == "SYN"
    assert (d["src"], d["dst"]) == ("198.51.100.1:40000", "198.51.100.2:8080")
    assert d["reason"] == "NETFILTER_DROP" and d["reason_code"] == 6
    assert d["location"] == "nft_do_chain+0x3e8" and d["netns_name"] == "pp-ctrB"
    assert d["sk_state"] is None and d["tunnel"] is None and d["vni"] is None
    assert d["pid"] == 4242 and d["comm"] == "curl" and d["dev"] == "eth0"
    assert d["time"].endswith(".000000")   # 1 s after the clock pair's wall time
    line = out.detail_line(d)
    assert "pp-ctrB(4026532384) eth0 tcp 198.51.100.1:40000 > 198.51.100.2:8080 [SYN]" in line
    assert "NETFILTER_DROP at nft_do_chain+0x3e8" in line and "may be unrelated" in line


def test_decode_vxlan_inner_flow_and_socket_state():
    raw = record(reason=77, location=0xffffffff81000030, netns=4026532246, dev=b"pp-ul",
                 **{"flow.protocol": 17, "flow.dport": 5000, "tcp_flags": 0, "sk_state": 1,
                    "tun.type": 1, "tun.vni": 42, "tun.outer.family": 4,
                    "tun.outer.protocol": 17, "tun.outer.saddr": v4("192.0.2.1"),
                    "tun.outer.daddr": v4("192.0.2.2"), "tun.outer.sport": 55000,
                    "tun.outer.dport": 4789})
    d = decoder().decode(raw)
    assert d["tunnel"] == "vxlan" and d["vni"] == 42
    assert (d["outer_src"], d["outer_dst"]) == ("192.0.2.1:55000", "192.0.2.2:4789")
    assert d["dst"] == "198.51.100.2:5000" and d["tcp_flags"] is None
    assert d["sk_state"] == "ESTABLISHED"
    assert "(vxlan vni 42 192.0.2.1:55000 > 192.0.2.2:4789)" in out.detail_line(d)


def test_decode_ipv6_icmp_arp_and_unparsed():
    d = decoder().decode(record(ethertype=0x86dd, **{
        "flow.family": 6, "flow.protocol": 58, "flow.saddr": v6("::"),
        "flow.daddr": v6("ff02::1:ffc4:d023"), "msg_type": 135, "tcp_flags": 0}))
    assert d["proto"] == "icmpv6" and (d["src"], d["dst"]) == ("[::]", "[ff02::1:ffc4:d023]")
    assert d["icmp_type"] == 135 and "type 135 code 0" in out.detail_line(d)
    d = decoder().decode(record(ethertype=0x0806, msg_type=1, **{"flow.protocol": 0}))
    assert d["proto"] == "arp" and d["arp_op"] == "request" and d["src"] == "198.51.100.1"
    d = decoder().decode(record(ethertype=0, **{"flow.family": 0}))
    assert d["proto"] == "?" and d["src"] is None and d["dst"] is None
    d = decoder().decode(record(**{"flow.protocol": 47}))
    assert d["proto"] == "gre" and d["src"] == "198.51.100.1"
    assert dropinfo.proto_name(0x0800, 4, 99) == "ip proto 99"
    assert dropinfo.proto_name(0x88b5, 0, 0) == "ethertype 0x88b5"
    assert dropinfo.tcp_flags(0x12) == "SYN|ACK"


def test_stack_symbolized_from_its_location():
    frames = ["bpf_prog_abc_pp_h0+0xc05", "bpf_trace_run4+0xfc", "sk_skb_reason_drop+0x90",
              "__udp4_lib_rcv+0x4bc", "ip_local_deliver_finish+0x81"]
    assert dropsmod.clean_stack(frames) == frames[3:]
    d = decoder(stack=lambda sid: ["f%d+0x1" % sid]).decode(record(stack_id=7))
    assert d["stack"] == ["f7+0x1"] and "\n    f7+0x1" in out.detail_line(d)


def test_hints_by_reason_name():
    assert "listens" in drophints.hint("NO_SOCKET")
    assert "buffer" in drophints.hint("SOCKET_RCVBUFF")
    assert "firewall" in drophints.hint("NETFILTER_DROP")
    assert drophints.hint("NEW_ONE") is None
    assert out.hints_section(["NEW_ONE"]) == "none"


def _run(json_out=None, rec=None):
    """A small run: 3 SYNs shown, then an interval, 1 more shown, the end. Returns (text, mon)."""
    lines = []
    mon = dropsmod.DropMonitor(lines.append, dict(NAMES), json_out=json_out, rec=rec)
    dec = decoder()
    for i in range(3):
        mon.detail(dec.decode(record(ts=2_000_000_000 + i, **{"flow.sport": 40000 + i})))
    mon.interval([("nft_do_chain+0x3e8", "NETFILTER_DROP", 4026532384, 10)], 1.0)
    mon.detail(dec.decode(record(ts=3_000_000_000, reason=200)))
    counts = [("nft_do_chain+0x3e8", "NETFILTER_DROP", 4026532384, 25),
              ("nft_do_chain+0x3e8", "NEW_ONE", 4026532384, 1)]
    flows = [{"drops": 20, "proto": "tcp", "src": "198.51.100.1:40000",
              "dst": "198.51.100.2:8080", "reason": "NETFILTER_DROP", "netns": 4026532384,
              "tunnel": None, "vni": None},
             {"drops": 5, "proto": "udp", "src": "198.51.100.1:1", "dst": "198.51.100.2:5000",
              "reason": "VXLAN_VNI_NOT_FOUND", "netns": 4026532246, "tunnel": "vxlan",
              "vni": 42}]
    mon.finish(counts, flows, lost=2, duration_s=4.5)
    return "\n".join(lines), mon


def test_lines_interval_more_like_this_top_flows():
    text, mon = _run()
    assert len([ln for ln in text.splitlines()
                if "[SYN] NETFILTER_DROP at nft_do_chain+0x3e8" in ln]) == 3
    assert text.count("hint (NETFILTER_DROP)") == 1       # once, the first time
    assert "hint (NEW_ONE)" not in text                    # no hint: no line
    iv = text[text.index("== drops in the last 1s"):text.index("== all drops")]
    assert "10  nft_do_chain+0x3e8" in iv
    assert "... 7 more like this: NETFILTER_DROP at nft_do_chain+0x3e8" in iv
    end = text[text.index("== all drops"):]
    assert "(26, exact; 4 shown in detail, 22 not shown, 2 details lost" in end
    assert "... 22 more like this: NETFILTER_DROP" in end
    flows = end[end.index("== top flows"):].splitlines()
    assert flows[3].split()[:4] == ["20", "tcp", "198.51.100.1:40000", "198.51.100.2:8080"]
    assert "vxlan vni 42" in flows[4] and "pp-hostB(4026532246)" in flows[4]
    assert "NETFILTER_DROP: a firewall rule" in end


def test_json_objects_and_summary():
    buf = io.StringIO()
    _run(json_out=buf)
    objs = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert len(objs) == 5 and objs[-1]["type"] == "summary"
    s = objs[-1]
    assert (s["drops"], s["details_shown"], s["details_not_shown"], s["details_lost"]) == \
        (26, 4, 22, 2)
    assert s["counts"][0] == {"location": "nft_do_chain+0x3e8", "reason": "NETFILTER_DROP",
                              "netns": 4026532384, "drops": 25}
    assert objs[0]["proto"] == "tcp" and objs[0]["stack"] is None


def test_report_of_a_recording_is_the_live_output(tmp_path, capsys):
    path = tmp_path / "drops.rec"
    rec = recording.RecordingWriter(str(path))
    rec.meta({"recording": dropsmod.RECORDING, "netns_names": NAMES})
    live_json = io.StringIO()
    text, _ = _run(json_out=live_json, rec=rec)
    rec.close()
    assert dropsmod.is_drops_recording(str(path))
    out_json = tmp_path / "r.json"
    args = reportcmd_args([str(path)], json=str(out_json))
    assert reportcmd.run(args) == 0
    assert capsys.readouterr().out == text + "\n"
    assert out_json.read_text() == live_json.getvalue()


def reportcmd_args(files, json=None):
    import argparse
    return argparse.Namespace(files=files, json=json, timeline=50)


class _BTF:
    def offset(self, struct, path):
        return {"sk": 24, "__sk_common.skc_state": 18}[path]


def test_kernel_filters_and_quota_defines():
    d = program.drop_defines(_BTF(), proto="tcp", port=8080, host="198.51.100.2",
                             netns={2, 1}, reasons={6}, burst=5, window_s=1.0)
    assert d["PP_OFF_SKB_SK"] == 24 and d["PP_OFF_SK_STATE"] == 18
    assert d["PP_DF_PROTO_MATCH(x)"] == "((x)==6)" and d["PP_DF_PORT"] == 8080
    assert d["PP_DF_HOST0"] == "0x%016xULL" % int.from_bytes(socket.inet_aton("198.51.100.2"),
                                                             "little")
    assert d["PP_DF_HOST1"] == "0x0000000000000000ULL"
    assert d["PP_DF_NETNS_MATCH(x)"] == "((x)==1||(x)==2)"
    assert d["PP_DF_REASON_MATCH(x)"] == "((x)==6)"
    assert d["PP_DROP_BURST"] == 5 and d["PP_DROP_WINDOW_NS"] == "1000000000ULL"
    d = program.drop_defines(_BTF(), proto="icmp", host="2001:db8::1")
    assert d["PP_DF_PROTO_MATCH(x)"] == "((x)==1||(x)==58)"
    assert d["PP_DF_HOST0"] == "0x%016xULL" % int.from_bytes(v6("2001:db8::1")[:8], "little")
    assert "PP_DF_PORT" not in d and "PP_DF_NETNS_MATCH(x)" not in d
    assert program.drop_defines(_BTF(), proto="arp")["PP_DF_ETHERTYPE"] == "0x0806"
    flags = program.cflags(_cfg(), _offsets(), extra=d)
    assert "-DPP_DF_PROTO_MATCH(x)=((x)==1||(x)==58)" in flags


def _cfg():
    from pktpath import config
    return config.load_config(None, {})


def _offsets():
    return {m: 8 * i for i, (m, _s, _p) in enumerate(program.FIELDS)}


def test_decode_flow():
    key = dropinfo.DROPFLOW.pack({"flow.family": 4, "flow.protocol": 17,
                                  "flow.saddr": v4("10.0.0.1"), "flow.daddr": v4("10.0.0.2"),
                                  "flow.sport": 1, "flow.dport": 2, "reason": 2,
                                  "netns": 5, "vni": 42, "ethertype": 0x0800, "tun": 1})
    f = dropinfo.decode_flow(key, 9, REASONS)
    assert f == {"drops": 9, "proto": "udp", "src": "10.0.0.1:1", "dst": "10.0.0.2:2",
                 "reason": "NO_SOCKET", "netns": 5, "tunnel": "vxlan", "vni": 42}


def geneve_record(outer6=True, inner6=True, **kw):
    """A NO_SOCKET drop of a Geneve frame at the receiving host (as the kernel fills it)."""
    o = {"tun.type": 2, "tun.vni": 77, "tun.outer.family": 6 if outer6 else 4,
         "tun.outer.protocol": 17,
         "tun.outer.saddr": v6("2001:db8:1::1") if outer6 else v4("192.0.2.1"),
         "tun.outer.daddr": v6("2001:db8:1::2") if outer6 else v4("192.0.2.2"),
         "tun.outer.sport": 51000, "tun.outer.dport": 6081}
    i = {"ethertype": 0x86dd if inner6 else 0x0800, "flow.family": 6 if inner6 else 4,
         "flow.protocol": 17,
         "flow.saddr": v6("2001:db8:2::1") if inner6 else v4("198.51.100.1"),
         "flow.daddr": v6("2001:db8:2::2") if inner6 else v4("198.51.100.2"),
         "flow.sport": 40000, "flow.dport": 5000, "tcp_flags": 0}
    base = dict(reason=2, location=0xffffffff81000020, netns=4026532246, dev=b"pp-ul",
                comm=b"python3", **o, **i)
    base.update(kw)
    return record(**base)


def test_decode_geneve_inner_flow_outer_ipv6():
    d = decoder().decode(geneve_record())
    assert (d["tunnel"], d["vni"], d["proto"]) == ("geneve", 77, "udp")
    assert (d["src"], d["dst"]) == ("[2001:db8:2::1]:40000", "[2001:db8:2::2]:5000")
    assert (d["outer_src"], d["outer_dst"]) == ("[2001:db8:1::1]:51000", "[2001:db8:1::2]:6081")
    line = out.detail_line(d)
    assert ("pp-hostB(4026532246) pp-ul udp [2001:db8:2::1]:40000 > [2001:db8:2::2]:5000 "
            "(geneve vni 77 [2001:db8:1::1]:51000 > [2001:db8:1::2]:6081) "
            "NO_SOCKET at __udp4_lib_rcv+0x4bc") in line
    d = decoder().decode(geneve_record(outer6=False, inner6=False))
    assert "198.51.100.1:40000 > 198.51.100.2:5000 (geneve vni 77 192.0.2.1:51000 > " \
           "192.0.2.2:6081)" in out.detail_line(d)
    # the JSON object of a detail is the decoded dict, as written
    buf = io.StringIO()
    mon = dropsmod.DropMonitor(lambda _t: None, dict(NAMES), json_out=buf)
    mon.detail(d)
    j = json.loads(buf.getvalue().splitlines()[0])
    assert (j["tunnel"], j["vni"], j["src"], j["outer_dst"]) == (
        "geneve", 77, "198.51.100.1:40000", "192.0.2.2:6081")


def test_decode_tunnel_whose_inner_packet_was_not_read():
    """Geneve options running past the bytes the kernel reads: the tunnel, VNI and outer flow,
    no inner flow (proto "?")."""
    d = decoder().decode(geneve_record(ethertype=0, **{"flow.family": 0, "flow.protocol": 0,
                                                       "flow.saddr": v4("0.0.0.0"),
                                                       "flow.daddr": v4("0.0.0.0"),
                                                       "flow.sport": 0, "flow.dport": 0}))
    assert d["proto"] == "?" and d["src"] is None and d["tunnel"] == "geneve"
    line = out.detail_line(d)
    assert " pp-ul ? (geneve vni 77 [2001:db8:1::1]:51000 > [2001:db8:1::2]:6081) " in line


def test_decode_geneve_flow_and_top_flows():
    key = dropinfo.DROPFLOW.pack({"flow.family": 6, "flow.protocol": 17,
                                  "flow.saddr": v6("2001:db8:2::1"),
                                  "flow.daddr": v6("2001:db8:2::2"), "flow.sport": 40000,
                                  "flow.dport": 5000, "reason": 2, "netns": 4026532246,
                                  "vni": 77, "ethertype": 0x86dd, "tun": 2})
    f = dropinfo.decode_flow(key, 8, REASONS)
    assert f == {"drops": 8, "proto": "udp", "src": "[2001:db8:2::1]:40000",
                 "dst": "[2001:db8:2::2]:5000", "reason": "NO_SOCKET", "netns": 4026532246,
                 "tunnel": "geneve", "vni": 77}
    rows = out.top_flows([f], NAMES).splitlines()
    assert rows[2].split() == ["8", "udp", "[2001:db8:2::1]:40000", "[2001:db8:2::2]:5000",
                               "geneve", "vni", "77", "NO_SOCKET", "pp-hostB(4026532246)"]


def test_report_of_a_geneve_recording_is_the_live_output(tmp_path, capsys):
    path = tmp_path / "gn.rec"
    rec = recording.RecordingWriter(str(path))
    rec.meta({"recording": dropsmod.RECORDING, "netns_names": NAMES})
    lines, live_json = [], io.StringIO()
    mon = dropsmod.DropMonitor(lines.append, dict(NAMES), json_out=live_json, rec=rec)
    for i in range(4):
        mon.detail(decoder().decode(geneve_record(ts=2_000_000_000 + i, inner6=bool(i % 2))))
    counts = [("__udp4_lib_rcv+0x4bc", "NO_SOCKET", 4026532246, 4)]
    flows = [dropinfo.decode_flow(dropinfo.DROPFLOW.pack(
        {"flow.family": 4, "flow.protocol": 17, "flow.saddr": v4("198.51.100.1"),
         "flow.daddr": v4("198.51.100.2"), "flow.sport": 40000, "flow.dport": 5000,
         "reason": 2, "netns": 4026532246, "vni": 77, "ethertype": 0x0800, "tun": 2}), 4,
        REASONS)]
    mon.finish(counts, flows, lost=0, duration_s=1.0)
    rec.close()
    text = "\n".join(lines)
    assert text.count("(geneve vni 77 [2001:db8:1::1]:51000 > [2001:db8:1::2]:6081)") == 4
    out_json = tmp_path / "r.json"
    assert reportcmd.run(reportcmd_args([str(path)], json=str(out_json))) == 0
    assert capsys.readouterr().out == text + "\n"
    assert out_json.read_text() == live_json.getvalue()
    objs = [json.loads(ln) for ln in live_json.getvalue().splitlines()]
    assert [o["tunnel"] for o in objs[:-1]] == ["geneve"] * 4
    assert objs[-1]["top_flows"][0]["tunnel"] == "geneve"


def test_drop_header_bytes_cover_geneve_over_ipv6():
    """PP_DROP_HDR_LEN: 802.1Q + IPv6 + UDP + Geneve with 32 bytes of options + Ethernet + IPv6
    + the TCP flags byte."""
    flags = program.cflags(_cfg(), _offsets(), extra=program.drop_defines(_BTF()))
    n = int([f for f in flags if f.startswith("-DPP_DROP_HDR_LEN=")][0].split("=")[1])
    assert n >= 18 + 40 + 8 + 8 + program.GENEVE_OPTS + 14 + 40 + 14 and n % 8 == 0
    assert n <= program.hdr_len(_cfg().id_offset)


# stacks measured on Linux 6.18 (iptables-nft INPUT and OUTPUT rules; br_netfilter's hook)
STACK_INPUT = ["nft_do_chain+0x3e8", "nft_do_chain_ipv4+0x66", "nf_hook_slow+0x43",
               "ip_local_deliver+0xd5", "__netif_receive_skb_one_core+0x8d"]
STACK_OUTPUT = ["nft_do_chain+0x3e8", "nft_do_chain_ipv4+0x66", "nf_hook_slow+0x43",
                "__ip_local_out+0x11c", "ip_local_out+0x1c", "__ip_queue_xmit+0x16b"]


def test_netfilter_hook_from_the_stack():
    assert dropsmod.netfilter_hook(STACK_INPUT) == "ipv4 INPUT (nftables)"
    assert dropsmod.netfilter_hook(STACK_OUTPUT) == "ipv4 OUTPUT (nftables)"
    assert dropsmod.netfilter_hook(["ipt_do_table+0x1", "nf_hook_slow+0x43",
                                    "ip_forward+0x2"]) == "ipv4 FORWARD (iptables-legacy)"
    assert dropsmod.netfilter_hook(["ip6_mc_input+0x15e", "ip_sabotage_in+0x6d",
                                    "nf_hook_slow+0x43", "ipv6_rcv+0x11e"]) == "ipv6 PREROUTING"
    assert dropsmod.netfilter_hook(["nft_do_chain+0x1", "nf_hook_slow+0x43",
                                    "nf_hook_slow_list+0x9", "ip_sublist_rcv+0x2"]) == \
        "ipv4 PREROUTING (nftables)"
    assert dropsmod.netfilter_hook(["nf_hook_slow+0x43", "mystery_fn+0x1"]) is None
    assert dropsmod.netfilter_hook(["nft_do_chain+0x3e8"]) is None
    assert dropsmod.netfilter_hook(None) is None


def _nf_run(stack, json_out=None, rec=None):
    lines = []
    mon = dropsmod.DropMonitor(lines.append, dict(NAMES), json_out=json_out, rec=rec)
    mon.detail(decoder(stack=lambda sid: stack).decode(record(stack_id=3)))
    mon.detail(decoder().decode(record(ts=2_000_000_001)))                   # no --stack
    mon.detail(decoder(stack=lambda sid: STACK_INPUT).decode(
        record(ts=2_000_000_002, reason=2, stack_id=3)))                     # not netfilter
    mon.finish([("nft_do_chain+0x3e8", "NETFILTER_DROP", 4026532384, 2),
                ("nft_do_chain+0x3e8", "NO_SOCKET", 4026532384, 1)], [], 0, 1.0)
    return "\n".join(lines)


def test_netfilter_drop_line_json_and_recording(tmp_path, capsys):
    path = tmp_path / "nf.rec"
    rec = recording.RecordingWriter(str(path))
    rec.meta({"recording": dropsmod.RECORDING, "netns_names": NAMES})
    buf = io.StringIO()
    text = _nf_run(STACK_INPUT, json_out=buf, rec=rec)
    rec.close()
    lines = text.splitlines()
    assert "NETFILTER_DROP at nft_do_chain+0x3e8 in hook ipv4 INPUT (nftables) [on CPU" \
        in lines[0]
    assert "hint (NETFILTER_DROP)" in text and "nft monitor trace" in text
    assert "table or chain" in text and "--stack" in text
    objs = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert [o.get("nf_hook") for o in objs[:3]] == ["ipv4 INPUT (nftables)", None, None]
    no_stack = [ln for ln in lines if "NETFILTER_DROP at" in ln][1]
    assert " in hook " not in no_stack
    assert reportcmd.run(reportcmd_args([str(path)], json=str(tmp_path / "r.json"))) == 0
    assert capsys.readouterr().out == text + "\n"
    assert (tmp_path / "r.json").read_text() == buf.getvalue()


def test_report_of_an_older_recording_without_nf_hook(tmp_path, capsys):
    """A recording made before nf_hook existed: its drops get it from their stacks."""
    path = tmp_path / "old.rec"
    d = decoder(stack=lambda sid: STACK_OUTPUT).decode(record(stack_id=1))
    assert "nf_hook" not in d
    with open(path, "w") as f:
        f.write(json.dumps({"type": "meta", "recording": dropsmod.RECORDING}) + "\n")
        f.write(json.dumps(dict(d, type="drop")) + "\n")
        f.write(json.dumps({"type": "end", "counts": [], "flows": [], "lost": 0}) + "\n")
    assert reportcmd.run(reportcmd_args([str(path)])) == 0
    assert "in hook ipv4 OUTPUT (nftables)" in capsys.readouterr().out


@pytest.mark.parametrize("skipped", [None, 0, 3])
def test_counts_are_exact_only_when_the_kernel_skipped_no_run(tmp_path, capsys, skipped):
    """The drop monitor's program skipped by the kernel (recursion_misses: already running on
    that CPU) means drops not counted: the summary says how many instead of "exact", in the
    JSON summary and the recording too; `report` of it prints the same. None: not readable
    (an older kernel, an older recording): no claim either way beyond the counts."""
    path = tmp_path / "s.rec"
    rec = recording.RecordingWriter(str(path))
    rec.meta({"recording": dropsmod.RECORDING, "netns_names": NAMES})
    lines, buf = [], io.StringIO()
    mon = dropsmod.DropMonitor(lines.append, dict(NAMES), json_out=buf, rec=rec)
    mon.finish([("nft_do_chain+0x3e8", "NETFILTER_DROP", 4026532384, 5)], [], 0, 1.0, skipped)
    rec.close()
    text = "\n".join(lines)
    head = [ln for ln in text.splitlines() if ln.startswith("== all drops counted")][0]
    summary = json.loads(buf.getvalue().splitlines()[-1])
    if skipped:
        assert "exact" not in head and "3 more not counted" in head, head
        assert summary["drops_not_counted"] == 3
    else:
        assert "(5, exact;" in head, head
        assert summary.get("drops_not_counted") == skipped
    assert reportcmd.run(reportcmd_args([str(path)])) == 0
    assert capsys.readouterr().out == text + "\n"
