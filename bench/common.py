"""What the kernel-side benches (bench/hookcost.py, bench/tools.py) share: bench/bench.py as a
module (B: the lab load, the tracer's start and stop, the empty programs), medians, and the
kernel's per-program run statistics (kernel.bpf_stats_enabled, read with bpftool)."""
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_spec = importlib.util.spec_from_file_location("pktpath_bench", os.path.join(HERE, "bench.py"))
B = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = B     # its sender function is pickled by module name
_spec.loader.exec_module(B)


def med(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def prog_ids():
    """{id: bpftool's record} of every BPF program loaded."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"]: p for p in json.loads(out or "[]")}


def set_stats(on):
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=%d" % on], check=True)


def runs_ns(p, p0):
    """(runs, ns) of program record `p` since the earlier record `p0` of the same program."""
    return (p.get("run_cnt", 0) - p0.get("run_cnt", 0),
            p.get("run_time_ns", 0) - p0.get("run_time_ns", 0))
