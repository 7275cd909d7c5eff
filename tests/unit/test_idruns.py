"""IdRuns: the duplicate-ID count of packets counted, not held (pipeline.count_duplicates),
exact, in memory that stays bounded for senders counting up (runs of consecutive IDs)."""
import random

from pktpath.process import idruns
from pktpath.process.idruns import IdRuns


def naive(ids):
    return len(ids) - len(set(ids))


def fill(ids, every=1000):
    r = IdRuns()
    for i, pid in enumerate(ids):
        r.append(pid)
        if i % every == every - 1:
            r.compact()             # as the stream's flushes do, at arbitrary points
    r.compact()
    return r


def test_counts_equal_the_naive_count_on_random_mixes():
    rng = random.Random(7)
    for _ in range(200):
        ids = []
        for _ in range(rng.randint(0, 6)):
            start = rng.randint(0, 300)
            ids += range(start, start + rng.randint(1, 200))         # a sender counting up
        ids += [rng.randint(0, 600) for _ in range(rng.randint(0, 100))]   # repeats, strays
        rng.shuffle(ids)
        r = fill(ids, every=rng.randint(1, 300))
        assert (r.dups, len(r)) == (naive(ids), len(ids))
        present = set(ids)
        assert all((pid in r) == (pid in present) for pid in range(700))


def test_two_senders_of_the_same_ids_keep_one_run():
    """200,000 IDs from two senders starting at 1: one run, 100,000 duplicates."""
    r = IdRuns()
    for pid in range(1, 100_001):
        r.append(pid)
        r.append(pid)
        if r.due():
            r.compact()
    r.compact()
    assert r.dups == 100_000 and len(r.starts) == 1 and not r.capped


def test_union_counts_across_sets():
    a, b = fill(list(range(0, 50)) + [7]), fill(list(range(40, 60)))
    both = IdRuns.union(a, b, [59, 100])
    ids = list(range(0, 50)) + [7] + list(range(40, 60)) + [59, 100]
    assert both.dups == naive(ids) and len(both) == len(ids)


def test_sparse_ids_go_to_a_set_and_past_its_bound_the_count_is_a_lower_bound(monkeypatch):
    """IDs that do not run (header keys) go to a set once runs do not pay; exact until it is
    full, a lower bound after (capped, which the report says)."""
    monkeypatch.setattr(idruns, "SPARSE_RUNS", 10)
    rng = random.Random(3)
    ids = [rng.randint(0, 10 ** 9) * 2 for _ in range(500)] + list(range(1, 8))
    ids += ids[:40]                                # repeats
    r = fill(ids, every=50)
    assert r.seen is not None and not r.capped
    assert (r.dups, len(r)) == (naive(ids), len(ids))
    assert all(pid in r for pid in ids) and 3 not in fill([5, 7])
    both = IdRuns.union(fill(ids[:300], every=50), fill(ids[300:], every=50))
    assert both.dups == naive(ids)
    monkeypatch.setattr(idruns, "MAX_SEEN", 100)
    r = fill(ids, every=50)
    assert r.capped and 0 < r.dups <= naive(ids)


def test_the_report_says_at_least_when_capped():
    from pktpath.output import report
    from pktpath.process import pipeline
    r = IdRuns()
    r.capped = True
    end = {}
    list(pipeline.count_duplicates([{"id": 1}, {"id": 1}], end, r))
    assert end["duplicate_ids"] == 1 and end["duplicate_ids_at_least"]
    assert "packet IDs are not unique: at least 1 packet had" in report.render_report(
        [], {}, dict(end, events=0))


def test_unions_of_runs_and_sets_equal_the_naive_count(monkeypatch):
    monkeypatch.setattr(idruns, "SPARSE_RUNS", 8)
    rng = random.Random(11)
    for _ in range(150):
        parts = []
        for _ in range(rng.randint(1, 3)):
            ids = []
            for _ in range(rng.randint(0, 3)):
                start = rng.randint(0, 400)
                ids += range(start, start + rng.randint(1, 60))
            ids += [rng.randint(0, 500) for _ in range(rng.randint(0, 80))]
            rng.shuffle(ids)
            parts.append(ids)
        sets = [fill(ids, every=rng.randint(1, 40)) if rng.random() < 0.8 else ids
                for ids in parts]
        flat = [pid for ids in parts for pid in ids]
        both = IdRuns.union(*sets)
        assert both.dups == naive(flat) and len(both) == len(flat)
        present = set(flat)
        assert all((pid in both) == (pid in present) for pid in range(600))
