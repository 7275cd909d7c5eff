"""Reading the kernel side's maps: counters, open paths (summary mode), drop stacks, drop
counts (--drops all), and the IDs of packets that lost events. One reader over the program's
maps ({name: bpfsys.Map}); a map the program does not have reads as empty."""
import struct
import time

from pktpath.events import records

# the counters map's slots (enum pp_counter in bpf/pktpath.h), in order; None: a slot only the
# kernel side uses
COUNTERS = tuple(None if n in records.INTERNAL_COUNTERS else n for n in records.COUNTERS)


class MapReader:
    """`maps`: the loaded program's maps by name ({} before start and after close). The options
    say which maps the program fills: `summary` the open paths, `stacks` the drop stacks,
    `drops_all` the drop counts."""

    def __init__(self, maps=None, summary=True, stacks=False, drops_all=False):
        self.maps = maps or {}
        self.summary, self.stacks, self.drops_all = summary, stacks, drops_all

    def counters(self):
        """{"lost": n, "unreachable": n, "from_map": n, "lost_paths_full": n} summed over
        CPUs ("lost" includes "lost_paths_full")."""
        table = self.maps.get("counters")
        if table is None:
            return {n: 0 for n in COUNTERS if n}
        out = {}
        for i, n in enumerate(COUNTERS):
            if n:
                v = table.lookup(struct.pack("<I", i))
                out[n] = sum(struct.unpack("<Q", c)[0] for c in table.per_cpu(v)) if v else 0
        return out

    def sweep(self, older_than_ns=None):
        """Summary mode: remove and return (as pp_path bytes) the open paths whose last sighting
        is older than `older_than_ns` ago (all of them when None): packets that went quiet."""
        table = self.maps.get("paths")
        if table is None or not self.summary:
            return []
        limit = None if older_than_ns is None else time.monotonic_ns() - older_than_ns
        out, seen = [], set()
        for k, v in table.items():
            # a key listing taken while the kernel adds and removes paths restarts from the
            # first key (keys seen twice); and the kernel may finish a path (delivered, dropped:
            # its record is on the ring) between the listing and the delete: only a path this
            # delete removed went quiet
            if k in seen:
                continue
            seen.add(k)
            if (limit is None or records.path_last_ts(v) < limit) and table.delete(k):
                out.append(v[:records.path_used_bytes(v)])
        return out

    def stack(self, stack_id):
        """Kernel addresses of a stack recorded at a drop (innermost first)."""
        table = self.maps.get("stacks")
        if table is None or not self.stacks or stack_id < 0:
            return []
        v = table.lookup(struct.pack("<I", stack_id))
        if v is None:
            return []
        ips = struct.unpack("<%dQ" % (len(v) // 8), v)
        return list(ips[:ips.index(0)] if 0 in ips else ips)

    def drop_counts(self):
        """[(location, reason, netns, count)] of every drop counted in --drops all mode."""
        table = self.maps.get("dropcounts")
        if table is None or not self.drops_all:
            return []
        key = records.DROPKEY
        return [tuple(key.unpack(k)[f] for f in ("location", "reason", "netns")) +
                struct.unpack("<Q", v) for k, v in table.items()]

    def drop_flows(self):
        """[(pp_dropflow key bytes, count)] of the `drops` command's per-flow counts."""
        table = self.maps.get("dropflows")
        if table is None or not self.drops_all:
            return []
        return [(k, struct.unpack("<Q", v)[0]) for k, v in table.items()]

    def lost_ids(self):
        """{packet ID: events lost} for packets that lost events to a full ring buffer."""
        table = self.maps.get("lostids")
        if table is None:
            return {}
        # (the kernel side keys it by 32 bits today, docs/DESIGN.md "Header keys"; 64 read too)
        return {int.from_bytes(k, "little"): struct.unpack("<Q", v)[0] for k, v in table.items()}
