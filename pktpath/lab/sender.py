"""`run.py send`: UDP datagrams whose first 4 payload bytes are the packet ID (K, K+1, ...).

With `--geneve VNI` each datagram is instead a Geneve frame built here (this kernel may have no
Geneve devices): outer UDP to --dst:--geneve-port carrying a Geneve header with options (their
length varies from packet to packet: 4, 12, 20 or 28 bytes), then inner Ethernet, IPv4 or IPv6
(--inner-src/--inner-dst), UDP to --port and the packet ID.
"""
import ipaddress
import socket
import struct
import time

from pktpath.kernel import netns as netnsmod
from pktpath.config import cmdline_number as num
from pktpath.errors import UserError

MAX_ID = 2 ** 32 - 1


def add_arguments(p):
    p.add_argument("--dst", required=True, help="destination IPv4 or IPv6 address (with "
                   "--geneve: the outer, underlay destination)")
    p.add_argument("--port", required=True, type=num("port", 1, 65535, integer=True), help="destination UDP port (with "
                   "--geneve: the inner one)")
    p.add_argument("--count", type=num("count", lo=0, integer=True), default=10, help="datagrams to send (default 10)")
    p.add_argument("--rate", type=num("rate", lo=0), default=0, help="datagrams per second (0 = max)")
    p.add_argument("--start-id", type=num("start_id", 0, MAX_ID, integer=True), default=1, help="first packet ID (default 1)")
    p.add_argument("--size", type=num("size", 4, 65507, integer=True), default=64, help="UDP payload bytes (>= 4, default 64)")
    p.add_argument("--netns", help="send from this `ip netns` namespace (root)")
    p.add_argument("--byteorder", choices=("big", "little"), default="big",
                   help="packet ID byte order (default big = network order)")
    p.add_argument("--src-port", type=num("src_port", 0, 65535, integer=True), default=0, help="source UDP port (default: any)")
    p.add_argument("--paged", action="store_true",
                   help="have the kernel put the payload in page fragments, not the linear "
                        "data (UDP_SEGMENT, as GSO senders such as QUIC stacks do)")
    g = p.add_argument_group("Geneve frames built here")
    g.add_argument("--geneve", type=num("geneve", 0, 2 ** 24 - 1, integer=True), metavar="VNI",
                   help="send Geneve frames with this VNI (0-16777215), with options")
    g.add_argument("--geneve-port", type=num("geneve_port", 1, 65535, integer=True), default=6081, metavar="PORT",
                   help="outer UDP destination port (default 6081)")
    g.add_argument("--inner-src", default="198.51.100.1",
                   help="inner source address (default 198.51.100.1; IPv6 for an IPv6 inner)")
    g.add_argument("--inner-dst", default="198.51.100.2", help="inner destination address "
                   "(default 198.51.100.2; the same family as --inner-src)")
    g.add_argument("--inner-sport", type=num("inner_sport", 0, 65535, integer=True), default=40000,
                   help="inner UDP source port (default 40000)")


def check(dst, port, count, start_id, rate, size, src_port):
    """Validate arguments; UserError with one line on the first problem."""
    try:
        ipaddress.ip_address(dst)
    except ValueError:
        raise UserError("send: --dst %r is not an IPv4 or IPv6 address" % dst) from None
    for name, val in (("--port", port), ("--src-port", src_port)):
        if not (0 if name == "--src-port" else 1) <= val <= 65535:
            raise UserError("send: %s %d out of range 1-65535" % (name, val))
    if count < 0:
        raise UserError("send: --count must be >= 0")
    if rate < 0:
        raise UserError("send: --rate must be >= 0")
    if not 4 <= size <= 65507:
        raise UserError("send: --size must be 4-65507 bytes (the ID takes 4)")
    if not 0 <= start_id or start_id + max(count, 1) - 1 > MAX_ID:
        raise UserError("send: IDs %d..%d do not fit in 32 bits" % (start_id, start_id + count - 1))


UDP_SEGMENT = 103  # linux/udp.h: a socket's GSO segment size; its sends are built paged


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def geneve_options(pid):
    """The Geneve options of packet `pid`: 1 to 4 TLVs (class 0x0102, type 0x80 + n), each a
    4-byte header and 0-4 bytes of data: 4, 12, 20 or 28 bytes in all."""
    out = b""
    for n in range(pid % 4 + 1):
        data = bytes([n] * (4 if n else 0))
        out += struct.pack("!HBB", 0x0102, 0x80 + n, len(data) // 4) + data
    return out


def geneve_frame(vni, pid, src, dst, sport, dport, payload, smac=b"\x02\0\0\0\0\x0a",
                 dmac=b"\x02\0\0\0\0\x0b"):
    """One Geneve payload (what goes after the outer UDP header): Geneve header with options,
    Ethernet, IPv4 or IPv6 (by the addresses), UDP (checksummed) and `payload`."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ulen = 8 + len(payload)
    if s.version == 6:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", ulen, 17)
    else:
        pseudo = s.packed + d.packed + struct.pack("!xBH", 17, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    csum = _csum(pseudo + udp) or 0xffff
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if s.version == 6:
        ip = struct.pack("!IHBB", 6 << 28, ulen, 17, 64) + s.packed + d.packed
        etype = 0x86dd
    else:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, pid & 0xffff, 0x4000, 64, 17, 0,
                          s.packed, d.packed)
        ip = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        etype = 0x0800
    opts = geneve_options(pid)
    gnv = struct.pack("!BBHI", len(opts) // 4, 0, 0x6558, vni << 8) + opts
    return gnv + dmac + smac + struct.pack("!H", etype) + ip + udp


def _geneve_framer(vni, inner):
    src, dst, sport, dport = inner
    return lambda pid, payload: geneve_frame(vni, pid, src, dst, sport, dport, payload)


def send(dst, port, count=10, start_id=1, rate=0, size=64, netns=None, byteorder="big",
         src_port=0, paged=False, geneve=None, geneve_port=6081, inner=None):
    """Send `count` datagrams; returns how many were sent. With `geneve` (a VNI), each is a
    Geneve frame to dst:geneve_port whose inner packet (inner: (src, dst, sport, dport)) carries
    the ID."""
    check(dst, geneve_port if geneve is not None else port, count, start_id, rate, size,
          src_port)
    if geneve is not None:
        if not 0 <= geneve < 2 ** 24:
            raise UserError("send: --geneve VNI must be 0-16777215")
        if paged:
            raise UserError("send: --geneve and --paged do not go together")
        try:
            fams = {ipaddress.ip_address(a).version for a in inner[:2]}
        except ValueError as e:
            raise UserError("send: %s" % e) from None
        if len(fams) != 1:
            raise UserError("send: --inner-src and --inner-dst must be the same family")
        inner = tuple(inner[:3]) + (port,)
        port = geneve_port
    if netns:
        netnsmod.enter(netns)
    pack = struct.Struct(">I" if byteorder == "big" else "<I").pack
    pad = b"\0" * (size - 4)
    addr = (dst, port)
    v6 = ipaddress.ip_address(dst).version == 6
    if geneve is not None:
        frame = _geneve_framer(geneve, inner)
        payload = lambda pid: frame(pid, pack(pid) + pad)  # noqa: E731
    else:
        payload = lambda pid: pack(pid) + pad  # noqa: E731
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        if src_port:
            s.bind(("::" if v6 else "0.0.0.0", src_port))
        if paged:
            if size > 1400:
                raise UserError("send: --paged sends one segment: --size must be <= 1400")
            s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, size)
        interval = 1.0 / rate if rate else 0
        t_next = time.monotonic()
        sent = 0
        for pid in range(start_id, start_id + count):
            if interval:
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                t_next += interval
            try:
                s.sendto(payload(pid), addr)
            except OSError as e:
                raise UserError("send: sendto %s:%d failed after %d datagrams: %s"
                                % (dst, port, sent, e.strerror)) from None
            sent += 1
    return sent


def run(args):
    n = send(args.dst, args.port, args.count, args.start_id, args.rate, args.size, args.netns,
             args.byteorder, args.src_port, args.paged, args.geneve, args.geneve_port,
             (args.inner_src, args.inner_dst, args.inner_sport))
    last = args.start_id + n - 1
    dst = "[%s]" % args.dst if ":" in args.dst else args.dst
    if args.geneve is not None:
        print("sent %d Geneve frames (VNI %d, IDs %d..%d) to %s:%d, inner to %s port %d"
              % (n, args.geneve, args.start_id, last, dst, args.geneve_port, args.inner_dst,
                 args.port))
    else:
        print("sent %d datagrams (IDs %d..%d) to %s:%d" % (n, args.start_id, last, dst,
                                                           args.port))
    return 0
