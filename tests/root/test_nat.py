"""Follow a packet through NAT (issue #18, root, on the lab): a REDIRECT 5000 -> 5001 in the
receiving container. Every datagram must be delivered on port 5001, one path per packet, with the
NAT hop shown, as the kernel counted (the sink on 5001, Udp InDatagrams, the rule's counter).
Was: every datagram reported `lost` (the port filter rejected the packet after the rewrite)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from labtrace import DELIVERY_HOOKS, ROOT, in_datagrams, receiver_iptables, rule_packets, \
    trace_around
from pktpath.lab import overlay

pytestmark = pytest.mark.root
NEW_PORT = overlay.PORT + 1
N, FIRST_ID = 20, 0x4e410000
RULE = ["PREROUTING", "-p", "udp", "--dport", str(overlay.PORT), "-j", "REDIRECT",
        "--to-ports", str(NEW_PORT)]


def redirected_packets():
    """The REDIRECT rule's packet counter (one per new conntrack flow)."""
    return rule_packets("PREROUTING", "REDIRECT", "ports %d" % NEW_PORT, table="nat")


@pytest.fixture
def redirect(lab_up, tmp_path):
    """The REDIRECT rule and a sink on the new port in the receiving container (removed after)."""
    rec = tmp_path / "sink.ids"
    env = dict(os.environ, PYTHONPATH=ROOT)
    sink = subprocess.Popen(["ip", "netns", "exec", overlay.RECEIVER_NS, sys.executable, "-m",
                             "pktpath.lab.sink", "--port", str(NEW_PORT), "--record", str(rec)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
                            start_new_session=True)
    try:
        assert "listening" in sink.stdout.readline()
        subprocess.run(receiver_iptables("-t", "nat", "-A", *RULE), capture_output=True,
                       text=True, check=True)
        yield rec
    finally:
        subprocess.run(receiver_iptables("-t", "nat", "-D", *RULE), capture_output=True)
        os.killpg(sink.pid, signal.SIGTERM)
        sink.wait(timeout=10)


def send():
    """N datagrams to port 5000, each from a source port of its own (a new conntrack flow each:
    the rule's counter counts every one; the ports change from run to run, so no flow of an
    earlier run, still in conntrack, is reused); payload: the packet ID, big endian."""
    base = 20000 + int(time.time()) % 200 * 100
    subprocess.run(["ip", "netns", "exec", overlay.SENDER_NS, sys.executable, "-c",
                    "import socket, struct, time\n"
                    "for i in range(%d):\n"
                    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "    s.bind(('', %d + i))\n"
                    "    s.sendto(struct.pack('>I', %d + i) + b'nat', (%r, %d))\n"
                    "    s.close(); time.sleep(0.005)"
                    % (N, base, FIRST_ID, overlay.DST_IP, overlay.PORT)], check=True, timeout=30)
    return base


@pytest.mark.parametrize("id_from", ["payload", "headers"])
@pytest.mark.parametrize("mode", ["summary", "events"])
def test_redirect_is_followed(redirect, tmp_path, mode, id_from):
    """In both key modes: a header key is taken at the first sighting (the port filter applies
    to the packet as first seen) and linked across the rewrite by the skb it travels on."""
    def during():
        before, rule_before = in_datagrams(), redirected_packets()
        base = send()
        time.sleep(2.5)     # every datagram read by the sink, and past --lost-after
        return base, in_datagrams() - before, redirected_packets() - rule_before
    packets, text, (base, read, redirected) = trace_around(
        tmp_path, ["--mode", mode, "--id-from", id_from, "--timeline", "50"], during)
    sunk = sorted(int(line) for line in redirect.read_text().split())
    ids = list(range(FIRST_ID, FIRST_ID + N))
    # the kernel's side: every datagram redirected and read on the new port
    assert redirected == N and read == N and sunk == ids, (redirected, read, sunk)
    if id_from == "payload":
        ours = sorted((p for p in packets if FIRST_ID <= p["id"] < FIRST_ID + N),
                      key=lambda p: p["id"])
        assert [p["id"] for p in ours] == ids, [(p["id"], p["verdict"]) for p in ours]
    else:
        # keyed by headers: ours by their source ports (one per datagram), each one packet
        def sport(p):
            return int(p["src"].rsplit(":", 1)[1])
        ours = sorted((p for p in packets if base <= sport(p) < base + N), key=sport)
        assert [sport(p) for p in ours] == list(range(base, base + N)), \
            [(p["src"], p["verdict"], len(p["path"])) for p in ours]
        assert len({p["id"] for p in ours}) == N and all(p["key"] == "headers" for p in ours)
        assert all(p["dst"] == "%s:%d" % (overlay.DST_IP, overlay.PORT) for p in ours), ours
    for p in ours:
        assert p["verdict"] == "delivered", p
        assert p["delivered"]["port"] == NEW_PORT and \
            p["delivered"]["netns_name"] == overlay.RECEIVER_NS, p
        assert sum(h["hook"] in DELIVERY_HOOKS for h in p["path"]) == 1, p
        nat = p.get("nat")
        assert nat and len(nat) == 1, p
        (n,) = nat
        assert n["from"].endswith("> %s:%d" % (overlay.DST_IP, overlay.PORT)), p
        assert n["to"].endswith("> %s:%d" % (overlay.DST_IP, NEW_PORT)), p
        assert n["from"].split(" > ")[0] == n["to"].split(" > ")[0], p  # REDIRECT: source kept
        hop = p["path"][n["hop"]]
        assert hop["netns_name"] == overlay.RECEIVER_NS and hop["dst"].endswith(":%d" % NEW_PORT)
        assert all(h["dst"].endswith(":%d" % overlay.PORT) for h in p["path"][:n["hop"]]
                   if h["dst"] != "0.0.0.0:0"), p
    assert "[NAT]" in text
