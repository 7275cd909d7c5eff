"""The attach plan of a config on this kernel: which hook attaches by which method (used by the
trace and by `probes`)."""
from pktpath.collect import hooks as hooksmod


def build_plan(cfg, btf, kallsyms, root=True):
    """The attach plan for `cfg` on this kernel (fentry is probed only as root, when needed)."""
    from pktpath.collect import tracer
    catalog = hooksmod.load_catalog()
    entries = hooksmod.select(cfg.hooks, catalog, cfg.proto)
    want_fentry = root and any(":" not in e["target"] and e.get("method", "auto") in
                               ("auto", "fentry") for e in entries)
    caps = tracer.capabilities(btf, kallsyms, want_fentry=want_fentry)
    return hooksmod.plan(cfg.hooks, caps, catalog, cfg.proto)


def describe_coverage(coverage):
    """One line: the hooks attached, and those skipped with why."""
    attached = [c["hook"] for c in coverage if c["status"] == "attached"]
    skipped = ["%s (%s)" % (c["hook"], c["why"]) for c in coverage if c["status"] != "attached"]
    msg = "attached %d hook%s: %s" % (len(attached), "" if len(attached) == 1 else "s",
                                      ", ".join(attached) or "none")
    if skipped:
        msg += "; skipped %d: %s" % (len(skipped), "; ".join(skipped))
    return msg
