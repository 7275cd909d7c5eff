"""--pcap FILE: the traced packets' headers at each hop as a pcap-ng file (Wireshark, tshark).

One interface per device + network namespace (and link type: Ethernet when the copy starts at
the mac header, raw IP when it starts at the IP header), named `dev@netns` ("sock@netns" for a
socket's delivery hop, which has no device). Each packet block is one hop of one traced packet;
its comment gives the hook, the packet ID and the packet's verdict, e.g.
`hook=net_dev_queue id=805 verdict=delivered`. The section header's comment says how many
packets and snaps were left out (memory bound, see process/snaps.py).

A delivery seen after its reader took the datagram (the fallback of bpf/pktpath.c pp_deliver:
"the packet this CPU saw pass last") has no copy of its own: its skb may be freed by then. Its
block carries the packet's header as at its hop before (same bytes, the socket's interface),
said in its comment: `hook=sk_data_ready id=805 verdict=delivered header_of=netif_receive_skb`.

The blocks are written here with struct (SHB, IDB with if_name/if_description/if_tsresol, EPB
with opt_comment; pcap-ng spec, draft-ietf-opsawg-pcapng): Debian's scapy (2.5) writes a single
unnamed interface, and python-pcapng is not packaged for Debian (see docs/DESIGN.md). Written
to FILE.tmp and renamed when complete.
"""
import os
import struct

from pktpath.errors import UserError

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101          # raw IPv4/IPv6 (version from the first nibble)

_BYTE_ORDER_MAGIC = 0x1A2B3C4D


def check_path(path):
    """Before a trace starts: UserError unless FILE can be written where it is asked."""
    if path is None:
        return
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise UserError("cannot write --pcap %s: %s" % (
            path, "is a directory" if os.path.isdir(path) else "no writable directory %s" % d))


def _pad4(b):
    return b + b"\0" * (-len(b) % 4)


def _opt(code, value):
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _options(opts):
    """Options (code, bytes) and the end-of-options marker; nothing when there are none."""
    opts = [(c, v) for c, v in opts if v is not None]
    if not opts:
        return b""
    return b"".join(_opt(c, v) for c, v in opts) + struct.pack("<HH", 0, 0)


def _block(btype, body):
    body = _pad4(body)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def section_header(comment=None, application="pktpath"):
    body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(0x0A0D0D0A, body + _options([
        (1, comment.encode() if comment else None),     # opt_comment
        (4, application.encode())]))                    # shb_userappl


def interface(linktype, name, snaplen, description=None):
    body = struct.pack("<HHI", linktype, 0, snaplen)
    return _block(1, body + _options([
        (2, name.encode()),                             # if_name
        (3, description.encode() if description else None),   # if_description
        (9, bytes([9]))]))                              # if_tsresol: nanoseconds


def packet(ifid, ts_ns, data, orig_len, comment=None):
    body = struct.pack("<IIIII", ifid, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF,
                       len(data), max(orig_len, len(data)))
    return _block(6, body + _pad4(data) + _options([
        (1, comment.encode() if comment else None)]))   # opt_comment


class Writer:
    """pcap-ng blocks to a file object: interfaces declared on first use."""

    def __init__(self, fh, snaplen, comment=None):
        self.fh, self.snaplen = fh, snaplen
        self.ifaces = {}
        self.packets = 0
        fh.write(section_header(comment))

    def iface(self, linktype, name, description=None):
        key = (linktype, name)
        if key not in self.ifaces:
            self.ifaces[key] = len(self.ifaces)
            self.fh.write(interface(linktype, name, self.snaplen, description))
        return self.ifaces[key]

    def packet(self, ifid, ts_ns, data, orig_len, comment=None):
        self.fh.write(packet(ifid, ts_ns, data, orig_len, comment))
        self.packets += 1


def _verdicts(packets):
    """{id: (verdict, {(hook, t_ns): netns} of its hops)} of the report's packets."""
    out = {}
    for p in packets:
        hops = {(h.get("hook"), h.get("t_ns")): h.get("netns") for h in p.get("path") or ()}
        out[p["id"]] = (p.get("verdict"), hops)
    return out


def _fallback_verdict(snaps):
    """A packet the report did not keep (delivered beyond --keep-delivered): its last snap."""
    kinds = [s.kind_name for s in snaps]
    return {"drop": "dropped", "deliver": "delivered", "consume": "consumed"}.get(
        kinds[-1] if kinds else "", "unknown")


def build(fh, store, packets, hook_names, netns_names=None, wall_offset_ns=0,
          deliver_hooks=()):
    """Write the file of SnapStore `store` for the finished `packets` (report records). A snap
    is written when it is one of its packet's hops (id, hook, time stamp); a packet the report
    did not keep gets all its snaps. A hop at one of `deliver_hooks` without a snap gets the
    packet's header as at its hop before (see the module's docstring). Returns {"packets":
    blocks written, "interfaces", "unmatched": snaps of report packets that are none of their
    hops, "borrowed": delivery hops written with the header of the hop before, "missing": hops
    of kept packets without a snap (and no borrowed one), "left_out_packets",
    "left_out_snaps"}."""
    from pktpath.process.snaps import SNAP_LEN
    names = netns_names or {}
    verdicts = _verdicts(packets)
    comment = ("pktpath --pcap: headers of the traced packets at each hop, up to %d bytes; "
               "snaps of the first %d packets kept" % (SNAP_LEN, store.max_packets))
    if store.left_out_packets or store.left_out_snaps:
        comment += "; left out: %d packets (%d snaps)" % (store.left_out_packets,
                                                         store.left_out_snaps)
    w = Writer(fh, SNAP_LEN, comment)
    unmatched = 0
    blocks = []
    for pid, snaps in store.by_id.items():
        verdict, hops = verdicts.get(pid, (None, None))
        if verdict is None:
            verdict = _fallback_verdict(snaps)
        for s in snaps:
            hook = hook_names[s.hook] if s.hook < len(hook_names) else str(s.hook)
            if hops is not None and (hook, s.ts) not in hops:
                unmatched += 1
                continue
            blocks.append((s.ts, hook, pid, verdict, s, None))
    # hops of the packets whose snaps were kept that have none: a delivery after its reader
    # took the datagram borrows the header of the hop before; others are missing (the snaps
    # ring was full)
    matched = {(b[2], b[1], b[0]) for b in blocks}
    own = {}
    for b in blocks:
        own.setdefault(b[2], []).append(b)
    missing = borrowed = 0
    for pid, (verdict, hops) in verdicts.items():
        if not hops or pid not in store.by_id:
            continue
        for (hook, t), netns in hops.items():
            if (pid, hook, t) in matched:
                continue
            before = [b for b in own.get(pid, ()) if b[0] <= t]
            if hook in deliver_hooks and before:
                prev = max(before, key=lambda b: b[0])
                blocks.append((t, hook, pid, verdict, prev[4], (prev[1], netns)))
                borrowed += 1
            else:
                missing += 1
    blocks.sort(key=lambda b: b[0])
    for ts, hook, pid, verdict, s, borrow in blocks:
        header_of, netns, ifindex = None, s.netns, s.ifindex
        dev = s.dev or ("sock" if s.kind_name == "deliver" else "?")
        if borrow:
            header_of, dev, ifindex = borrow[0], "sock", 0
            netns = borrow[1] if borrow[1] is not None else s.netns
        ns = names.get(str(netns)) or str(netns)
        ifid = w.iface(LINKTYPE_ETHERNET if s.l2 else LINKTYPE_RAW, "%s@%s" % (dev, ns),
                       "%s (ifindex %d) in netns %s (inode %d), from the %s header"
                       % (dev, ifindex, ns, netns, "Ethernet" if s.l2 else "IP"))
        w.packet(ifid, ts + wall_offset_ns, s.data, s.len,
                 "hook=%s id=%d verdict=%s" % (hook, pid, verdict) +
                 (" header_of=%s" % header_of if header_of else ""))
    return {"packets": w.packets, "interfaces": len(w.ifaces), "unmatched": unmatched,
            "missing": missing, "borrowed": borrowed,
            "left_out_packets": store.left_out_packets, "left_out_snaps": store.left_out_snaps}


def write(path, store, packets, hook_names, netns_names=None, wall_offset_ns=0,
          deliver_hooks=()):
    """The file at `path`, written as PATH.tmp and renamed (UserError if it cannot be)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            stats = build(fh, store, packets, hook_names, netns_names, wall_offset_ns,
                          deliver_hooks)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError("cannot write --pcap %s: %s" % (path, e.strerror)) from None
    return stats
