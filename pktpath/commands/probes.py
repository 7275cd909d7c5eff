"""`run.py probes [-c CONFIG]`: which hooks attach on this kernel, by which method, and why not.

Without root it shows the plan (what would be tried); as root it really loads and attaches the
program, then detaches it, so the status is the kernel's answer, not a guess.
"""
import os
import sys

from tabulate import tabulate

from pktpath import config as configmod
from pktpath.kernel import symbols
from pktpath.kernel.btf import kernel_btf
from pktpath.collect.plan import build_plan


def add_arguments(p):
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config (default hooks if absent)")
    p.add_argument("--hooks", metavar="H1,H2", help="comma-separated hook names")
    p.add_argument("--plan-only", action="store_true", help="do not load/attach, only plan")


def rows(coverage):
    return [[c["hook"], c.get("target", ""), c.get("requested") or "", c.get("method") or "-",
             c["status"], c.get("why", "")] for c in coverage]


def render(coverage):
    return tabulate(rows(coverage), headers=["HOOK", "TARGET", "REQUESTED", "METHOD", "STATUS",
                                             "WHY"])


def render_catalog(rows_):
    return tabulate([[c["hook"], c["target"], c["sets"], c["method"] or "-", c["status"],
                      c["why"]] for c in rows_],
                    headers=["HOOK", "TARGET", "SETS", "METHOD", "ON THIS KERNEL", "WHY"])


def catalog_section(btf, root):
    """Every hook of the catalog, planned on its own with what this kernel offers: what could be
    traced here before choosing hooks (fentry is probed as root only)."""
    from pktpath.collect import capabilities, hooks
    caps = capabilities.capabilities(btf, symbols.Kallsyms(), want_fentry=root)
    if not root:
        caps.fentry_why = "fentry not probed (needs root)"
    rows_ = hooks.catalog_coverage(caps)
    counts = {k: sum(c["status"] == k for c in rows_) for k in ("available", "fallback",
                                                                 "skipped")}
    return ("== every hook of the catalog (configs/hooks.yaml) on this kernel: %d available, "
            "%d through a tracepoint fallback, %d skipped; choose with --hooks or a config's "
            "hooks: ==\n%s" % (counts["available"], counts["fallback"], counts["skipped"],
                               render_catalog(rows_)))


def run(args):
    ov = {}
    if args.hooks:
        ov["hooks"] = [h.strip() for h in args.hooks.split(",") if h.strip()]
    cfg = configmod.load_config(args.config, ov)
    btf = kernel_btf()
    plan = build_plan(cfg, btf, symbols.Kallsyms(), root=os.geteuid() == 0)
    if args.plan_only or os.geteuid() != 0:
        if os.geteuid() != 0 and not args.plan_only:
            print("pktpath: not root: showing the plan only", file=sys.stderr)
        coverage = [{"hook": h.name, "target": h.target, "requested": h.requested,
                     "method": h.method, "status": "planned" if h.attached else "skipped",
                     "why": h.why} for h in plan]
    else:
        import time
        from pktpath.collect import tracer
        t = tracer.Tracer(cfg, plan, btf)
        try:
            coverage = t.start(lambda data: None)
        finally:
            t0 = time.monotonic()
            t.close()
            detach_s = time.monotonic() - t0
        print("pktpath: %d hooks: %s %.2fs, attach %.3fs, detach %.3fs"
              % (len(plan), "cached compile" if t.cached else "compile", t.compile_s,
                 t.attach_s, detach_s), file=sys.stderr)
    print(render(coverage))
    if os.geteuid() == 0 and not args.plan_only:
        # IDs in page fragments (GSO/paged payloads): read, and how, or why not
        print("\npacket IDs in page fragments: %s" % (
            "read (%s)" if t.frags else "not read: %s") % t.paged_why)
        # how tp_btf programs read packet headers and socket queues
        print("packet headers in tp_btf programs: %s" % (
            "loaded in place (bpf_rdonly_cast)" if t.direct else
            "copied with bpf_probe_read_kernel (%s)" % t.direct_why))
    if not args.hooks:   # what could be seen here, before choosing hooks
        print("\n" + catalog_section(btf, os.geteuid() == 0 and not args.plan_only))
    return 0
