"""#18 (root): packets followed by header keys on the real lab, checked against what the
receiving socket got: UDP datagrams that carry no ID, IP fragments, and a TCP connection."""
import os
import subprocess
import time

import pytest

from labtrace import PORT, py_in_ns, receiver_iptables, rule_packets, start_listening, \
    tcp_exchange, trace_command
from pktpath.lab import overlay

pytestmark = pytest.mark.root

# Datagrams of random content and size (no ID anywhere), from one unconnected socket.
UDP_SENDER = r"""
import os, random, socket, time
rng = random.Random(18)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(%(count)d):
    s.sendto(os.urandom(rng.randrange(%(lo)d, %(hi)d)), ("%(dst)s", %(port)d))
    time.sleep(0.002)
print("sent from port", s.getsockname()[1])
"""
# What the socket received: one line per datagram, "src_ip src_port length"
UDP_RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("0.0.0.0", %(port)d))
out = open(sys.argv[1], "a", buffering=1)
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    out.write("%%s %%d %%d\n" %% (a[0], a[1], len(d)))
"""
TCP_CLIENT = r"""
import socket, time
s = socket.create_connection(("%(dst)s", %(port)d))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(%(count)d):
    s.sendall(bytes([i %% 251]) * (10 + 7 * i))
    time.sleep(0.01)
s.close()
"""


def _udp_case(lab_up, tmp_path, count, lo, hi):
    got = tmp_path / "got.txt"
    rx = start_listening(py_in_ns(overlay.RECEIVER_NS, UDP_RECEIVER % {"port": PORT}, str(got)))
    try:
        packets, p = trace_command(tmp_path, py_in_ns(overlay.SENDER_NS, UDP_SENDER % {
            "count": count, "lo": lo, "hi": hi, "dst": overlay.DST_IP, "port": PORT}), [])
        time.sleep(0.2)
    finally:
        rx.kill()
        rx.wait()
    received = [line.split() for line in got.read_text().splitlines()]
    assert len(received) == count, p.stdout[-2000:]
    ns = {os.stat("/run/netns/" + n).st_ino for n in overlay.LAB_NS}
    # every datagram the socket received is one packet, delivered, followed through all four
    # namespaces, with the flow the socket saw
    assert len(packets) == count, [(q["verdict"], q["events"]) for q in packets][:20]
    assert len({q["id"] for q in packets}) == count
    flows = sorted(("%s:%s" % (ip, port), "%s:%d" % (overlay.DST_IP, PORT))
                   for ip, port, _n in received)
    assert sorted((q["src"], q["dst"]) for q in packets) == flows
    for q in packets:
        assert (q["verdict"], q["key"], q["proto"]) == ("delivered", "headers", "udp"), q
        assert q["delivered"]["netns_name"] == overlay.RECEIVER_NS and \
            q["delivered"]["port"] == PORT
        assert ns <= {h["netns"] for h in q["path"]}, q
        assert any(h["encap"] and h["vni"] == overlay.VNI for h in q["path"])
    return packets


def test_unstamped_udp_followed_by_header_keys(lab_up, tmp_path):
    """300 datagrams with random payloads (no ID) and sizes: each one path, one per datagram."""
    packets = _udp_case(lab_up, tmp_path, 300, 8, 1200)
    # as many hops as a stamped datagram has (9 on the lab's default hooks): never split
    assert {q["events"] for q in packets} == {9}


def test_fragmented_udp_keeps_its_key_through_reassembly(lab_up, tmp_path):
    """3000-byte datagrams leave pp-ctrA as three IP fragments; the first carries the UDP header
    and is followed to the socket after reassembly (lengths and the more-fragments flag change
    there: they are not part of a UDP key)."""
    packets = _udp_case(lab_up, tmp_path, 20, 2990, 3000)
    assert {q["events"] for q in packets} == {9}


def test_tcp_connection_followed_by_header_keys(lab_up, tmp_path):
    """A TCP connection through the overlay with --proto tcp: its segments to the server port
    (handshake, data, FIN) are packets with the connection's 5-tuple, each followed across the
    overlay into the server's namespace (their verdicts are not settled here)."""
    got = tmp_path / "got.txt"
    count = 40
    packets, p = tcp_exchange(tmp_path, got, TCP_CLIENT % {
        "dst": overlay.DST_IP, "port": PORT, "count": count}, ["--proto", "tcp"])
    ip, port, nbytes = got.read_text().split()
    assert int(nbytes) == sum(10 + 7 * i for i in range(count))
    client = "%s:%s" % (ip, port)
    assert packets and {(q["key"], q["proto"], q["src"], q["dst"]) for q in packets} == \
        {("headers", "tcp", client, "%s:%d" % (overlay.DST_IP, PORT))}
    # SYN, the handshake's ACK, one segment per send (TCP_NODELAY), FIN (and their ACKs)
    assert len(packets) >= count + 3 and len({q["id"] for q in packets}) == len(packets)
    ctr_a, ctr_b = (os.stat("/run/netns/" + n).st_ino for n in (overlay.SENDER_NS,
                                                                 overlay.RECEIVER_NS))
    for q in packets:
        seen = {h["netns"] for h in q["path"]}
        assert {ctr_a, ctr_b} <= seen, q
        assert any(h["encap"] and h["vni"] == overlay.VNI for h in q["path"]), q
    # the same traffic with --proto udp is not traced at all (nor with the default)
    assert "tcp" not in {q.get("proto") for q in _udp_only(tmp_path)}


def _udp_only(tmp_path):
    packets, _p = tcp_exchange(tmp_path, tmp_path / "got2.txt", TCP_CLIENT % {
        "dst": overlay.DST_IP, "port": PORT, "count": 3}, [])
    assert packets == []
    return packets


SAME_SENDER = r"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(%(count)d):
    s.sendto(b"identical payload", ("%(dst)s", %(port)d))
    time.sleep(0.002)
"""


def _nth_rule(action):
    return receiver_iptables(action, "INPUT", "-p", "udp", "--dport", str(PORT), "-m",
                             "statistic", "--mode", "nth", "--every", "3", "--packet", "0",
                             "-j", "DROP")


def test_identical_unstamped_datagrams_with_an_nth_drop(lab_up, tmp_path):
    """100 datagrams with the same payload from one unconnected socket (a payload ID would be
    the same for all; their IP IDs differ, measured: so do their header keys), every third
    dropped by an iptables nth rule in pp-ctrB: 100 packets, as many dropped (NETFILTER_DROP)
    as the rule counted, the rest delivered, as many as the socket read, nothing lost."""
    count = 100
    got = tmp_path / "got.txt"
    subprocess.run(_nth_rule("-I"), check=True)
    try:
        rx = start_listening(py_in_ns(overlay.RECEIVER_NS, UDP_RECEIVER % {"port": PORT},
                                      str(got)))
        try:
            packets, p = trace_command(tmp_path, py_in_ns(overlay.SENDER_NS, SAME_SENDER % {
                "count": count, "dst": overlay.DST_IP, "port": PORT}), [])
            time.sleep(0.2)
        finally:
            rx.kill()
            rx.wait()
        dropped_by_rule = rule_packets("INPUT", "statistic")
    finally:
        subprocess.run(_nth_rule("-D"), check=False)
    received = len(got.read_text().splitlines())
    verdicts = {}
    for q in packets:
        verdicts[q["verdict"]] = verdicts.get(q["verdict"], 0) + 1
    summary = "verdicts %s, rule %d, read %d" % (verdicts, dropped_by_rule, received)
    assert dropped_by_rule + received == count, summary
    assert len(packets) == count, summary
    assert verdicts.get("dropped", 0) == dropped_by_rule, summary
    assert verdicts.get("delivered", 0) == received, summary
    assert all(q["drop"]["reason"] == "NETFILTER_DROP" for q in packets
               if q["verdict"] == "dropped"), summary
