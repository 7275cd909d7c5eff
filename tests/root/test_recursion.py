"""The runs of pktpath's programs the kernel skipped (bpf_prog_info.recursion_misses): read from
the kernel at the stop of a real trace, and counted when a program really is entered nested."""
import ctypes
import json
import os
import struct
import subprocess
import sys

import pytest

from pktpath.collect import bpfsys, hooks, loader, tracer
from pktpath.kernel import btf as btfmod

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def test_an_idle_trace_records_zero_runs_skipped(lab_up, tmp_path):
    """The figure is read from the kernel (the key is in the end record: no "not counted"
    line), and an idle second of the lab skips none: no note."""
    rec = tmp_path / "rec.jsonl"
    p = subprocess.run(RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--duration", "1",
                              "--record", str(rec), "--timeline", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "recursion misses not counted" not in p.stderr
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["type"] == "end" and end["recursion_misses"] == 0, end
    assert "recursion_misses_hooks" not in end
    assert "the kernel skipped" not in p.stdout


# r1 = "pp\n"; *(u64 *)(r10 - 8) = r1; r1 = r10 - 8; r2 = 8; call bpf_trace_printk; r0 = 0; exit
PRINTK = b"".join(struct.pack("<BBhi", *i) for i in [
    (0xb7, 0x01, 0, 0x0a7070), (0x7b, 0x1a, -8, 0), (0xbf, 0xa1, 0, 0), (0x07, 0x01, 0, -8),
    (0xb7, 0x02, 0, 8), (0x85, 0x00, 0, 6), (0xb7, 0x00, 0, 0), (0x95, 0x00, 0, 0)])


def run_once(prog_fd):
    """BPF_PROG_TEST_RUN of a raw tracepoint program (no context): its return value."""
    attr = ctypes.create_string_buffer(80)
    struct.pack_into("<I", attr, 0, prog_fd)
    ret, err = bpfsys._bpf(10, attr)
    assert ret == 0, os.strerror(err)
    return struct.unpack_from("<I", attr, 4)[0]


@pytest.mark.parametrize("method", ["tp_btf", "raw_tracepoint"])
def test_a_run_entered_nested_is_counted(method):
    """A program on the bpf_trace_printk tracepoint that calls bpf_trace_printk fires its own
    tracepoint while it runs: the kernel skips that nested run and counts it. Attached the way
    pktpath attaches its hooks (loader.Programs), read the way the tracer reads them."""
    btf = btfmod.kernel_btf()
    at, why = tracer.recursion_misses_offset(btf)
    assert at is not None, why
    hook = hooks.Hook("printk", "bpf_trace:bpf_trace_printk", "pass", method, method)
    progs = loader.Programs({}, {"pp_h0": PRINTK})
    trigger = bpfsys.load_bytes(PRINTK, "pp_trigger", bpfsys.PROG_RAW_TRACEPOINT)
    try:
        cov = progs.attach_plan([hook], btf, {})
        assert cov[0]["status"] == "attached", cov
        (fd,) = progs.prog_fds[0]
        before = bpfsys.prog_info_u64(fd, at)
        for _ in range(3):
            # the trigger (not attached) prints: the hook runs and prints, and its own
            # tracepoint fires again while it runs: skipped, counted
            assert run_once(trigger) == 0
        assert bpfsys.prog_info_u64(fd, at) - before == 3
    finally:
        progs.close()
        os.close(trigger)
