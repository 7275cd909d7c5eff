"""A UDP receiver for the lab: `python -m pktpath.lab.sink --port 5000 [--no-read --rcvbuf N]
[--record FILE] [--ipv6]`. Reads and discards datagrams (or records their packet IDs, one per line)."""
import argparse
import socket
import struct
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--rcvbuf", type=int, help="SO_RCVBUF bytes")
    p.add_argument("--no-read", action="store_true", help="never read: the queue fills up")
    p.add_argument("--record", help="append each datagram's packet ID (big-endian) to FILE")
    p.add_argument("--ipv6", action="store_true", help="an IPv6 socket (on ::, IPv6 only)")
    args = p.parse_args(argv)
    s = socket.socket(socket.AF_INET6 if args.ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    if args.rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    if args.ipv6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if args.ipv6 else "0.0.0.0", args.port))
    print("listening", flush=True)
    if args.no_read:
        while True:
            time.sleep(3600)
    out = open(args.record, "a", buffering=1) if args.record else None
    while True:
        data = s.recv(65535)
        if out and len(data) >= 4:
            out.write("%d\n" % struct.unpack(">I", data[:4])[0])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
