"""The sender, without root: argument errors and real datagrams over loopback."""
import os
import socket
import struct
import subprocess
import sys

import pytest

from pktpath.lab import sender
from pktpath.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("args,needle", [
    (["--dst", "300.1.1.1", "--port", "5000"], "not an IPv4 or IPv6 address"),
    (["--dst", "127.0.0.1", "--port", "70000"], "command line: port: must be an integer 1-65535"),
    (["--dst", "127.0.0.1", "--port", "5000", "--count", "-1"], "command line: count: "),
    (["--dst", "127.0.0.1", "--port", "5000", "--size", "2"], "command line: size: must be an integer 4-65507"),
    (["--dst", "127.0.0.1", "--port", "5000", "--start-id", "4294967295", "--count", "2"],
     "32 bits"),
    (["--dst", "127.0.0.1", "--port", "x"], "command line: port: must be an integer"),
    (["--dst", "127.0.0.1", "--port", "5000", "--netns", "pp-nosuch"], "netns"),
])
def test_bad_arguments_one_line_exit_2(args, needle):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "send"] + args,
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert needle in p.stderr and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_ids_and_sizes_over_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        r.settimeout(5)
        port = r.getsockname()[1]
        assert sender.send("127.0.0.1", port, count=5, start_id=7, size=100) == 5
        got = [r.recv(2000) for _ in range(5)]
    assert [struct.unpack(">I", d[:4])[0] for d in got] == [7, 8, 9, 10, 11]
    assert {len(d) for d in got} == {100}


def test_little_endian_ids():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        r.settimeout(5)
        sender.send("127.0.0.1", r.getsockname()[1], count=1, start_id=0x01020304,
                    byteorder="little")
        assert r.recv(100)[:4] == bytes([4, 3, 2, 1])


def test_check_rejects_bad_rate():
    with pytest.raises(UserError):
        sender.check("127.0.0.1", 5000, 1, 1, -1, 64, 0)


def test_bench_subcommand_hands_every_argument_to_the_script():
    """`run.py bench --help` is bench/bench.py's own help (its options, e.g. --floor), not the
    wrapper's; no root needed for that."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, os.path.join(root, "run.py"), "bench", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--floor" in p.stdout and "--rounds" in p.stdout


@pytest.mark.parametrize("args,specs", [
    ([], None),
    (["--hooks", "light"], ["light"]),
    (["-q", "--hooks=net_dev_queue,kfree_skb"], ["net_dev_queue", "kfree_skb"]),
])
def test_bench_floor_uses_the_tracers_hooks(args, specs):
    """`bench --floor --tracer-args '--hooks light'` puts its empty programs on the light set's
    hooks, not on the default set's (the floor must be of the hooks actually measured)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    assert bench.hook_specs(args) == specs


@pytest.mark.parametrize("src,dst", [("198.51.100.1", "198.51.100.2"),
                                     ("2001:db8:2::1", "2001:db8:2::2")])
def test_geneve_frames_carry_options_and_the_inner_id(src, dst):
    import ipaddress
    lens = set()
    for pid in range(1, 9):
        f = sender.geneve_frame(77, pid, src, dst, 40000, 5000, struct.pack(">I", pid) + b"x")
        ver_optlen, flags, proto, vni_rsvd = struct.unpack("!BBHI", f[:8])
        assert ver_optlen >> 6 == 0 and proto == 0x6558 and vni_rsvd >> 8 == 77
        optlen = (ver_optlen & 0x3f) * 4
        lens.add(optlen)
        eth = f[8 + optlen:]
        etype = struct.unpack("!H", eth[12:14])[0]
        ip = eth[14:]
        v6 = ":" in src
        assert etype == (0x86dd if v6 else 0x0800)
        hl = 40 if v6 else (ip[0] & 0xf) * 4
        assert ip[6 if v6 else 9] == 17
        if not v6:
            assert sender._csum(ip[:20]) == 0                         # header checksum
        udp = ip[hl:]
        a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        pseudo = a + b + (struct.pack("!IxxxB", len(udp), 17) if v6 else
                          struct.pack("!xBH", 17, len(udp)))
        assert sender._csum(pseudo + udp) == 0                       # UDP checksum
        assert struct.unpack("!HH", udp[:4]) == (40000, 5000)
        assert struct.unpack(">I", udp[8:12])[0] == pid
    assert lens == {4, 12, 20, 28}


def test_geneve_arguments_checked():
    with pytest.raises(UserError, match="VNI must be"):
        sender.send("192.0.2.2", 5000, geneve=2 ** 24, inner=("198.51.100.1", "198.51.100.2", 1))
    with pytest.raises(UserError, match="same family"):
        sender.send("192.0.2.2", 5000, geneve=1, inner=("198.51.100.1", "2001:db8::2", 1))
