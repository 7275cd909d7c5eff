"""bench/costsplit.py patches copies of the tree by text: each patch's anchor must still be in
the files it patches (a refactor that moves one must fail here, not in a root-only bench)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _costsplit():
    spec = importlib.util.spec_from_file_location("costsplit",
                                                  os.path.join(ROOT, "bench", "costsplit.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_patch_applies_to_the_tree():
    cs = _costsplit()
    assert set(cs.EXPERIMENTS) == {"discard", "noemit", "parse", "nowake", "batch"}
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
