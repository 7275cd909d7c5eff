"""--pcap: the header copies (struct pp_snap, bpf/pktpath.h) of the traced packets' hops, kept
until the trace ends and joined to the packets' hops (by packet id, hook and time stamp: the
hop's t_ns is the snap's ts in both modes; the skb of a summary hop is its path's first skb, so
it is not part of the key).

Memory is bounded: the snaps of the first `max_packets` packet IDs are kept (at most
`per_packet` each); the others are counted, never stored.
"""
import struct

from pktpath.events import records

SNAP = records.LAYOUTS["pp_snap"]
SNAP_LEN = records.DEFINES["PP_SNAP_LEN"]
SNAP_L2 = records.DEFINES["PP_SNAP_L2"]
_S = {n: i for i, n in enumerate(SNAP.names)}
_FIELDS = [_S[n] for n in ("ts", "skb", "id", "netns", "ifindex", "len", "caplen", "hook",
                           "kind", "flags", "port", "dev", "data")]


class Snap:
    __slots__ = ("ts", "skb", "id", "netns", "ifindex", "len", "caplen", "hook", "kind",
                 "flags", "port", "dev", "data")

    def __init__(self, ts, skb, id, netns, ifindex, len, caplen, hook, kind, flags, port, dev,
                 data):
        self.ts, self.skb, self.id, self.netns, self.ifindex = ts, skb, id, netns, ifindex
        self.len, self.caplen, self.hook, self.kind, self.flags = len, caplen, hook, kind, flags
        self.port = port
        self.dev = dev.split(b"\0", 1)[0].decode("ascii", "replace")
        self.data = bytes(data[:min(caplen, SNAP_LEN)])

    @property
    def l2(self):
        return bool(self.flags & SNAP_L2)

    @property
    def kind_name(self):
        return records.KINDS[self.kind] if self.kind < len(records.KINDS) else "pass"


def decode(data):
    """A Snap from a struct pp_snap record's bytes."""
    t = SNAP.fmt.unpack_from(data)
    return Snap(*[t[i] for i in _FIELDS])


def pack(**kw):
    """A struct pp_snap record's bytes (tests, recorded snaps)."""
    return SNAP.pack(**kw)


_ID = struct.Struct("<Q").unpack_from
_ID_OFF = SNAP.offset("id")
LEFT_IDS = 1_000_000    # packets left out are counted by ID up to this many (then: at least)


class SnapStore:
    """The snaps of a trace: `add(bytes)` is the tracer's handler of the `snaps` ring."""

    def __init__(self, max_packets=1000, per_packet=2 * records.MAX_HOPS):
        self.max_packets, self.per_packet = max_packets, per_packet
        self.by_id = {}             # id -> [Snap] in arrival order
        self.snaps = 0              # every snap read
        self.left_packets = set()   # IDs beyond max_packets (a set: bounded by the count below)
        self.left_out_packets = 0   # packets whose snaps were not kept
        self.left_out_snaps = 0     # snaps not kept (those packets', and past per_packet)

    def add(self, data):
        self.snaps += 1
        pid = _ID(data, _ID_OFF)[0]     # the key first: a snap left out is never decoded
        got = self.by_id.get(pid)
        if got is None:
            if len(self.by_id) >= self.max_packets:
                self.left_out_snaps += 1
                left = self.left_packets
                if pid not in left and len(left) < LEFT_IDS:
                    left.add(pid)
                    self.left_out_packets += 1
                return
            got = self.by_id[pid] = []
        if len(got) >= self.per_packet:
            self.left_out_snaps += 1
            return
        got.append(decode(data))
