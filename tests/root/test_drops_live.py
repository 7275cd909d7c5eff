"""End-to-end: `run.py drops` on the real two-host VXLAN lab, with real drops, checked against the
kernel's own counters (iptables rule counters, /proc/net/snmp)."""
import json
import os
import subprocess
import sys

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
TCP_PORT = 8080


def ns_inode(name):
    return os.stat("/run/netns/" + name).st_ino


def drops(tmp_path, args, command, timeout=180):
    """Run `drops ARGS --json F --record R -- COMMAND`: (details, summary, process, recording)."""
    out, rec = tmp_path / "d.jsonl", tmp_path / "d.rec"
    p = subprocess.run(RUN + ["drops", "--json", str(out), "--record", str(rec), *args, "--"]
                       + command, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert lines and lines[-1]["type"] == "summary"
    return lines[:-1], lines[-1], p, rec


def detail_text(d):
    from pktpath.output import drops as out
    return out.detail_line(d)


def _ns(netns, *cmd):
    return ["ip", "netns", "exec", netns, *cmd]


def _rule_packets(netns, port):
    out = subprocess.run(_ns(netns, "iptables", "-L", "INPUT", "-v", "-n", "-x"),
                         capture_output=True, text=True, check=True).stdout
    rows = [ln.split() for ln in out.splitlines() if "dpt:%d" % port in ln and "DROP" in ln]
    assert len(rows) == 1, out
    return int(rows[0][0])


def _udp_noports(netns):
    out = subprocess.run(_ns(netns, "cat", "/proc/net/snmp"), capture_output=True, text=True,
                         check=True).stdout
    udp = [ln.split() for ln in out.splitlines() if ln.startswith("Udp:")]
    return int(udp[1][udp[0].index("NoPorts")])


def _udp6_noports(netns):
    out = subprocess.run(_ns(netns, "cat", "/proc/net/snmp6"), capture_output=True, text=True,
                         check=True).stdout
    return int(dict(ln.split() for ln in out.splitlines() if ln.strip())["Udp6NoPorts"])


def send(start, count, rate=500):
    return RUN + ["send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP, "--port",
                  str(overlay.PORT), "--start-id", str(start), "--count", str(count),
                  "--rate", str(rate)]


CONNECT = ("import socket\n"
           "for i in range(%d):\n"
           "    s = socket.socket(); s.settimeout(0.3)\n"
           "    s.connect_ex(('%s', %d)); s.close()\n")


@pytest.fixture
def tcp_blocked(lab_up):
    rule = ["INPUT", "-p", "tcp", "--dport", str(TCP_PORT), "-j", "DROP"]
    subprocess.run(_ns(overlay.RECEIVER_NS, "iptables", "-I", *rule), check=True)
    yield
    subprocess.run(_ns(overlay.RECEIVER_NS, "iptables", "-D", *rule), check=True)


def test_tcp_syn_blocked_by_iptables(tcp_blocked, tmp_path):
    """One drop line per SYN the rule dropped: its flow, flags, reason and namespace."""
    cmd = _ns(overlay.SENDER_NS, sys.executable, "-c", CONNECT % (3, overlay.DST_IP, TCP_PORT))
    details, summary, p, _ = drops(tmp_path, ["--proto", "tcp", "--port", str(TCP_PORT),
                                              "--stack"], cmd)
    n = _rule_packets(overlay.RECEIVER_NS, TCP_PORT)
    assert n >= 3 and len(details) == n == summary["drops"], (n, details, summary)
    for d in details:
        assert d["proto"] == "tcp" and "SYN" in d["tcp_flags"].split("|"), d
        assert d["src"].startswith(overlay.SRC_IP + ":")
        assert d["dst"] == "%s:%d" % (overlay.DST_IP, TCP_PORT)
        assert d["reason"] == "NETFILTER_DROP" and d["location"].startswith(("nf_hook_slow", "nft_"))
        assert d["netns"] == ns_inode(overlay.RECEIVER_NS)
        assert d["netns_name"] == overlay.RECEIVER_NS
        assert d["tunnel"] is None and d["vni"] is None
        # the netfilter hook, from the stack (the rule's table/chain is not visible)
        assert d["nf_hook"].startswith("ipv4 INPUT"), (d["nf_hook"], d["stack"])
    lines = [ln for ln in p.stdout.splitlines() if "NETFILTER_DROP at" in ln]
    assert len(lines) == n and all("[SYN]" in ln and overlay.RECEIVER_NS in ln
                                   and " in hook ipv4 INPUT" in ln for ln in lines)
    assert "hint (NETFILTER_DROP)" in p.stdout and "iptables" in p.stdout
    assert "nft monitor trace" in p.stdout


def test_udp_no_listener_and_report(fault, tmp_path):
    """NO_SOCKET with the flow; `report` of the recording prints the same output, no root."""
    fault("no-listener")
    details, summary, p, rec = drops(tmp_path, ["--proto", "udp", "--port", str(overlay.PORT),
                                                "--stack"], send(100, 3))
    assert len(details) == 3 and summary["drops"] == 3
    for d in details:
        assert d["reason"] == "NO_SOCKET" and d["proto"] == "udp"
        assert d["dst"] == "%s:%d" % (overlay.DST_IP, overlay.PORT)
        assert d["netns_name"] == overlay.RECEIVER_NS
        assert d["stack"] and d["stack"][0].startswith("__udp4_lib_rcv"), d["stack"]
    assert "top flows dropped" in p.stdout
    r = subprocess.run(RUN + ["report", str(rec)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # the live stdout also holds the command's own output
    assert r.stdout == "".join(ln for ln in p.stdout.splitlines(True) if not ln.startswith("sent "))


def test_vni_mismatch_inner_flow(fault, tmp_path):
    """The drop at VXLAN decap in the receiving host's namespace, with the inner flow, the VNI
    and the outer addresses."""
    fault("vni-mismatch")
    details, summary, _, _ = drops(tmp_path, ["--netns", "pp-hostB"], send(200, 3))
    vx = [d for d in details if d["reason"] == "VXLAN_VNI_NOT_FOUND" and d["proto"] == "udp"]
    assert len(vx) == 3, details
    # the sender's ARP requests (and IPv6 neighbour discovery of the new devices) cross the
    # tunnel too: also shown with the tunnel's VNI
    others = [d for d in details if d not in vx and d["reason"] == "VXLAN_VNI_NOT_FOUND"]
    assert all(d["tunnel"] == "vxlan" and d["vni"] == overlay.VNI for d in others), [
        detail_text(d) for d in others]
    for d in vx:
        assert d["netns"] == ns_inode("pp-hostB") and d["netns_name"] == "pp-hostB"
        assert d["proto"] == "udp" and d["tunnel"] == "vxlan" and d["vni"] == overlay.VNI
        assert d["src"].startswith(overlay.SRC_IP + ":")
        assert d["dst"] == "%s:%d" % (overlay.DST_IP, overlay.PORT)
        assert d["outer_src"].startswith(overlay.UNDERLAY_A + ":")
        assert d["outer_dst"] == "%s:%d" % (overlay.UNDERLAY_B, overlay.VXLAN_PORT)


def test_flood_counted_exactly_details_limited(fault, tmp_path):
    """A flood: the counts equal the kernel's own (Udp NoPorts), the details are rate-limited,
    and every drop not shown is accounted for ("more like this")."""
    fault("no-listener")
    n = 20000
    before = _udp_noports(overlay.RECEIVER_NS)
    details, summary, p, _ = drops(
        tmp_path, ["--netns", overlay.RECEIVER_NS, "--reason", "NO_SOCKET", "--limit", "5",
                   "--interval", "1"], send(1, n, rate=0))
    expected = _udp_noports(overlay.RECEIVER_NS) - before
    assert expected > n // 2
    assert summary["drops"] == expected, (summary["drops"], expected)
    # the kernel's skipped runs of the monitor's program are read (0 here: the count is exact)
    assert summary["drops_not_counted"] == 0
    assert 0 < len(details) == summary["details_shown"] < 200
    assert summary["details_not_shown"] == expected - len(details)
    more = sum(int(ln.split()[1]) for ln in p.stdout.splitlines()
               if ln.startswith("  ... ") and "more like this" in ln and "== all" not in ln)
    assert more >= expected - len(details)   # per interval, and once more for the whole run
    assert "%d not shown" % (expected - len(details)) in p.stdout


def test_drops_all_of_the_tracer_counts_the_same_way(fault, tmp_path):
    """The tracer's --drops all: the same kernel counting and table (no details)."""
    fault("no-listener")
    p = subprocess.run(RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--timeline", "0",
                              "--drops", "all", "--"] + send(400, 3),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    table = p.stdout[p.stdout.index("all drops on this machine"):]
    assert any("NO_SOCKET" in ln and overlay.RECEIVER_NS in ln for ln in table.splitlines())


@pytest.fixture
def lab_shape(lab_up):
    """lab_shape(underlay): the lab rebuilt with that underlay (the next lab_up restores the
    default shape)."""
    def build(underlay):
        if underlay != overlay.DEFAULT_SHAPE["underlay"]:
            overlay.up(underlay=underlay)
        return overlay.addresses()
    return build


@pytest.mark.parametrize("underlay,inner", [("ipv4", "ipv4"), ("ipv4", "ipv6"),
                                            ("ipv6", "ipv4"), ("ipv6", "ipv6")])
def test_geneve_no_socket_inner_flow(lab_shape, tmp_path, underlay, inner):
    """Geneve frames built by `send --geneve` (options of 4 to 28 bytes), dropped NO_SOCKET in
    the receiving host (nothing listens on 6081): each drop with tunnel geneve, the VNI, the
    inner flow and the outer addresses; the count is the kernel's Udp NoPorts delta."""
    a = lab_shape(underlay)
    isrc, idst, _ = overlay.OVERLAY[inner]
    noports = _udp6_noports if underlay == "ipv6" else _udp_noports
    before = noports("pp-hostB")
    cmd = RUN + ["send", "--netns", "pp-hostA", "--dst", a["dhost"], "--port",
                 str(overlay.PORT), "--geneve", "77", "--inner-src", isrc, "--inner-dst", idst,
                 "--count", "8", "--rate", "200"]
    details, summary, p, rec = drops(tmp_path, ["--netns", "pp-hostB", "--reason", "NO_SOCKET",
                                                "--limit", "50"],
                                     cmd)
    expected = noports("pp-hostB") - before
    assert expected >= 8
    assert len(details) == summary["drops"] == expected, ([detail_text(d) for d in details],
                                                          expected)
    gn = [d for d in details if d["tunnel"] == "geneve"]
    assert len(gn) == 8, [detail_text(d) for d in details]
    for d in gn:
        assert d["vni"] == 77 and d["proto"] == "udp", d
        assert d["netns_name"] == "pp-hostB"
        assert d["src"] == "%s:40000" % hostport(isrc)
        assert d["dst"] == "%s:%d" % (hostport(idst), overlay.PORT)
        assert d["outer_src"].rsplit(":", 1)[0] == hostport(a["shost"])
        assert d["outer_dst"] == "%s:%d" % (hostport(a["dhost"]), overlay.GENEVE_PORT)
    line = "(geneve vni 77 %s:" % hostport(a["shost"])
    assert sum(line in ln for ln in p.stdout.splitlines()) == 8, p.stdout
    top = p.stdout[p.stdout.index("top flows dropped"):]
    assert "geneve" in top and "77" in top, top
    r = subprocess.run(RUN + ["report", str(rec)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(ln for ln in p.stdout.splitlines(True) if not ln.startswith("sent "))


def hostport(addr):
    return "[%s]" % addr if ":" in addr else addr
