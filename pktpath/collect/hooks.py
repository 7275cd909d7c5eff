"""Hook catalog and attach plan (pure Python).

The catalog (configs/hooks.yaml) names every place pktpath knows how to watch. A config selects
hooks by name (or defines its own); `plan()` decides for each one how it will be attached on this
kernel, given what the kernel offers (a `Capabilities`), and why a hook is skipped.
"""
import dataclasses
import difflib
import os
from dataclasses import dataclass, field

import yaml

from pktpath.errors import UserError
from pktpath.paths import data_dir

CATALOG_PATH = os.path.join(data_dir("configs"), "hooks.yaml")
METHODS = ("raw_tracepoint", "tracepoint", "kprobe", "kretprobe", "fentry")
KINDS = ("pass", "drop", "deliver", "consume", "segment", "state", "reader")
# kinds given a socket, not an skb (their hooks walk socket queues)
SOCKET_KINDS = ("deliver", "state", "reader")
READER_MISSING = ("; deliveries are then seen at the data-ready callbacks only: a datagram its "
                  "reader takes before a callback reaches it may be reported lost")
# TCP-only kinds: attached when the traced protocol includes TCP (hook `tcp: true`)


@dataclass(frozen=True)
class Hook:
    """One hook as planned: `method` is what will be used here, or None when skipped."""
    name: str
    target: str
    kind: str
    requested: str             # method asked for (auto, raw_tracepoint, kprobe, ...)
    method: str = None         # method chosen on this kernel
    args: tuple = ()           # argument indexes: (skb|sk,) or (skb, location, reason) for drops
    why: str = ""              # why this method / why skipped
    stage: str = ""

    @property
    def attached(self):
        return self.method is not None

    @property
    def tp_name(self):
        return self.target.split(":", 1)[-1]


@dataclass
class Capabilities:
    """What the running kernel offers. `tracepoint_args(name)` returns the argument type names of
    a raw tracepoint (from BTF) or None if it does not exist; `kprobes`/`fentry` say whether those
    attach methods work at all; `symbols` is the set of probe-able function names (or None)."""
    tracepoint_args: object
    kprobes: bool = False
    fentry: bool = False
    tp_btf: bool = False        # BTF-typed raw tracepoints: skb fields by direct load
    tp_btf_direct: bool = False  # ... and any kernel memory by plain loads (bpf_rdonly_cast)
    symbols: set = field(default=None)
    kprobe_why: str = "kprobes are not available on this kernel"
    fentry_why: str = "fentry is not available on this kernel"


def load_catalog(path=CATALOG_PATH):
    """{name: entry dict} from the catalog YAML."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError("hook catalog %s: %s" % (path, str(e).splitlines()[0])) from None
    if not isinstance(data, dict):
        raise UserError("hook catalog %s: not a mapping" % path)
    return data


def _suggest(name, names):
    close = difflib.get_close_matches(name, names, n=1)
    return " (did you mean '%s'?)" % close[0] if close else ""


# named hook sets, flagged in the catalog (configs/hooks.yaml): usable in a `hooks:` list
SETS = ("default", "light")


def select(specs, catalog, proto="udp"):
    """Resolve the config's hook list (None = default set) into catalog-like entries.

    `specs` items are names (str) or objects with name/method/target/skb_arg/kind attributes;
    a name in SETS stands for the catalog's hooks flagged with it. A hook named twice counts
    once.
    """
    if specs is None:
        specs = ["default"]
    out, seen = [], set()
    for spec in specs:
        name = spec if isinstance(spec, str) else spec.name
        base = catalog.get(name)
        plain = isinstance(spec, str) or all(getattr(spec, k, None) is None for k in
                                             ("method", "target", "skb_arg", "kind"))
        if plain and base is None and name in SETS:
            # a named set: the catalog entries flagged with it, in catalog order
            out += [dict(e, name=n) for n, e in catalog.items()
                    if (e.get(name) or (e.get("tcp") and proto != "udp")) and n not in seen]
            seen.update(e["name"] for e in out)
            continue
        if name in seen:
            continue    # already in through a set
        seen.add(name)
        if plain:
            if base is None:
                raise UserError("hooks: unknown hook '%s'%s; see configs/hooks.yaml (a hook of "
                                "your own needs a target)"
                                % (name, _suggest(name, list(catalog) + list(SETS))))
            out.append(dict(base, name=name))
            continue
        entry = dict(base or {}, name=name)
        for key in ("method", "target", "skb_arg", "kind"):
            val = getattr(spec, key, None)
            if val is not None:
                entry[key] = val
        if "target" not in entry:
            raise UserError("hooks: %s: not in the catalog, so it needs a 'target'" % name)
        entry.setdefault("kind", "pass")
        entry.setdefault("method", "auto")
        out.append(entry)
    return out


def _tp_args(entry, types):
    """Argument indexes for a raw tracepoint with argument types `types`, or (None, why)."""
    def first(t):
        return types.index(t) if t in types else None
    if entry["kind"] in SOCKET_KINDS:
        sk = first("struct sock *")
        if sk is None:
            sk = first("const struct sock *")
        if sk is None:
            return None, "no struct sock * argument"
        if entry["kind"] == "state":   # (sk, oldstate, newstate)
            return ((sk, sk + 1, sk + 2), "") if len(types) >= sk + 3 else (None, "no states")
        return (sk,), ""
    skb = first("struct sk_buff *")
    if skb is None:
        return None, "no struct sk_buff * argument"
    if entry["kind"] == "drop":
        loc, reason = first("void *"), first("enum skb_drop_reason")
        return (skb, -1 if loc is None else loc, -1 if reason is None else reason), ""
    return (skb,), ""


def _plan_one(entry, caps):
    name, kind, target = entry["name"], entry.get("kind", "pass"), entry["target"]
    requested = entry.get("method", "auto")
    common = dict(name=name, target=target, kind=kind, requested=requested,
                  stage=entry.get("stage", ""))
    if kind not in KINDS:
        return Hook(why="unknown kind '%s'" % kind, **common)
    if requested in ("raw_tracepoint", "tracepoint") or ":" in target:
        types = caps.tracepoint_args(target.split(":", 1)[-1])
        if types is None:
            return Hook(why="tracepoint %s does not exist on this kernel" % target, **common)
        args, why = _tp_args(entry, types)
        if args is None:
            return Hook(why="tracepoint %s: %s" % (target, why), **common)
        # a delivery hook walks socket queues: as tp_btf only where any address can be loaded
        if caps.tp_btf and (kind not in SOCKET_KINDS or caps.tp_btf_direct):
            return Hook(method="tp_btf", args=args, why="tracepoint (BTF)", **common)
        return Hook(method="raw_tracepoint", args=args, why="tracepoint", **common)
    # a kernel function: fentry > kprobe > the catalog's tracepoint fallback
    skb_arg = entry.get("skb_arg", 0)
    reasons = []
    if caps.symbols is not None and target not in caps.symbols:
        reasons.append("function %s not found in /proc/kallsyms" % target)
    else:
        if requested in ("auto", "fentry"):
            if caps.fentry:
                return Hook(method="fentry", args=(skb_arg,), why="fentry", **common)
            reasons.append(caps.fentry_why)
        if requested in ("auto", "kprobe", "kretprobe", "fentry"):
            method = "kretprobe" if requested == "kretprobe" else "kprobe"
            if caps.kprobes:
                return Hook(method=method, args=(skb_arg,), why=method, **common)
            reasons.append(caps.kprobe_why)
    return Hook(why="; ".join(reasons) or "no usable method", **common)


def plan(specs, caps, catalog=None, proto="udp"):
    """The attach plan: one Hook per selected hook, attached or skipped with a reason.

    A function hook that cannot be probed uses its catalog `fallback` tracepoint hook instead
    (unless that hook is already in the plan), and says so.
    """
    catalog = load_catalog() if catalog is None else catalog
    entries = select(specs, catalog, proto)
    names = {e["name"] for e in entries}
    hooks = []
    for entry in entries:
        hook = _plan_one(entry, caps)
        fb = entry.get("fallback")
        if not hook.attached and fb and fb in catalog and fb not in names:
            sub = _plan_one(dict(catalog[fb], name=fb), caps)
            if sub.attached:
                names.add(fb)
                hook = Hook(name=fb, target=sub.target, kind=sub.kind, requested=hook.requested,
                            method=sub.method, args=sub.args, stage=sub.stage,
                            why="fallback for %s (%s)" % (entry["name"], hook.why))
        if not hook.attached and hook.kind == "reader":
            hook = dataclasses.replace(hook, why=hook.why + READER_MISSING)
        hooks.append(hook)
    return hooks


def catalog_coverage(caps, catalog=None):
    """What this kernel gives each hook of the catalog, planned on its own (as `--hooks NAME`
    would): one dict per catalog entry, in catalog order, with hook, target, sets (the named
    sets it belongs to), method (None when skipped), status `available`, `fallback` (its
    catalog `fallback` tracepoint hook is used instead: `via` names it) or `skipped`, and why."""
    catalog = load_catalog() if catalog is None else catalog
    out = []
    for name, entry in catalog.items():
        h = plan([name], caps, catalog)[0]
        row = {"hook": name, "target": entry.get("target", ""),
               "sets": ",".join(s for s in SETS if entry.get(s)), "method": h.method,
               "status": "skipped", "via": "", "why": h.why}
        if h.attached and h.name != name:
            prefix = "fallback for %s (" % name
            why = h.why[len(prefix):-1] if h.why.startswith(prefix) else h.why
            row.update(status="fallback", via=h.name, why="%s; uses %s (%s)"
                       % (why, h.name, h.target))
        elif h.attached:
            row["status"] = "available"
        out.append(row)
    return out
