"""Function hooks (kprobe/kretprobe/fentry) on a real kernel.

These machines have no kprobes and refuse fentry, but kprobe programs still load: so every
generated kprobe/kretprobe handler must pass the verifier here, and attach failure must be
reported while tracing goes on with the rest.
"""
import os
import subprocess
import sys

import pytest

from pktpath import config, hooks, tracer
from pktpath.btf import kernel_btf

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_function_handler_passes_the_verifier():
    bcc = tracer.import_bcc()
    btf = kernel_btf()
    catalog = hooks.load_catalog()
    names = [n for n, e in catalog.items() if ":" not in e["target"]]
    caps = hooks.Capabilities(tracepoint_args=btf.tracepoint_args, kprobes=True, fentry=False)
    plan = hooks.plan(names, caps, catalog)
    assert all(h.method in ("kprobe", "kretprobe") for h in plan), plan
    t = tracer.Tracer(config.load_config(None, {}), plan, btf)
    hdr = tracer.kernel_headers()
    if hdr:
        os.environ["BCC_KERNEL_SOURCE"] = hdr
    b = bcc.BPF(text=t.text.encode(), cflags=t.cflags)
    try:
        loaded = 0
        for i, h in enumerate(plan):
            fns = ["pp_h%d" % i] + (["pp_h%d_entry" % i] if h.method == "kretprobe" else [])
            for fn in fns:
                assert b.load_func(fn.encode(), bcc.BPF.KPROBE).fd >= 0
                loaded += 1
        assert loaded >= len(names)
    finally:
        b.cleanup()


def test_probes_reports_fallbacks_and_skips():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "probes", "--hooks",
                        "ip_rcv,vxlan_rcv,kfree_skb"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "kfree_skb" in out and "attached" in out
    assert "packet IDs in page fragments: read (page bases" in out
    if not os.path.exists("/sys/bus/event_source/devices/kprobe/type"):
        # ip_rcv falls back to its tracepoint; vxlan_rcv has no fallback: skipped, with why
        assert "fallback for ip_rcv" in out
        assert "vxlan_rcv" in out and "skipped" in out and "kprobes not available" in out
