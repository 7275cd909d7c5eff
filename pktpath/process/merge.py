"""Merging recordings of several hosts into one timeline (pure functions).

Each recording's meta has `host` and `clock` ({mono_ns, wall_ns} taken together): its events'
kernel times (CLOCK_MONOTONIC) are placed on that host's wall clock. Host clocks disagree, so
causality decides the rest: a packet transmitted encapsulated on the underlay by one host is
received by the other afterwards. When a host's receive times come before the sender's
transmit, that host's events are shifted just enough, and the measured offset is reported.
"""
from collections import defaultdict

EPSILON_NS = 1000  # a received packet is placed at least 1 us after its transmit


def to_wall(meta, events):
    """Shift `events` (in place) from kernel time to the host's wall clock, label their host."""
    clock = meta.get("clock") or {}
    shift = clock["wall_ns"] - clock["mono_ns"] if "wall_ns" in clock and "mono_ns" in clock \
        else 0
    host = meta.get("host")
    for ev in events:
        ev["t_ns"] += shift
        if host:
            ev["host"] = host
    return events


def _is_underlay_tx(ev):
    return ev.get("encap") and ev.get("kind") == "pass" and str(ev.get("hook")).startswith(
        ("net_dev_queue", "net_dev_start_xmit", "qdisc"))


def causal_offsets(events):
    """{(tx_host, rx_host): smallest (first encapsulated sighting on rx_host) - (last underlay
    transmit on tx_host)} over packets seen on both: negative means rx_host's clock is behind."""
    by_id = defaultdict(list)
    for ev in events:
        by_id[ev["id"]].append(ev)
    best = {}
    for evs in by_id.values():
        tx, rx = {}, {}
        for ev in evs:
            h = ev.get("host")
            if _is_underlay_tx(ev):
                tx[h] = max(tx.get(h, ev["t_ns"]), ev["t_ns"])
            elif ev.get("encap"):
                rx[h] = min(rx.get(h, ev["t_ns"]), ev["t_ns"])
        for th, tt in tx.items():
            for rh, rt in rx.items():
                if th != rh:
                    d = rt - tt
                    best[(th, rh)] = min(best.get((th, rh), d), d)
    return best


def correct_clocks(events):
    """Shift each receiving host whose clock is behind (in place). Returns report notes."""
    notes, shifted = [], {}
    for (th, rh), d in sorted(causal_offsets(events).items(), key=lambda kv: kv[1]):
        if rh in shifted:
            continue
        if d < 0:
            shifted[rh] = EPSILON_NS - d
            notes.append("clock offset %s vs %s: %.3f ms (corrected: %s shifted by %+.3f ms)"
                         % (rh, th, d / 1e6, rh, shifted[rh] / 1e6))
        else:
            notes.append("clock offset %s vs %s: within %.3f ms (transmit to receive, "
                         "not corrected)" % (rh, th, d / 1e6))
    for ev in events:
        if ev.get("host") in shifted:
            ev["t_ns"] += shifted[ev["host"]]
    return notes
