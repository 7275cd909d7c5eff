"""Attach planning against simulated kernels (capability sets), and the generated C."""
import pytest

from pktpath.collect import program
from pktpath.collect import hooks
from pktpath.errors import UserError

TP = {"kfree_skb": ["struct sk_buff *", "void *", "enum skb_drop_reason", "struct sock *"],
      "net_dev_queue": ["struct sk_buff *"], "sk_data_ready": ["struct sock *"],
      "netif_receive_skb": ["struct sk_buff *"]}
CATALOG = {
    "net_dev_queue": {"target": "net:net_dev_queue", "method": "raw_tracepoint", "kind": "pass",
                      "default": True},
    "netif_rx": {"target": "net:netif_rx", "method": "raw_tracepoint", "kind": "pass",
                 "default": True},
    "kfree_skb": {"target": "skb:kfree_skb", "method": "raw_tracepoint", "kind": "drop",
                  "default": True},
    "sk_data_ready": {"target": "sock:sk_data_ready", "method": "raw_tracepoint",
                      "kind": "deliver", "default": True},
    "netif_receive_skb": {"target": "net:netif_receive_skb", "method": "raw_tracepoint",
                          "kind": "pass"},
    "ip_rcv": {"target": "ip_rcv", "method": "auto", "kind": "pass", "skb_arg": 0,
               "fallback": "netif_receive_skb"},
}


def caps(**kw):
    return hooks.Capabilities(tracepoint_args=TP.get, **kw)


def test_default_set_and_missing_tracepoint():
    plan = hooks.plan(None, caps(), CATALOG)
    by = {h.name: h for h in plan}
    assert set(by) == {"net_dev_queue", "netif_rx", "kfree_skb", "sk_data_ready"}
    assert not by["netif_rx"].attached and "does not exist" in by["netif_rx"].why
    assert by["kfree_skb"].args == (0, 1, 2)
    assert by["sk_data_ready"].args == (0,)


def test_function_hook_method_choice():
    assert hooks.plan(["ip_rcv"], caps(fentry=True, kprobes=True), CATALOG)[0].method == "fentry"
    assert hooks.plan(["ip_rcv"], caps(kprobes=True), CATALOG)[0].method == "kprobe"
    fb = hooks.plan(["ip_rcv"], caps(), CATALOG)[0]
    assert fb.name == "netif_receive_skb" and fb.method == "raw_tracepoint"
    assert "fallback for ip_rcv" in fb.why
    missing = hooks.plan(["ip_rcv"], caps(kprobes=True, symbols={"udp_rcv"}), CATALOG)
    assert missing[0].name == "netif_receive_skb"  # symbol missing -> fallback
    assert "not found in /proc/kallsyms" in missing[0].why


def test_unknown_hook_suggests():
    with pytest.raises(UserError, match="did you mean 'kfree_skb'"):
        hooks.plan(["kfree_skbb"], caps(), CATALOG)


def test_real_catalog_loads_and_defaults_cover_the_path():
    cat = hooks.load_catalog()
    kinds = {e["kind"] for e in cat.values() if e.get("default")}
    assert kinds == {"pass", "drop", "deliver", "reader"}


def test_entry_points():
    plan = hooks.plan(None, caps(), CATALOG)
    text = "\n".join(program.entry_point(i, h) for i, h in enumerate(plan) if h.attached)
    assert "pp_drop(ctx, ctx->args[0], 2, ctx->args[1], (u32)ctx->args[2], 0)" in text
    assert "pp_deliver(ctx, ctx->args[0], 3, 0)" in text
    assert "pp_h1" not in text  # netif_rx skipped: no entry point


def test_tp_btf_entry_points_when_the_kernel_has_them():
    """With tp_btf, skb hooks read skb fields directly (direct = 1); delivery stays a raw
    tracepoint (its skbs come from a socket queue, not from a BTF-typed argument)."""
    c = caps()
    c.tp_btf = True
    plan = hooks.plan(None, c, CATALOG)
    by_kind = {h.kind: h.method for h in plan if h.attached}
    assert by_kind == {"pass": "tp_btf", "drop": "tp_btf", "deliver": "raw_tracepoint"}
    text = "\n".join(program.entry_point(i, h) for i, h in enumerate(plan) if h.attached)
    assert "int pp_h0(u64 *ctx)" in text and "pp_pass(ctx, ctx[0], 0, 1)" in text
    assert "pp_drop(ctx, ctx[0], 2, ctx[1], (u32)ctx[2], 1)" in text
    assert "pp_deliver(ctx, ctx->args[0], 3, 0)" in text


def test_delivery_is_tp_btf_where_any_address_can_be_loaded():
    """With bpf_rdonly_cast (tp_btf_direct), the delivery hook is tp_btf too and walks the
    socket queues with plain loads (direct = 2)."""
    c = caps()
    c.tp_btf = c.tp_btf_direct = True
    plan = hooks.plan(None, c, CATALOG)
    assert {h.method for h in plan if h.attached} == {"tp_btf"}
    text = "\n".join(program.entry_point(i, h) for i, h in enumerate(plan) if h.attached)
    assert "int pp_h3(u64 *ctx)" in text and "pp_deliver(ctx, ctx[0], 3, 2)" in text


def test_placeholder_calls_become_kfunc_calls():
    """bpfsys.patch_kfunc_calls rewrites `call PLACEHOLDER` (a helper call bcc can compile)
    into a kfunc call (src_reg BPF_PSEUDO_KFUNC_CALL, imm = the function's BTF id), and
    nothing else: other helper calls, and other instructions with the same immediate, stay."""
    import struct
    from pktpath.collect import bpfsys
    ph = program.CAST_CALL
    insns = [(0xb7, 0x02, 0, 13013),      # r2 = btf id
             (0x85, 0x00, 0, ph),         # call placeholder     -> patched
             (0x85, 0x00, 0, 113),        # call bpf_probe_read_kernel
             (0xb7, 0x01, 0, ph),         # r1 = placeholder (not a call)
             (0x85, 0x10, 0, ph),         # a call with src_reg 1 (BPF_PSEUDO_CALL): not ours
             (0x85, 0x00, 0, ph),         # second placeholder call -> patched
             (0x95, 0x00, 0, 0)]          # exit
    buf = bytearray(b"".join(struct.pack("<BBhi", *i) for i in insns))
    assert bpfsys.patch_kfunc_calls(buf, ph, 65486) == 2
    out = [struct.unpack_from("<BBhi", buf, 8 * k) for k in range(len(insns))]
    assert out[1] == (0x85, 0x20, 0, 65486) and out[5] == (0x85, 0x20, 0, 65486)
    assert [out[k] for k in (0, 2, 3, 4, 6)] == [insns[k] for k in (0, 2, 3, 4, 6)]


def test_named_sets_expand_in_catalog_order_once():
    """`default` and `light` name sets of catalog hooks; a hook also named on its own (or
    through both sets) counts once; `light` is transmit + delivery + drop only."""
    cat = hooks.load_catalog()
    names = lambda specs: [e["name"] for e in hooks.select(specs, cat)]  # noqa: E731
    assert names(["default"]) == names(None)
    assert names(["light"]) == ["net_dev_queue", "sk_data_ready", "sock_recv_length",
                                "kfree_skb"]
    assert names(["light", "kfree_skb", "netif_rx"]) == \
        ["net_dev_queue", "sk_data_ready", "sock_recv_length", "kfree_skb", "netif_rx"]
    assert names(["netif_rx", "light", "default"]) == \
        ["netif_rx", "net_dev_queue", "sk_data_ready", "sock_recv_length", "kfree_skb",
         "qdisc_enqueue", "netif_receive_skb"]
    kinds = {e["kind"] for e in hooks.select(["light"], cat)}
    assert kinds == {"pass", "drop", "deliver", "reader"}


def test_light_set_from_a_config_and_the_command_line():
    from pktpath import config
    cfg = config.load_config(None, {"hooks": ["light"]})
    plan = hooks.plan(cfg.hooks, caps(), hooks.load_catalog())
    assert [h.name for h in plan] == ["net_dev_queue", "sk_data_ready", "sock_recv_length",
                                      "kfree_skb"]
    # a kernel without sock:sock_recv_length (before 6.3): skipped, saying why
    assert not plan[2].attached and "does not exist on this kernel" in plan[2].why
    assert "callbacks only" in plan[2].why
    with pytest.raises(UserError, match="unknown hook 'lite'.*did you mean 'light'"):
        hooks.select(["lite"], hooks.load_catalog())


def test_catalog_coverage_covers_every_hook_with_method_fallback_or_why():
    cov = hooks.catalog_coverage(caps(), CATALOG)
    assert [c["hook"] for c in cov] == list(CATALOG)   # every hook, not only the default set
    by = {c["hook"]: c for c in cov}
    assert by["net_dev_queue"]["status"] == "available"
    assert by["net_dev_queue"]["method"] == "raw_tracepoint"
    assert by["net_dev_queue"]["sets"] == "default"
    assert by["netif_receive_skb"]["status"] == "available" and by["netif_receive_skb"]["sets"] == ""
    assert by["netif_rx"]["status"] == "skipped" and "does not exist" in by["netif_rx"]["why"]
    # no kprobes, no fentry: the function hook falls back to its tracepoint, and says why
    ip = by["ip_rcv"]
    assert ip["status"] == "fallback" and ip["via"] == "netif_receive_skb"
    assert ip["method"] == "raw_tracepoint"
    assert "kprobes are not available" in ip["why"] and "uses netif_receive_skb" in ip["why"]
    # with kprobes the function hook itself is available; with fentry it uses fentry
    assert {c["hook"]: c for c in hooks.catalog_coverage(caps(kprobes=True), CATALOG)}[
        "ip_rcv"]["method"] == "kprobe"
    assert {c["hook"]: c for c in hooks.catalog_coverage(caps(kprobes=True, fentry=True),
                                                          CATALOG)}["ip_rcv"]["method"] == "fentry"
    # a function hook without a fallback is skipped with the kernel's reason
    cat = dict(CATALOG, vxlan_rcv={"target": "vxlan_rcv", "method": "auto", "kind": "pass"})
    vx = {c["hook"]: c for c in hooks.catalog_coverage(caps(), cat)}["vxlan_rcv"]
    assert vx["status"] == "skipped" and vx["method"] is None and "kprobes" in vx["why"]


def test_catalog_coverage_of_the_real_catalog():
    cat = hooks.load_catalog()
    cov = hooks.catalog_coverage(caps(), cat)
    assert len(cov) == len(cat) > 20
    assert all(c["status"] in ("available", "fallback", "skipped") and
               (c["method"] is None) == (c["status"] == "skipped") and
               (c["status"] == "available" or c["why"]) for c in cov)


def test_probes_without_hooks_lists_the_whole_catalog():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    run = [sys.executable, os.path.join(root, "run.py"), "probes", "--plan-only"]
    p = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    head, _, section = p.stdout.partition("== every hook of the catalog")
    assert section, p.stdout
    listed = {line.split()[0] for line in section.splitlines()[3:] if line.strip()}
    assert listed == set(hooks.load_catalog())
    assert "vxlan_rcv" not in head            # the first table is still the default set
    p = subprocess.run(run + ["--hooks", "kfree_skb"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "every hook of the catalog" not in p.stdout


def test_reader_hook_takes_the_socket_and_walks_queues_only_with_direct_loads():
    """sock:sock_recv_length (sk, ret, flags): the socket argument from the BTF prototype; as
    tp_btf only where any address can be loaded (it walks socket queues, as the delivery hook);
    its entry point calls pp_reader with the socket."""
    tp = dict(TP, sock_recv_length=["struct sock *", "int", "int"])
    cat = hooks.load_catalog()
    h = hooks.plan(["sock_recv_length"], hooks.Capabilities(tracepoint_args=tp.get), cat)[0]
    assert (h.kind, h.method, h.args) == ("reader", "raw_tracepoint", (0,))
    assert "pp_reader(ctx, ctx->args[0], 3, 0)" in program.entry_point(3, h)
    btf = hooks.plan(["sock_recv_length"], hooks.Capabilities(tracepoint_args=tp.get,
                                                              tp_btf=True), cat)[0]
    assert btf.method == "raw_tracepoint"
    btf = hooks.plan(["sock_recv_length"], hooks.Capabilities(
        tracepoint_args=tp.get, tp_btf=True, tp_btf_direct=True), cat)[0]
    assert btf.method == "tp_btf" and "pp_reader(ctx, ctx[0], 5, 2)" in program.entry_point(5, btf)
    bad = hooks.plan(["sock_recv_length"], hooks.Capabilities(
        tracepoint_args={"sock_recv_length": ["int"]}.get), cat)[0]
    assert not bad.attached and "no struct sock * argument" in bad.why
