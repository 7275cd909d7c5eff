"""Packet IDs are not unique (issue #18, root, on the lab): identical payloads share their payload
ID, two senders may send the same IDs at once. Each datagram must be a packet of its own with one
delivery, and the packets delivered must be what the receiving namespace's kernel counted."""
import collections
import subprocess
import sys
import time

import pytest

from labtrace import DELIVERY_HOOKS, RUN, in_datagrams, trace_around
from pktpath.lab import overlay

pytestmark = pytest.mark.root
HELLO = int.from_bytes(b"hell", "big")     # the ID of b"hello world" (offset 0, big endian)


def trace(tmp_path, mode, send):
    """(packets, report text, datagrams the sink read) of a trace in `mode` around `send()`."""
    def during():
        before = in_datagrams()
        send()
        time.sleep(2.5)     # every datagram read by the sink, and past --lost-after
        return in_datagrams() - before
    return trace_around(tmp_path, ["--mode", mode, "--timeline", "0"], during)


def deliveries(pkt):
    return sum(1 for h in pkt["path"] if h["hook"] in DELIVERY_HOOKS)


@pytest.mark.parametrize("mode", ["summary", "events"])
def test_identical_datagrams_are_three_packets(lab_up, tmp_path, mode):
    """Three datagrams "hello world" (the ID is its first 4 bytes): three packets, each
    delivered once (was: one packet of 27 hops, one delivery)."""
    def send():
        subprocess.run(["ip", "netns", "exec", overlay.SENDER_NS, sys.executable, "-c",
                        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        "for _ in range(3): s.sendto(b'hello world', (%r, %d))"
                        % (overlay.DST_IP, overlay.PORT)], check=True, timeout=30)
    packets, text, read = trace(tmp_path, mode, send)
    hello = [p for p in packets if p["id"] == HELLO]
    assert read == 3
    assert [(p["verdict"], deliveries(p)) for p in hello] == [("delivered", 1)] * 3, hello
    assert all(p["delivered"]["netns_name"] == overlay.RECEIVER_NS for p in hello)
    assert "packet IDs are not unique: 2 packets had the ID of another packet" in text


@pytest.mark.parametrize("mode", ["summary", "events"])
def test_two_senders_of_the_same_ids_at_once(lab_up, tmp_path, mode, count=20, rate=200):
    """Two sender processes send IDs 800-819 at the same time (200 datagrams/s each: their
    datagrams interleave): 40 packets, one delivery each, as many as the sink read (was: 20
    packets for 40 datagrams)."""
    _two_senders(tmp_path, mode, count, rate)


@pytest.mark.parametrize("mode", ["summary", "events"])
def test_two_senders_racing(lab_up, tmp_path, mode):
    """The same with 2,000 IDs at 2,000/s each: datagrams of one ID meet in the receiving
    socket's queue on both CPUs, where a batch's delivery walk and a datagram's own callback
    may deliver it at once (the kernel then emits its path twice). Was, in summary mode: ~8
    paths in 4,000 of 17 hops (each hop twice), 1 run in ~15 with 20 IDs; in events mode, ~1
    run in 4: 1-10 packets `lost` at their last hop (the reader had taken the datagram before
    its callback's scan: events mode had no fallback delivery); and in summary mode ~1 run in 3,
    2-32 IDs counted once: two datagrams sent by the two senders in step began their kernel
    paths in the same nanosecond on two CPUs, and user space told a path by its first time
    stamp alone (now: by its key, skb and first time stamp; 0 in 8 runs after)."""
    _two_senders(tmp_path, mode, 2000, 2000)


def _two_senders(tmp_path, mode, count, rate):
    tmp_path.mkdir(exist_ok=True)

    def send():
        cmd = RUN + ["send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP, "--port",
                     str(overlay.PORT), "--start-id", "800", "--count", str(count),
                     "--rate", str(rate)]
        senders = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for _ in range(2)]
        for s in senders:
            _out, err = s.communicate(timeout=60)
            assert s.returncode == 0, err
    packets, text, read = trace(tmp_path, mode, send)
    mine = [p for p in packets if 800 <= p["id"] < 800 + count]
    assert read == 2 * count
    assert len(mine) == 2 * count, collections.Counter(p["id"] for p in mine)
    assert collections.Counter(p["id"] for p in mine) == dict.fromkeys(range(800, 800 + count), 2)
    assert [(p["verdict"], deliveries(p)) for p in mine] == [("delivered", 1)] * (2 * count)
    for p in mine:      # each path is one datagram's: sender to receiver, each place once
        places = [(h["hook"], h["dev"], h["netns"]) for h in p["path"]]
        assert len(places) == len(set(places)), p
        assert p["path"][0]["netns_name"] == overlay.SENDER_NS, p
    assert "packet IDs are not unique: %d packets had the ID of another packet" % count in text


@pytest.mark.parametrize("mode", ["summary", "events"])
def test_two_senders_with_a_packet_tap_at_the_receiver(lab_up, tmp_path, mode):
    """As above with a packet socket open in the receiving namespace (what tcpdump does): the
    tap gets a clone of each datagram's skb (measured: the socket still gets the skb the path
    began on; the clones are freed when the tap closes). Still 40 packets, one delivery each."""
    tap = subprocess.Popen(["ip", "netns", "exec", overlay.RECEIVER_NS, sys.executable, "-c",
                            "import socket, sys, time\n"
                            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, "
                            "socket.htons(3))\n"
                            "print('up', flush=True)\n"
                            "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert tap.stdout.readline().strip() == "up"
        test_two_senders_of_the_same_ids_at_once(lab_up, tmp_path, mode)
    finally:
        tap.kill()
        tap.wait()
