"""The compiled-program cache and bpf(2) maps on a real kernel.

A second start of the same program loads the instructions the first one compiled (no bcc
compile) and must trace exactly as well; a damaged image, or --no-cache, compiles again.
"""
import json
import os
import struct
import subprocess
import sys

import pytest

from pktpath.collect import bpfsys
from pktpath.lab import overlay

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def test_maps_through_bpf_syscalls():
    spec = {"name": "pp_test", "type": 1, "key_size": 4, "value_size": 8, "max_entries": 16,
            "flags": 0}
    m = bpfsys.Map.create(spec)
    try:
        assert bpfsys.Map.from_fd(m.fd).spec() == spec
        for k in range(5):
            m.update(struct.pack("<I", k), struct.pack("<Q", k * 100))
        assert m.lookup(struct.pack("<I", 3)) == struct.pack("<Q", 300)
        assert m.lookup(struct.pack("<I", 9)) is None
        assert sorted(struct.unpack("<I", k)[0] for k in m.keys()) == [0, 1, 2, 3, 4]
        assert m.delete(struct.pack("<I", 3)) and not m.delete(struct.pack("<I", 3))
        assert len(m.items()) == 4
    finally:
        m.close()
    pc = bpfsys.Map.create({"name": "pp_test_pc", "type": 6, "key_size": 4, "value_size": 8,
                            "max_entries": 2, "flags": 0})
    try:
        slots = pc.per_cpu(pc.lookup(struct.pack("<I", 1)))
        assert len(slots) == bpfsys.possible_cpus() and all(s == b"\0" * 8 for s in slots)
    finally:
        pc.close()


def trace(tmp_path, cache_dir, start, extra=()):
    """Trace 3 packets; returns (stats, {id: verdict})."""
    out, stats = tmp_path / ("v%d.jsonl" % start), tmp_path / ("s%d.json" % start)
    cmd = RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--json", str(out),
                 "--stats-file", str(stats), "--timeline", "0", *extra, "--"] + RUN + [
        "send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP, "--port", str(overlay.PORT),
        "--start-id", str(start), "--count", "3", "--rate", "500"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PKTPATH_IMAGE_CACHE=str(cache_dir)))
    assert p.returncode == 0, p.stderr
    verdicts = {json.loads(ln)["id"]: json.loads(ln)["verdict"]
                for ln in out.read_text().splitlines()}
    return json.loads(stats.read_text()), verdicts, p.stderr


def test_second_start_loads_the_cached_compile(lab_up, tmp_path):
    cache = tmp_path / "images"
    first, v1, err1 = trace(tmp_path, cache, 9100)
    assert not first["cached"] and "(compile " in err1
    images = os.listdir(cache)
    assert len(images) == 1
    second, v2, err2 = trace(tmp_path, cache, 9200)
    assert second["cached"] and "(cached compile " in err2
    # the same hooks, loaded the same way, and the same verdicts
    assert second["methods"] == first["methods"] and second["headers"] == first["headers"]
    assert v1 == {i: "delivered" for i in range(9100, 9103)}
    assert v2 == {i: "delivered" for i in range(9200, 9203)}
    assert second["compile_s"] < first["compile_s"] / 2, (first, second)

    third, v3, _ = trace(tmp_path, cache, 9300, ["--no-cache"])
    assert not third["cached"] and v3 == {i: "delivered" for i in range(9300, 9303)}

    # a damaged image is compiled again, and replaced
    (cache / images[0]).write_text("{ damaged")
    fourth, v4, _ = trace(tmp_path, cache, 9400)
    assert not fourth["cached"] and v4 == {i: "delivered" for i in range(9400, 9403)}
    assert bpfsys.Image.read(str(cache / images[0])) is not None


def test_other_options_are_another_program(lab_up, tmp_path):
    """--stack compiles another program: it must not load the cached one without stacks."""
    cache = tmp_path / "images"
    trace(tmp_path, cache, 9500)
    stats, verdicts, _ = trace(tmp_path, cache, 9600, ["--stack"])
    assert not stats["cached"] and len(os.listdir(cache)) == 2
    assert verdicts == {i: "delivered" for i in range(9600, 9603)}
