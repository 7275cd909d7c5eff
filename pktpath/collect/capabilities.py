"""What this kernel offers for tracing, each with the reason why not: probe, fall back, say so.

The kernel is the judge: tp_btf and fentry are probed by loading a trivial program; in-place
header reads (the bpf_rdonly_cast kfunc) and IDs in page fragments by what BTF and kallsyms
hold. Each answer comes with the reason that goes into the coverage table or the start-up lines.
"""
import ctypes
import os
import subprocess

from pktpath.collect import bcc
from pktpath.collect import bpfsys
from pktpath.collect import hooks as hooksmod
from pktpath.collect import program
from pktpath.errors import UserError, first_line


def check_privileges():
    if os.geteuid() != 0:
        raise UserError("tracing needs root (CAP_BPF, CAP_PERFMON): run with sudo")


def ensure_tracefs():
    """Mount tracefs/debugfs if missing (bcc looks there for some attach types)."""
    for path, fstype in (("/sys/kernel/tracing", "tracefs"), ("/sys/kernel/debug", "debugfs")):
        if os.path.isdir(path) and not os.listdir(path):
            subprocess.run(["mount", "-t", fstype, "nodev", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"
FENTRY_PROBE = "KFUNC_PROBE(netif_rx, u64 a0)\n{\n    return 0;\n}\n"


def probe_fentry():
    """(works, why not): load and attach a trivial fentry program, as the kernel is the judge."""
    if not bcc.kfunc_supported():
        return False, "fentry not supported (no BPF trampoline on this kernel)"
    try:
        bcc.load_and_unload(FENTRY_PROBE)
        return True, ""
    except UserError:   # no bcc, no kernel headers: not the kernel's answer
        raise
    except Exception as e:
        why = first_line(e)
        if "super-user" in why:  # bcc's wording for EPERM from BPF_PROG_LOAD
            why = "EPERM"
        return False, "fentry refused by the kernel (%s)" % why


def probe_tp_btf(btf):
    """(works, why not): load a two-instruction tp_btf program (r0 = 0; exit)."""
    btf_id = btf.trace_type_id("net_dev_queue")
    if not btf_id:
        return False, "no btf_trace_net_dev_queue in the kernel's BTF"
    prog = ctypes.create_string_buffer(bpfsys.RETURN_0)
    try:
        os.close(bpfsys.load_tp_btf(ctypes.addressof(prog), 2, "pp_probe", btf_id, log_size=0))
        return True, ""
    except OSError as e:
        return False, "tp_btf refused by the kernel (%s)" % e.strerror


def capabilities(btf, kallsyms=None, want_fentry=False):
    """What this kernel offers for attaching (see hooks.Capabilities). fentry is probed only
    when a function hook may use it (the probe costs a compile)."""
    kprobe_pmu = os.path.exists(KPROBE_PMU)
    tp_btf = probe_tp_btf(btf)[0] if os.geteuid() == 0 else False
    fentry, fentry_why = probe_fentry() if want_fentry else (False, "fentry not needed")
    return hooksmod.Capabilities(
        tracepoint_args=btf.tracepoint_args,
        kprobes=kprobe_pmu,
        kprobe_why="kprobes not available (no kprobe PMU: kernel built without CONFIG_KPROBES)",
        fentry=fentry,
        fentry_why=fentry_why,
        tp_btf=tp_btf,
        tp_btf_direct=tp_btf and bool(program.direct_pkt(btf)[0]),
        symbols=kallsyms,   # lazy: read only if a function hook asks
    )


def in_place_reads(btf, plan):
    """(-D values, why not) for tp_btf programs reading packet headers in place where the
    kernel allows (bpf_rdonly_cast); ({}, why) when not, or when no hook is tp_btf."""
    if not any(h.method == "tp_btf" for h in plan):
        return {}, "no tp_btf hook"
    return program.direct_pkt(btf)


def page_fragments(btf, kallsyms=None, frags=True):
    """(-D values, how or why not) for reading IDs in page fragments; ({}, "--no-frags") when
    the user turned it off."""
    if not frags:
        return {}, "--no-frags"
    return program.paged_layout(btf, symbol=kallsyms.address if kallsyms else None)
