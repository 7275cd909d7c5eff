"""The collection layer's seams without root: only collect/bcc.py imports bcc, the tp_btf
fallback chain, and the map reader before a start."""
import ast
import dataclasses
import os

from pktpath.collect import loader
from pktpath.collect import maps

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "pktpath")
BCC_MODULE = os.path.join("collect", "bcc.py")


def imports_bcc(source):
    """Does this Python source import bcc (import bcc, from bcc..., __import__ or
    importlib.import_module of "bcc...")?"""
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("__import__", "import_module"):
                names = [str(node.args[0].value)]
        if any(n == "bcc" or n.startswith("bcc.") for n in names):
            return True
    return False


def test_the_import_check_sees_every_form():
    for src in ("import bcc", "import os, bcc.table", "from bcc import BPF",
                "def f():\n    import bcc\n", "__import__('bcc')",
                "import importlib\nimportlib.import_module('bcc')"):
        assert imports_bcc(src), src
    for src in ("from pktpath.collect import bcc", "from . import bcc", "import bccx",
                "bcc = 1"):
        assert not imports_bcc(src), src


def test_only_collect_bcc_imports_bcc():
    found = []
    for d, _, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(d, name)
                with open(path) as f:
                    if imports_bcc(f.read()):
                        found.append(os.path.relpath(path, PKG))
    assert found == [BCC_MODULE]


@dataclasses.dataclass
class Hook:
    name: str
    kind: str
    method: str
    why: str = ""


def coverage(plan, refused):
    return [{"hook": h.name, "method": h.method,
             "status": "skipped" if h.name in refused else "attached",
             "why": "attach failed: EINVAL" if h.name in refused else ""} for h in plan]


PLAN = [Hook("net_dev_queue", "pass", "tp_btf"), Hook("kfree_skb", "drop", "tp_btf"),
        Hook("sk_data_ready", "deliver", "tp_btf"), Hook("netif_rx", "pass", "raw_tracepoint")]


def test_every_tp_btf_hook_attached_no_fallback():
    assert loader.fallback(PLAN, coverage(PLAN, ()), {"PP_DIRECT_PKT": 1}) is None


def test_fallback_chain_in_place_then_copied_then_raw_tracepoints():
    direct = {"PP_DIRECT_PKT": 1}
    # refused with headers read in place: headers copied, the delivery hook a raw tracepoint
    plan, new_direct, why = loader.fallback(PLAN, coverage(PLAN, {"kfree_skb"}), direct)
    assert new_direct == {} and why == "tp_btf refused it (attach failed: EINVAL)"
    assert [h.method for h in plan] == ["tp_btf", "tp_btf", "raw_tracepoint", "raw_tracepoint"]
    assert plan[2].why == "tracepoint" and plan[3].why == ""
    # refused again, headers copied: every hook a raw tracepoint, saying why
    plan, new_direct, why = loader.fallback(plan, coverage(plan, {"net_dev_queue"}), {})
    assert new_direct == {} and why is None
    assert {h.method for h in plan} == {"raw_tracepoint"}
    assert plan[0].why == plan[1].why == "tp_btf refused (attach failed: EINVAL): raw tracepoint"
    assert plan[2].why == "tracepoint"
    assert loader.fallback(plan, coverage(plan, ()), {}) is None


def test_map_reader_without_maps_reads_empty():
    r = maps.MapReader({}, summary=True, stacks=True, drops_all=True)
    assert r.counters() == {"lost": 0, "unreachable": 0, "from_map": 0, "lost_paths_full": 0,
                            "rescued": 0, "from_frags": 0,
                            "ip6_ext_unwalked": 0, "geneve_opts_unread": 0,
                                "deliver_resumed": 0, "deliver_head": 0, "deliver_reader": 0,
                                "deliver_late": 0}
    assert r.sweep() == [] and r.stack(3) == [] and r.drop_counts() == [] and r.lost_ids() == {}
