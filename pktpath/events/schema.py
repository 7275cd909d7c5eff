"""The packet record's JSON schema, declared once: what `--json` (live and `report`) writes.

One JSON object per packet, one per line, keys in this order. The record is built by
process/reconstruct.py (`_packet`, `_lost_record`, `mark_incomplete_sorted`) and written by
`packet_line`; events/records.DeliveredJSON writes the same text for a plain delivery straight
from its kernel record. tests/unit/test_schema.py checks all of them against these tuples.
"""
import json

# always present, in this order
PACKET_FIELDS = ("id", "verdict", "events", "first_ns", "last_ns", "last", "drop", "delivered",
                 "path")
# present only when they apply, after the others, in this order
PACKET_OPTIONAL = ("key", "proto", "src", "dst", "nat", "freed_after_delivery", "clone_drops",
                   "inferred", "retransmission_of", "incomplete")
# inferred: how pktpath concluded a TCP verdict it did not see happen (a text): a segment last
# seen at tcp_probe (coalesced data: delivered; an ACK: consumed), or a socket state change
# linked to the segment by the CPU that saw it moments before (consumed)
# retransmission_of: {"first_ns": t} on a TCP segment keyed by headers whose key and flow a
# packet first seen at t had already: a retransmission of it (reconstruct.retransmissions)
RETRANSMISSION_FIELDS = ("first_ns",)
# key, proto, src, dst: how the packet was keyed ("payload": the ID in its payload; "headers": a
# hash of its header fields, config packet_id.from), its transport protocol ("udp", "tcp") and
# its (inner) flow, "addr:port" each (with proto: the 5-tuple). Present in traces and
# recordings made since keys could come from headers; absent in older recordings.
# "nat": one entry per rewrite of the packet's addresses or ports (DNAT/REDIRECT, SNAT,
# masquerade): the index in "path" of the hop where it was first seen, the flow before and after
# ("ip:port > ip:port")
NAT_FIELDS = ("hop", "from", "to")
LAST_FIELDS = ("hook", "dev", "ifindex", "netns", "netns_name")
DROP_FIELDS = ("reason", "reason_code", "location", "dev", "netns", "netns_name")
DROP_OPTIONAL = ("stack",)
DELIVERED_FIELDS = ("netns", "netns_name", "port")
HOP_FIELDS = ("t_ns", "hook", "dev", "netns", "netns_name", "cpu", "encap", "tunnel", "vni",
              "src", "dst", "outer_src", "outer_dst")
HOP_OPTIONAL = ("host",)   # merged recordings of several hosts

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def packet_line(p):
    """The JSON line (with its newline) of one packet record."""
    return _dumps(p) + "\n"


def write_packets(packets, fh):
    """Write `packets` (any iterable, consumed as written) as JSON Lines to `fh`."""
    write = fh.write
    for p in packets:
        write(_dumps(p) + "\n")


def check(p):
    """The schema violations of packet record `p` (an empty list when it follows the schema)."""
    problems = []

    def keys(obj, fields, optional, where):
        got = list(obj)
        want = list(fields) + [k for k in optional if k in obj]
        if got != want:
            problems.append("%s: keys %s, schema %s" % (where, got, want))

    keys(p, PACKET_FIELDS, PACKET_OPTIONAL, "packet")
    if isinstance(p.get("last"), dict):
        keys(p["last"], LAST_FIELDS, (), "last")
    for name, fields, opt in (("drop", DROP_FIELDS, DROP_OPTIONAL),
                              ("delivered", DELIVERED_FIELDS, ())):
        if p.get(name) is not None:
            keys(p[name], fields, opt, name)
    for i, d in enumerate(p.get("nat") or ()):
        keys(d, NAT_FIELDS, (), "nat[%d]" % i)
    if p.get("retransmission_of") is not None:
        keys(p["retransmission_of"], RETRANSMISSION_FIELDS, (), "retransmission_of")
    for i, d in enumerate(p.get("clone_drops") or ()):
        keys(d, DROP_FIELDS, DROP_OPTIONAL, "clone_drops[%d]" % i)
    for i, h in enumerate(p.get("path") or ()):
        keys(h, HOP_FIELDS, HOP_OPTIONAL, "path[%d]" % i)
    return problems
