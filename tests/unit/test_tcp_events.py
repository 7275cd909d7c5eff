"""#18: TCP verdicts from recorded events (the shapes measured on the lab, 6.18): delivered
(queued: sk_data_ready), consumed (consume_skb of a SYN; a socket state change linked to the
handshake's last ACK or the closing ACK), processed at tcp_probe and freed unseen (coalesced
data: delivered; a pure ACK: consumed; both inferred), dropped with TCP's reason."""
from pktpath.collect import hooks as hooksmod
from pktpath.collect import program
from pktpath.events import schema
from pktpath.output import report
from pktpath.process.reconstruct import build_packets, summarize

SRV, CLI = 20, 10   # netns inodes: the server's, the client's
NAMES = {SRV: "pp-ctrB", CLI: "pp-ctrA"}


def ev(pid, t, hook, kind="pass", netns=SRV, skb=1, **kw):
    return dict({"t_ns": t, "hook": hook, "kind": kind, "id": pid, "skb": skb, "netns": netns,
                 "dev": "eth0", "path": pid * 1000, "key": "headers", "proto": "tcp",
                 "src": "198.51.100.1:40000", "dst": "198.51.100.2:5007"}, **kw)


def wire(pid):
    """A segment's sightings from the client's device to the server's."""
    return [ev(pid, 0, "net_dev_queue", netns=CLI), ev(pid, 10, "netif_receive_skb")]


def one(evs):
    pkts = build_packets(evs, NAMES)
    assert len(pkts) == 1
    assert schema.check(pkts[0]) == []
    return pkts[0]


def test_data_segment_queued_is_delivered():
    p = one(wire(1) + [ev(1, 20, "tcp_probe", netns=0, tcp_data=True),
                       ev(1, 30, "sk_data_ready", "deliver", port=5007)])
    assert p["verdict"] == "delivered" and "inferred" not in p
    assert p["delivered"] == {"netns": SRV, "netns_name": "pp-ctrB", "port": 5007}


def test_coalesced_data_segment_is_delivered_inferred():
    """tcp_try_coalesce merged its data into the queue's tail and freed its skb: no event after
    tcp_probe. Not lost: delivered, in the netns it was last seen in, on its port."""
    p = one(wire(2) + [ev(2, 20, "tcp_probe", netns=0, tcp_data=True)])
    assert p["verdict"] == "delivered"
    assert p["delivered"] == {"netns": SRV, "netns_name": "pp-ctrB", "port": 5007}
    assert "coalesced" in p["inferred"]


def test_pure_ack_at_tcp_probe_is_consumed_inferred():
    p = one(wire(3) + [ev(3, 20, "tcp_probe", netns=0)])
    assert p["verdict"] == "consumed" and "__kfree_skb" in p["inferred"]
    assert p["delivered"] is None and p["drop"] is None


def test_syn_taken_by_listener_is_consumed():
    p = one(wire(4) + [ev(4, 20, "tcp_consume", "consume", netns=0)])
    assert p["verdict"] == "consumed" and "inferred" not in p


def test_handshake_ack_state_change_is_consumed_and_says_inferred():
    p = one(wire(5) + [ev(5, 20, "tcp_state", "consume")])
    assert p["verdict"] == "consumed" and "inet_sock_set_state" in p["inferred"]


def test_tcp_drop_reasons_stay_drops():
    p = one(wire(6) + [ev(6, 20, "tcp_probe", netns=0, tcp_data=True),
                       ev(6, 30, "kfree_skb", "drop", reason="TCP_OLD_DATA",
                          location="tcp_rcv_established+0x2fe")])
    assert p["verdict"] == "dropped" and p["drop"]["reason"] == "TCP_OLD_DATA"
    p = one(wire(7) + [ev(7, 20, "kfree_skb", "drop", reason="NO_SOCKET")])
    assert p["verdict"] == "dropped" and p["drop"]["reason"] == "NO_SOCKET"


def test_segment_never_reaching_its_socket_is_still_lost():
    assert one(wire(8))["verdict"] == "lost"


def test_summary_counts_consumed():
    pkts = build_packets(wire(1) + [ev(1, 20, "tcp_consume", "consume", netns=0)] +
                         wire(2) + [ev(2, 20, "sk_data_ready", "deliver", port=5007)], NAMES)
    s = summarize(pkts)
    assert s["verdicts"]["consumed"] == 1 and s["verdicts"]["delivered"] == 1
    assert "2 packets: 1 delivered, 0 dropped, 0 lost, 1 consumed" in report.render_summary(pkts)


def test_tcp_hooks_only_when_tcp_is_traced():
    catalog = hooksmod.load_catalog()
    tcp = {"tcp_consume", "tcp_probe", "tcp_state"}
    for proto, want in (("udp", set()), ("tcp", tcp), ("any", tcp)):
        for s in ("default", "light"):
            names = {e["name"] for e in hooksmod.select([s], catalog, proto)}
            assert names & tcp == want, (proto, s)


def test_tcp_hook_entry_points():
    def hook(kind, args):
        return hooksmod.Hook(name="x", target="a:b", kind=kind, requested="raw_tracepoint",
                             method="raw_tracepoint", args=args)
    assert "pp_consume(ctx, ctx->args[0], 3, 0)" in program.entry_point(3, hook("consume", (0,)))
    assert "pp_segment(ctx, ctx->args[1], 4, 0)" in program.entry_point(4, hook("segment", (1,)))
    assert "pp_state(ctx, ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], 5, 0)" in \
        program.entry_point(5, hook("state", (0, 1, 2)))
    # planned from the tracepoints' BTF prototypes
    types = {"tcp_probe": ["struct sock *", "struct sk_buff *"],
             "inet_sock_set_state": ["const struct sock *", "const int", "const int"],
             "consume_skb": ["struct sk_buff *", "void *"]}
    caps = hooksmod.Capabilities(tracepoint_args=types.get)
    plan = {h.name: h for h in hooksmod.plan(["tcp_consume", "tcp_probe", "tcp_state"], caps)}
    assert [plan[n].args for n in ("tcp_consume", "tcp_probe", "tcp_state")] == \
        [(0,), (1,), (0, 1, 2)]


def _retransmitted(path2=None, key="headers", proto="tcp", src=None):
    """A data segment (key 7) dropped by netfilter in the server's netns, then its
    retransmission 200 ms later (same key and flow: its bytes of the stream) delivered.
    `path2`: the second copy's kernel path (summary mode), None: events mode (no paths)."""
    t = 200_000_000
    first = [dict(e, key=key, proto=proto) for e in wire(7)] + [
        ev(7, 20, "kfree_skb", "drop", key=key, proto=proto, reason="NETFILTER_DROP",
           location="nf_hook_slow+0x91")]
    second = [ev(7, t, "net_dev_queue", netns=CLI, skb=2, key=key, proto=proto),
              ev(7, t + 10, "netif_receive_skb", skb=2, key=key, proto=proto),
              ev(7, t + 20, "tcp_probe", netns=0, skb=2, key=key, proto=proto, tcp_data=True),
              ev(7, t + 30, "sk_data_ready", "deliver", skb=2, key=key, proto=proto, port=5007)]
    for e in first:
        e["path"] = 7000 if path2 is not None else None
    for e in second:
        e["path"] = path2
        if src:
            e["src"] = src
    return first + second


def test_tcp_retransmission_is_a_packet_of_its_own_marked():
    """Same header key, later: two packets, never merged, the second marked as a retransmission
    of the first (events mode: by the split rules; summary mode: two kernel paths)."""
    for path2 in (None, 9000):
        evs = _retransmitted(path2)
        pkts = build_packets(evs, NAMES)
        assert [(p["verdict"], p["events"]) for p in pkts] == [("dropped", 3), ("delivered", 4)]
        assert all(schema.check(p) == [] for p in pkts)
        assert "retransmission_of" not in pkts[0]
        assert pkts[1]["retransmission_of"] == {"first_ns": 0}
        verdicts = report.render_verdicts(pkts)
        assert "retransmission (first copy 200.0 ms before)" in verdicts
        timeline = report.render_timeline(pkts)
        assert timeline.count("[RETRANSMISSION]") == 1
        # a recording read back (EventStore) gives the same records
        from pktpath.process.reconstruct import EventStore
        store = EventStore()
        for e in evs:
            store.add(e)
        assert list(store.packets(NAMES)) == pkts


def test_no_retransmission_without_tcp_header_keys():
    """Payload IDs (the same bytes at the ID offset are not the same segment), UDP, or another
    flow (a 32-bit key collision): separate packets, not marked."""
    for kw in ({"key": "payload"}, {"proto": "udp"}, {"src": "198.51.100.3:40000"}):
        pkts = build_packets(_retransmitted(**kw), NAMES)
        assert len(pkts) == 2 and not any("retransmission_of" in p for p in pkts), kw


def test_events_mode_consume_begins_no_packet():
    """Events mode (no kernel paths): a consume that continues no packet (the sender's copy of
    a segment, freed when acknowledged: seen on the lab as lone tcp_consume packets) is not a
    packet, as in summary mode; a state change after the segment's last sighting ends it."""
    lone = [ev(9, 5, "tcp_consume", "consume", netns=0, skb=3, path=None)]
    assert build_packets(lone, NAMES) == []
    evs = [dict(e, path=None) for e in wire(10)] + [
        ev(10, 20, "tcp_state", "consume", skb=0, path=None)]
    p = one(evs)
    assert p["verdict"] == "consumed" and "inet_sock_set_state" in p["inferred"]


def test_a_consumed_segment_is_done_in_events_mode():
    """Events mode, captured on the lab under load (#18, test_tcp_small_writes[events] ~1 run
    in 8): the handshake's last ACK is consumed (tcp_state, no skb); 4 ms later the server's
    next segment, on the ACK's recycled skb, is known by the skb map only (its flow is the
    filter's reversed: `rewritten`). It continued the consumed ACK's packet (16 hops, ending at
    the client's tcp_probe) as summary mode never did (its kernel path ends at the consume).
    Now the consume ends the packet, and the map-only sightings begin none."""
    ack = wire(7) + [ev(7, 20, "tcp_state", "consume", skb=0)]    # (as the kernel emits it)
    later = [ev(7, 4_000_000 + i * 10, h, netns=n, skb=1, rewritten=True,
                src="198.51.100.2:5007", dst="198.51.100.1:40000")
             for i, (h, n) in enumerate([("net_dev_queue", SRV), ("netif_receive_skb", CLI),
                                         ("tcp_probe", 0)])]
    for e in ack + later:
        del e["path"]                               # events mode: no kernel-built path
    pkts = build_packets(ack + later, NAMES)
    assert [(p["verdict"], p["events"]) for p in pkts] == [("consumed", 3)]
    assert pkts[0]["path"][-1]["hook"] == "tcp_state"
