"""Function hooks (kprobe/kretprobe/fentry) on a real kernel.

These machines have no kprobes and refuse fentry, but kprobe programs still load: so every
generated kprobe/kretprobe handler must pass the verifier here, and attach failure must be
reported while tracing goes on with the rest.
"""
import json
import os
import subprocess
import sys

import pytest

from pktpath.collect import program
from pktpath import config
from pktpath.collect import hooks
from pktpath.collect import bcc as bccmod
from pktpath.collect import tracer
from pktpath.kernel.btf import kernel_btf

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_function_handler_passes_the_verifier():
    bcc = bccmod.import_bcc()
    btf = kernel_btf()
    catalog = hooks.load_catalog()
    names = [n for n, e in catalog.items() if ":" not in e["target"]]
    caps = hooks.Capabilities(tracepoint_args=btf.tracepoint_args, kprobes=True, fentry=False)
    plan = hooks.plan(names, caps, catalog)
    assert all(h.method in ("kprobe", "kretprobe") for h in plan), plan
    t = tracer.Tracer(config.load_config(None, {}), plan, btf)
    hdr = bccmod.kernel_headers()
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
    if program.direct_pkt(kernel_btf())[0]:
        assert "packet headers in tp_btf programs: loaded in place (bpf_rdonly_cast)" in out
    if not os.path.exists("/sys/bus/event_source/devices/kprobe/type"):
        # ip_rcv falls back to its tracepoint; vxlan_rcv has no fallback: skipped, with why
        assert "fallback for ip_rcv" in out
        assert "vxlan_rcv" in out and "skipped" in out and "kprobes not available" in out


REFUSING = r"""
import ctypes, sys
sys.path.insert(0, %r)
from pktpath.collect import bpfsys
from pktpath.commands import cli
real = bpfsys.load_tp_btf
def refuse(insns, cnt, name, *a, **k):
    if refused(name, ctypes.string_at(insns, cnt * 8)):
        raise OSError(22, "Invalid argument")
    return real(insns, cnt, name, *a, **k)
%s
bpfsys.load_tp_btf = refuse
sys.exit(cli.main(["-c", %r, "--timeline", "0", "--json", %r, "--",
                   sys.executable, %r, "send", "--netns", "pp-ctrA", "--dst", "198.51.100.2",
                   "--port", "5000", "--count", "5", "--start-id", "%d"]))
"""


def trace_refusing(tmp_path, refused_src, start_id):
    """Trace 5 packets with a kernel that refuses the tp_btf programs `refused(name, code)`
    (Python source) picks; returns (completed process, verdicts)."""
    out = tmp_path / "v.jsonl"
    script = REFUSING % (ROOT, refused_src, os.path.join(ROOT, "configs", "lab.yaml"), str(out),
                         os.path.join(ROOT, "run.py"), start_id)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(v["id"] for v in verdicts) == list(range(start_id, start_id + 5))
    assert {v["verdict"] for v in verdicts} == {"delivered"}
    return p, verdicts


def test_refused_tp_btf_falls_back_to_raw_tracepoints(lab_up, tmp_path):
    """A kernel that loads the tp_btf probe but refuses pktpath's programs: every hook goes back
    to a raw tracepoint, the coverage table says why, and packets are still traced."""
    p, _ = trace_refusing(tmp_path, "def refused(name, code):\n"
                                    "    return name.startswith('pp_h')", 600)
    assert "tp_btf refused" in p.stdout and "tp_btf  " not in p.stdout


def test_refused_kfunc_keeps_tp_btf_and_copies_headers(lab_up, tmp_path):
    """A kernel that takes tp_btf programs but not pktpath's in-place reads (bpf_rdonly_cast):
    skb hooks stay tp_btf (headers copied), the delivery and reader hooks (they walk socket
    queues) go back to raw tracepoints,
    and packets are still traced end to end."""
    if not program.direct_pkt(kernel_btf())[0]:
        pytest.skip("no bpf_rdonly_cast here: nothing to refuse")
    p, _ = trace_refusing(tmp_path, "def refused(name, code):  # any kfunc call\n"
                                    "    return any(code[i] == 0x85 and code[i + 1] >> 4 == 2\n"
                                    "               for i in range(0, len(code), 8))", 700)
    rows = {line.split()[0]: line.split()[1] for line in p.stdout.splitlines()
            if line.split() and line.split()[0] in ("net_dev_queue", "sk_data_ready",
                                                    "sock_recv_length")}
    assert rows == {"net_dev_queue": "tp_btf", "sk_data_ready": "raw_tracepoint",
                    "sock_recv_length": "raw_tracepoint"}, p.stdout
