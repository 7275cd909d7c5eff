"""Page-base learning: the kernel side finds where page structs and the direct map start.

IDs in page fragments (GSO/paged payloads) are read through a page's address, which needs the
kernel's page_offset_base and vmemmap_base. When kallsyms does not give them, the program is
built with PP_LEARN_BASES and its pp_learn function (bpf/pktpath.c) works them out from a slab
page the moment one of our own sockets sends: the result lands in the `pagebases` map.
"""
import os
import socket
import struct
import time

from pktpath.collect import bpfsys
from pktpath.errors import first_line

FLAG = "-DPP_LEARN_BASES=1"      # in the cflags: the program has pp_learn
FUNC = "pp_learn"
LEARN_TP = "sock_send_length"    # fires in sendmsg, with the socket as first argument


def wanted(cflags):
    """Does the program built with `cflags` learn page bases (and so has FUNC)?"""
    return FLAG in cflags


def learn(maps, code):
    """Let the kernel side learn the page bases: attach pp_learn (its instructions in `code`,
    the program's maps in `maps`), send one datagram from a socket of our own (before any hook
    is attached, so it is never traced), detach. Returns (learned, how IDs in page fragments
    are read or why not)."""
    table = maps["pagebases"]
    try:
        prog = bpfsys.load_bytes(code[FUNC], FUNC, bpfsys.PROG_RAW_TRACEPOINT)
    except (OSError, KeyError) as e:
        return False, first_line(e)
    try:
        link = bpfsys.raw_tracepoint_open(prog, LEARN_TP)
    except OSError as e:
        os.close(prog)
        return False, first_line(e)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(20):
                try:
                    s.sendto(b"pktpath", ("127.0.0.1", 9))
                except OSError:
                    pass
                if struct.unpack("<Q", table.lookup(struct.pack("<I", 0)))[0]:
                    return True, "page bases learned from a slab"
                time.sleep(0.005)
    finally:
        os.close(link)
        os.close(prog)
    return False, "no partial slab found to learn page bases from"
