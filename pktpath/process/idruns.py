"""The IDs of the packets a live trace counted without holding them, for the count of packets
whose ID another packet had (pipeline.count_duplicates), in memory that does not grow with the
trace's length for the IDs senders use: runs of consecutive IDs.

Appends go to a buffer (an array: `buf.append` is as cheap as before); `compact()` (called by the
stream between flushes, and before any question) sorts the buffer and folds it into sorted,
disjoint runs [start, end], counting each ID already there (the buffer's own repeats included)
as a duplicate. A sender counting up makes one run whatever it sends; two senders of the same
IDs, one run and every second packet a duplicate (measured: ~85 ns per ID, spread over the
flushes, where the stop used to sort every ID: ~100 ns per ID at the stop, 8 bytes per packet
kept). IDs with no order (header keys: a hash) make a run each: past SPARSE_RUNS runs that
average under 4 IDs the rest go to a set instead (linear, not a merge per flush), and past
MAX_SEEN IDs there new IDs are no longer kept (`capped`): the duplicate count is then a lower
bound, which the report says.
"""
from array import array
from bisect import bisect_right

CHUNK = 1 << 16         # IDs buffered before the stream folds them (due())
SPARSE_RUNS = 1 << 16   # runs before IDs that do not run are kept in a set instead
MAX_SEEN = 1 << 21      # IDs kept in that set (~150 MB at most); then new ones only counted


class IdRuns:
    __slots__ = ("buf", "starts", "ends", "seen", "dups", "count", "capped")

    def __init__(self, ids=()):
        self.buf = array("Q", ids)      # IDs appended since the last compact()
        self.starts, self.ends = array("Q"), array("Q")
        self.seen = None                # set of IDs, once runs do not pay (sparse IDs)
        self.dups = 0                   # IDs folded in that were there already
        self.count = 0                  # IDs folded in (kept or not)
        self.capped = False             # some IDs were not kept: dups is a lower bound

    def append(self, pid):
        self.buf.append(pid)

    def frombytes(self, data):
        self.buf.frombytes(data)

    def __len__(self):
        return self.count + len(self.buf)

    def due(self):
        """True when the buffer should be folded (a flush's idle work)."""
        return len(self.buf) >= CHUNK

    def compact(self):
        """Fold the buffer into the runs (or the set)."""
        if not self.buf:
            return
        if self.seen is not None:
            new = self.buf.tolist()
            del self.buf[:]             # (the same array: a bound `buf.append` stays valid)
            self.count += len(new)
            self._add_sparse(new)
            return
        new = sorted(self.buf)
        del self.buf[:]
        self.count += len(new)
        ns, ne, dups, prev = array("Q"), array("Q"), 0, None
        for x in new:
            if x == prev:
                dups += 1
            elif ne and x == ne[-1] + 1:
                ne[-1] = x
            else:
                ns.append(x)
                ne.append(x)
            prev = x
        self.dups += dups
        self._merge(ns, ne)
        if len(self.starts) > SPARSE_RUNS and len(self.starts) * 4 > self.count:
            seen = self.seen = set()    # (the runs then hold < 4 IDs each: few to move)
            for a, b in zip(self.starts, self.ends):
                seen.update(range(a, b + 1))
            self.starts, self.ends = array("Q"), array("Q")

    def _add_sparse(self, ids):
        seen, runs, dups = self.seen, len(self.starts), 0
        if not runs and len(seen) + len(ids) <= MAX_SEEN:
            before = len(seen)
            seen.update(ids)            # (in C: the common case)
            self.dups += len(ids) - (len(seen) - before)
            return
        for x in ids:
            if x in seen or (runs and self._in_runs(x)):
                dups += 1
            elif len(seen) < MAX_SEEN:
                seen.add(x)
            else:
                self.capped = True
        self.dups += dups

    def _merge(self, ns, ne):
        """Union of the runs with new ones (sorted, disjoint, not adjacent), counting the IDs
        both have: a run overlapping the union so far overlaps the other side's runs (its own
        side's end before it starts)."""
        os_, oe = self.starts, self.ends
        out_s, out_e = array("Q"), array("Q")
        i = j = dups = 0
        while i < len(os_) or j < len(ns):
            if j == len(ns) or (i < len(os_) and os_[i] <= ns[j]):
                s, e = os_[i], oe[i]
                i += 1
            else:
                s, e = ns[j], ne[j]
                j += 1
            if out_e and s <= out_e[-1] + 1:
                if s <= out_e[-1]:
                    dups += min(e, out_e[-1]) - s + 1
                if e > out_e[-1]:
                    out_e[-1] = e
            else:
                out_s.append(s)
                out_e.append(e)
        self.dups += dups
        self.starts, self.ends = out_s, out_e

    def _in_runs(self, pid):
        i = bisect_right(self.starts, pid) - 1
        return i >= 0 and pid <= self.ends[i]

    def __contains__(self, pid):
        self.compact()
        return (self.seen is not None and pid in self.seen) or self._in_runs(pid)

    def absorb(self, other):
        """Add the IDs of `other` (an IdRuns), duplicates across both counted."""
        other.compact()
        self.compact()
        self.dups += other.dups
        self.count += other.count
        self.capped = self.capped or other.capped
        if self.seen:           # our set against their runs (before the runs are merged)
            seen = self.seen
            ranges = list(zip(other.starts, other.ends))
            if sum(b - a + 1 for a, b in ranges) <= len(seen):
                self.dups += sum(1 for a, b in ranges for x in range(a, b + 1) if x in seen)
            else:
                self.dups += sum(1 for x in seen if other._in_runs(x))
        self._merge(other.starts, other.ends)
        if other.seen:
            if self.seen is None:
                self.seen = set()
            self._add_sparse(sorted(other.seen))

    @classmethod
    def union(cls, *sets):
        """One IdRuns of the IDs of several (IdRuns, or iterables of IDs). The biggest IdRuns
        given becomes it (the others are absorbed into it: not copied, at the stop)."""
        runs = [s for s in sets if isinstance(s, IdRuns)]
        out = max(runs, key=len) if runs else cls()
        for s in sets:
            if s is out:
                continue
            if isinstance(s, IdRuns):
                out.absorb(s)
            else:
                out.buf.extend(s)
        out.compact()
        return out
