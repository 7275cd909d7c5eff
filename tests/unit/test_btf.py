"""The BTF reader, on a small hand-built BTF blob and (when present) the running kernel's."""
import os
import struct

import pytest

from pktpath.kernel import btf as btf_mod
from pktpath.kernel.btf import BTF, VMLINUX
from pktpath.errors import UserError


def build_btf():
    """BTF for: struct inner { u32 a; u16 b; }; struct outer { u64 x; union { u32 y; struct
    inner in; }; }; enum e { E0 = 0, E7 = 7 }; and a typedef btf_trace_t to a func proto
    (void *, struct outer *, enum e)."""
    strs = b"\0"
    def s(name):
        nonlocal strs
        off = len(strs)
        strs += name.encode() + b"\0"
        return off
    types = b""
    def t(name_off, kind, vlen, size_or_type, extra=b"", kflag=0):
        nonlocal types
        types += struct.pack("<III", name_off, (kflag << 31) | (kind << 24) | vlen, size_or_type) + extra
    t(s("u32"), 1, 0, 4, struct.pack("<I", 32))                       # 1 int
    t(s("u16"), 1, 0, 2, struct.pack("<I", 16))                       # 2 int
    t(s("u64"), 1, 0, 8, struct.pack("<I", 64))                       # 3 int
    t(s("inner"), 4, 2, 8, struct.pack("<III", s("a"), 1, 0) + struct.pack("<III", s("b"), 2, 32))  # 4
    t(0, 5, 2, 8, struct.pack("<III", s("y"), 1, 0) + struct.pack("<III", s("in"), 4, 0))        # 5 anon union
    t(s("outer"), 4, 2, 16, struct.pack("<III", s("x"), 3, 0) + struct.pack("<III", 0, 5, 64))   # 6
    t(s("e"), 6, 2, 4, struct.pack("<Ii", s("E0"), 0) + struct.pack("<Ii", s("E7"), 7))          # 7
    t(0, 2, 0, 6)                                                      # 8 ptr -> outer
    t(0, 2, 0, 0)                                                      # 9 void *
    t(0, 13, 3, 0, struct.pack("<II", 0, 9) + struct.pack("<II", 0, 8) + struct.pack("<II", 0, 7))  # 10
    t(0, 2, 0, 10)                                                     # 11 ptr -> proto
    t(s("btf_trace_t"), 8, 0, 11)                                      # 12 typedef
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs))
    return hdr + types + strs


def test_offsets_through_anonymous_members():
    b = BTF(build_btf())
    assert b.offset("outer", "x") == 0
    assert b.offset("outer", "y") == 8
    assert b.offset("outer", "in.b") == 12
    with pytest.raises(UserError, match="no member"):
        b.offset("outer", "zz")
    with pytest.raises(UserError, match="not found"):
        b.offset("nosuch", "x")


def test_enum_and_tracepoint_args():
    b = BTF(build_btf())
    assert b.enum("e") == {"E0": 0, "E7": 7}
    assert b.enum("missing") == {}
    assert b.tracepoint_args("t") == ["struct outer *", "enum e"]
    assert b.tracepoint_args("missing") is None


def test_bad_magic():
    with pytest.raises(UserError, match="magic"):
        BTF(b"\0" * 32)


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_running_kernel():
    b = BTF.load()
    assert b.offset("sk_buff", "head") < b.offset("sk_buff", "data")
    assert b.tracepoint_args("kfree_skb")[0] == "struct sk_buff *"
    assert "SKB_DROP_REASON_NO_SOCKET" in b.enum("skb_drop_reason")


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_kfunc_and_byte_buffer_lookups():
    """What reading headers in place needs: the bpf_rdonly_cast FUNC and a struct that is one
    byte array (checked against the BTF's own description of it)."""
    from pktpath.collect import program
    btf = BTF.load()
    fid = btf.func_id("bpf_rdonly_cast")
    assert fid and btf._type(fid)[0] == btf_mod.FUNC
    assert btf.func_id("no_such_function_pktpath") == 0
    assert btf.func_id("rdonly_cast") == 0          # whole names only
    tid, size = btf.byte_buffer(64)
    assert tid and size >= 64
    (_, mtype, off), = btf._members(tid)
    assert off == 0 and btf._type(btf._skip_mods(mtype))[0] == btf_mod.ARRAY
    assert btf.byte_buffer(1 << 30) == (0, 0)
    d, why = program.direct_pkt(btf)
    assert d["PP_CAST_FUNC_ID"] == fid and d["PP_BYTES_BTF_ID"] == tid and why == ""


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_paged_layout_from_symbols_or_learned():
    """Page bases come from /proc/kallsyms when it lists data symbols, else they are learned
    from a slab (every offset that needs resolved from BTF); other architectures: not read."""
    from pktpath.collect import program
    btf = BTF.load()
    d, how = program.paged_layout(btf, symbol=lambda name: 0xffffffff82000000, machine="x86_64")
    assert d["PP_PAGED"] == 1 and d["PP_ADDR_PAGE_OFFSET_BASE"] == "0xffffffff82000000ULL"
    assert "PP_LEARN_BASES" not in d and "kallsyms" in how
    d, how = program.paged_layout(btf, symbol=lambda name: None, machine="x86_64")
    assert d["PP_LEARN_BASES"] == 1 and "PP_ADDR_VMEMMAP_BASE" not in d
    assert d["PP_OFF_SLAB_FREELIST"] > 0 and d["PP_PAGE_STRUCT_SHIFT"] == 6
    assert d["PP_SHINFO_SPAN_LEN"] <= 128
    assert program.paged_layout(btf, machine="aarch64")[0] == {}


KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81001000 t helper_a
ffffffff81002000 T vxlan_rcv
ffffffff82000000 D page_offset_base
ffffffff82000008 d vmemmap_base_not
ffffffff82000010 D vmemmap_base
ffffffffc0000000 t mod_func\t[vxlan]
"""


def test_kallsyms_one_read_lazy_parse(tmp_path):
    """Symbolizing uses text symbols only; `address` finds any symbol by its whole name without
    parsing the file; an unreadable or address-hidden file symbolizes nothing and refuses no
    function (unknown)."""
    from pktpath.kernel import symbols
    f = tmp_path / "kallsyms"
    f.write_text(KALLSYMS)
    k = symbols.Kallsyms(str(f))
    assert k.address("page_offset_base") == 0xffffffff82000000
    assert k.address("vmemmap_base") == 0xffffffff82000010
    assert k.address("base") is None and k.address("nope") is None
    assert k._loaded is None                      # not parsed for that
    assert k(0xffffffff81002010) == "vxlan_rcv+0x10"
    assert k(0xffffffff82000004) == "vxlan_rcv+0xffe004"   # data symbols are not functions
    assert k(0xffffffffc0000004) == "mod_func+0x4"
    assert "vxlan_rcv" in k and "mod_func" in k and "page_offset_base" not in k
    hidden = tmp_path / "hidden"
    hidden.write_text("".join("0" * 16 + line[16:] + "\n" for line in KALLSYMS.splitlines()))
    h = symbols.Kallsyms(str(hidden))
    assert h.address("page_offset_base") is None and "anything" in h
    missing = symbols.Kallsyms(str(tmp_path / "absent"))
    assert missing(0x1234) == "0x1234" and "anything" in missing
