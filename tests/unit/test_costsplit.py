"""bench/costsplit.py patches copies of the tree by text: each patch's anchor must still be in
the files it patches (a refactor that moves one must fail here, not in a root-only bench)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench(name):
    """bench/NAME.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _costsplit():
    return _bench("costsplit")


def test_every_patch_applies_to_the_tree():
    cs = _costsplit()
    assert set(cs.EXPERIMENTS) == {"discard", "noemit", "parse", "nowake", "batch", "shape",
                                      "bpass", "bfull", "bskb", "bnone"}
    for name, files in cs.EXPERIMENTS.items():
        for path, patches in files.items():
            with open(os.path.join(ROOT, path)) as f:
                text = f.read()
            for patch in patches:
                patched = patch(text)
                assert patched != text, (name, path)
                text = patched


def test_a_missing_anchor_fails():
    cs = _costsplit()
    patch = cs.EXPERIMENTS["noemit"]["bpf/pktpath.c"][0]
    try:
        patch("int main(void) { return 0; }")
    except SystemExit as e:
        assert "anchor" in str(e)
    else:
        raise AssertionError("a patch whose anchor is gone must fail")


def _pooled():
    return _bench("pooled")


def _run(c, x):
    return {"ratios": {"c": {"all": c, "median": None}, "x": {"all": x, "median": None}}}


def test_pooled_pairs_rounds_within_each_run():
    """X - Y is taken per round of one run (the same untraced neighbours), then pooled: a
    config that is always 0.05 above c in its own round shows +0.05 however much the rounds
    themselves move; pooling the configs' medians alone would not."""
    pl = _pooled()
    runs = [_run([0.60, 0.70, 0.80], [0.65, 0.75, 0.85]), _run([0.50, 0.90], [0.55, 0.95])]
    res = pl.pooled(runs, [("x", "c")])
    assert res["pairs"]["x-c"]["median"] == 0.05
    assert res["pairs"]["x-c"]["ci90"] == [0.05, 0.05]
    assert res["configs"]["c"]["rounds"] == 5
    assert res["configs"]["x"]["median"] == 0.75
    # a pair whose sign varies has an interval across zero
    res = pl.pooled([_run([0.6, 0.7, 0.8, 0.7], [0.7, 0.6, 0.9, 0.6])], [("x", "c")])
    lo, hi = res["pairs"]["x-c"]["ci90"]
    assert lo < 0 < hi
