"""`run.py send`: UDP datagrams whose first 4 payload bytes are the packet ID (K, K+1, ...)."""
import ipaddress
import socket
import struct
import time

from pktpath.kernel import netns as netnsmod
from pktpath.errors import UserError

MAX_ID = 2 ** 32 - 1


def add_arguments(p):
    p.add_argument("--dst", required=True, help="destination IPv4 address")
    p.add_argument("--port", required=True, type=int, help="destination UDP port")
    p.add_argument("--count", type=int, default=10, help="datagrams to send (default 10)")
    p.add_argument("--rate", type=float, default=0, help="datagrams per second (0 = max)")
    p.add_argument("--start-id", type=int, default=1, help="first packet ID (default 1)")
    p.add_argument("--size", type=int, default=64, help="UDP payload bytes (>= 4, default 64)")
    p.add_argument("--netns", help="send from this `ip netns` namespace (root)")
    p.add_argument("--byteorder", choices=("big", "little"), default="big",
                   help="packet ID byte order (default big = network order)")
    p.add_argument("--src-port", type=int, default=0, help="source UDP port (default: any)")
    p.add_argument("--paged", action="store_true",
                   help="have the kernel put the payload in page fragments, not the linear "
                        "data (UDP_SEGMENT, as GSO senders such as QUIC stacks do)")


def check(dst, port, count, start_id, rate, size, src_port):
    """Validate arguments; UserError with one line on the first problem."""
    try:
        ipaddress.IPv4Address(dst)
    except ValueError:
        raise UserError("send: --dst %r is not an IPv4 address" % dst) from None
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


def send(dst, port, count=10, start_id=1, rate=0, size=64, netns=None, byteorder="big",
         src_port=0, paged=False):
    """Send `count` datagrams; returns how many were sent."""
    check(dst, port, count, start_id, rate, size, src_port)
    if netns:
        netnsmod.enter(netns)
    pack = struct.Struct(">I" if byteorder == "big" else "<I").pack
    pad = b"\0" * (size - 4)
    addr = (dst, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if src_port:
            s.bind(("0.0.0.0", src_port))
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
                s.sendto(pack(pid) + pad, addr)
            except OSError as e:
                raise UserError("send: sendto %s:%d failed after %d datagrams: %s"
                                % (dst, port, sent, e.strerror)) from None
            sent += 1
    return sent


def run(args):
    n = send(args.dst, args.port, args.count, args.start_id, args.rate, args.size, args.netns,
             args.byteorder, args.src_port, args.paged)
    last = args.start_id + n - 1
    print("sent %d datagrams (IDs %d..%d) to %s:%d" % (n, args.start_id, last, args.dst,
                                                       args.port))
    return 0
