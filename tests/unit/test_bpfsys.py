"""bpfsys without root: map-reference relocation, cache keys, and the image file's rules."""
import os
import struct

import pytest

from pktpath.collect import bpfsys


def ld_map(dst, fd):
    """ld_imm64 dst, map fd (two instruction slots)."""
    return struct.pack("<BBhi", 0x18, (1 << 4) | dst, 0, fd) + struct.pack("<BBhi", 0, 0, 0, 0)


CALL = struct.pack("<BBhi", 0x85, 0, 0, 1)          # call bpf_map_lookup_elem
EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)
MOV_IMM = struct.pack("<BBhi", 0xb7, 1, 0, 7)        # r1 = 7: an immediate that is no map


def test_relocate_rewrites_map_references_only():
    code = ld_map(1, 7) + MOV_IMM + ld_map(2, 9) + CALL + EXIT
    out = bpfsys.relocate(code, {7: 0, 9: 1})
    assert out[:8] == ld_map(1, 0)[:8] and out[8:16] == code[8:16]
    assert out[16:24] == MOV_IMM                      # r1 = 7 stays 7
    assert out[24:32] == ld_map(2, 1)[:8]
    assert out[40:] == CALL + EXIT
    assert bpfsys.relocate(out, {0: 7, 1: 9}) == code  # and back


def test_relocate_refuses_an_unknown_map():
    with pytest.raises(KeyError):
        bpfsys.relocate(ld_map(1, 5) + EXIT, {7: 0})


def test_image_key_depends_on_every_part():
    base = bpfsys.image_key("text", "-DA=1", "0.26", "6.18")
    assert base == bpfsys.image_key("text", "-DA=1", "0.26", "6.18")
    for other in (("text2", "-DA=1", "0.26", "6.18"), ("text", "-DA=2", "0.26", "6.18"),
                  ("text", "-DA=1", "0.27", "6.18"), ("text", "-DA=1", "0.26", "6.19")):
        assert bpfsys.image_key(*other) != base
    # parts are separated: moving a boundary is another key
    assert bpfsys.image_key("ab", "c") != bpfsys.image_key("a", "bc")


def image():
    spec = {"name": "counters", "type": 6, "key_size": 4, "value_size": 8, "max_entries": 7,
            "flags": 0}
    return bpfsys.Image([spec], {"pp_h0": ld_map(1, 0) + EXIT})


def test_image_round_trip(tmp_path):
    path = str(tmp_path / "img" / "k.json")
    image().save(path)
    back = bpfsys.Image.read(path)
    assert back.tables == image().tables and back.funcs == image().funcs


@pytest.mark.parametrize("content", ["not json", '{"version": 0, "tables": [], "funcs": {}}',
                                     '{"version": 1, "tables": [], "funcs": {"f": 3}}', "[]"])
def test_a_damaged_or_foreign_image_is_no_image(tmp_path, content):
    path = tmp_path / "k.json"
    path.write_text(content)
    os.chmod(tmp_path, 0o755)
    assert bpfsys.Image.read(str(path)) is None


def test_an_image_others_could_have_written_is_not_trusted(tmp_path):
    """Its instructions go into the kernel: a group- or world-writable file or directory is
    ignored."""
    path = str(tmp_path / "img" / "k.json")
    image().save(path)
    assert bpfsys.Image.read(path) is not None
    os.chmod(path, 0o666)
    assert bpfsys.Image.read(path) is None
    os.chmod(path, 0o644)
    os.chmod(os.path.dirname(path), 0o777)
    assert bpfsys.Image.read(path) is None


def test_save_keeps_the_newest_images(tmp_path, monkeypatch):
    monkeypatch.setattr(bpfsys, "KEEP_IMAGES", 3)
    d = tmp_path / "img"
    for i in range(5):
        image().save(str(d / ("%d.json" % i)))
        os.utime(d / ("%d.json" % i), (1000 + i, 1000 + i))
    image().save(str(d / "new.json"))
    assert sorted(os.listdir(d)) == ["3.json", "4.json", "new.json"]


@pytest.mark.parametrize("text,n", [("0\n", 1), ("0-1\n", 2), ("0-3,8-11\n", 12), ("0,2\n", 3)])
def test_possible_cpus(tmp_path, text, n):
    f = tmp_path / "possible"
    f.write_text(text)
    assert bpfsys.possible_cpus(str(f)) == n
