"""A minimal reader of the kernel's BTF (/sys/kernel/btf/vmlinux).

pktpath compiles its BPF program against whatever kernel headers exist, which may belong to another
kernel. So every struct field the program reads is located here, from the running kernel's own
type information, and handed to the compiler as a constant. Also: enum values (drop reasons) and
raw-tracepoint prototypes (which argument is the skb).

Format: include/uapi/linux/btf.h. Only what pktpath needs is decoded; no root needed.
"""
import struct

from pktpath.errors import UserError

VMLINUX = "/sys/kernel/btf/vmlinux"

# BTF kinds (btf.h) and the size of the data that follows each btf_type
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, \
    FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


def _extra_len(kind, vlen):
    """Bytes that follow the 12-byte struct btf_type for this kind."""
    if kind in (INT, VAR, DECL_TAG):
        return 4
    if kind == ARRAY:
        return 12
    if kind in (STRUCT, UNION, DATASEC, ENUM64):
        return 12 * vlen
    if kind in (ENUM, FUNC_PROTO):
        return 8 * vlen
    return 0


class BTF:
    """Parsed BTF blob. Types are indexed lazily by name for the kinds we look up."""

    def __init__(self, data):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise UserError("BTF: bad magic 0x%x (not a little-endian BTF blob)" % magic)
        self._data = data
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        self._types = [None]  # type id -> byte offset of its btf_type; id 0 is void
        self._by_name = {}    # (kind, name) -> type id (first one wins)
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        # the hot loop of pktpath's start-up (~130k types): per-kind sizes from tables, names
        # decoded only for the kinds looked up by name
        unpack = struct.Struct("<II").unpack_from
        fixed = [12 + _extra_len(k, 0) for k in range(32)]
        per = [_extra_len(k, 1) - _extra_len(k, 0) for k in range(32)]
        wanted = {STRUCT, UNION, ENUM, ENUM64, TYPEDEF}
        by_name, types, append = self._by_name, self._types, self._types.append
        strs, find = self._strs, data.index
        while pos < end:
            name_off, info = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            append(pos)
            if name_off and kind in wanted:
                start = strs + name_off
                key = (kind, data[start:find(b"\0", start)].decode())
                if key not in by_name:
                    by_name[key] = len(types) - 1
            pos += fixed[kind] + per[kind] * (info & 0xFFFF)

    @classmethod
    def load(cls, path=VMLINUX):
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise UserError("cannot read kernel BTF %s: %s (needs CONFIG_DEBUG_INFO_BTF=y)"
                            % (path, e.strerror)) from None

    def _str(self, off):
        start = self._strs + off
        return self._data[start:self._data.index(b"\0", start)].decode()

    def _type(self, tid):
        name_off, info, size_or_type = struct.unpack_from("<III", self._data, self._types[tid])
        return (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31), name_off, size_or_type

    def _skip_mods(self, tid):
        while tid:
            kind, _, _, _, ref = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref
        return 0

    def _find(self, kinds, name):
        for k in kinds:
            tid = self._by_name.get((k, name))
            if tid:
                return tid
        return 0

    def _members(self, tid):
        """Yield (name, type id, bit offset) of a struct/union."""
        kind, vlen, kflag, _, _ = self._type(tid)
        base = self._types[tid] + 12
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._data, base + 12 * i)
            yield (self._str(name_off) if name_off else ""), mtype, (off & 0xFFFFFF) if kflag else off

    def _member(self, tid, name):
        """Bit offset and type of member `name`, looking inside anonymous structs/unions."""
        for mname, mtype, off in self._members(tid):
            if mname == name:
                return off, mtype
            if not mname:
                inner = self._skip_mods(mtype)
                if self._type(inner)[0] in (STRUCT, UNION):
                    found = self._member(inner, name)
                    if found:
                        return off + found[0], found[1]
        return None

    def offset(self, struct_name, path):
        """Byte offset of `path` ("a.b.c", through embedded structs) in struct `struct_name`.

        Raises UserError if the struct or a member is missing on this kernel.
        """
        tid = self._find((STRUCT, UNION), struct_name)
        if not tid:
            raise UserError("BTF: struct %s not found in the running kernel" % struct_name)
        total = 0
        for part in path.split("."):
            found = self._member(tid, part)
            if not found:
                raise UserError("BTF: struct %s has no member %s" % (struct_name, path))
            bits, mtype = found
            if bits % 8:
                raise UserError("BTF: %s.%s is a bitfield" % (struct_name, path))
            total += bits // 8
            tid = self._skip_mods(mtype)
        return total

    def size(self, struct_name):
        """Byte size of struct `struct_name` (UserError if missing)."""
        tid = self._find((STRUCT, UNION), struct_name)
        if not tid:
            raise UserError("BTF: struct %s not found in the running kernel" % struct_name)
        return self._type(tid)[4]

    def trace_type_id(self, tp_name):
        """BTF type id of the `btf_trace_<tp_name>` typedef (what a tp_btf program attaches to),
        or 0."""
        return self._find((TYPEDEF,), "btf_trace_" + tp_name)

    def func_id(self, name):
        """BTF type id of kernel function `name` (a FUNC: what a kfunc call names), or 0."""
        memo = self.__dict__.setdefault("_func_ids", {})
        if name not in memo:
            memo[name] = self._func_id(name)
        return memo[name]

    def _func_id(self, name):
        key = b"\0" + name.encode() + b"\0"
        at = self._data.find(key, self._strs - 1, self._str_end)
        if at < 0:
            return 0
        name_off = at + 1 - self._strs
        for tid in range(1, len(self._types)):   # FUNCs are not indexed: looked up rarely
            pos = self._types[tid]
            no, info = struct.unpack_from("<II", self._data, pos)
            if no == name_off and (info >> 24) & 0x1F == FUNC:
                return tid
        return 0

    def byte_buffer(self, min_size, prefer=("ustring_buffer", "kvm_lapic_state", "entry_stack")):
        """(type id, size) of a struct that is one array of bytes of at least `min_size` (a type
        to read arbitrary memory as), or (0, 0)."""
        def bytes_struct(tid):
            kind, vlen, _, _, size = self._type(tid)
            if kind != STRUCT or vlen != 1 or size < min_size:
                return 0
            (_, mtype, off), = self._members(tid)
            arr = self._skip_mods(mtype)
            if off or self._type(arr)[0] != ARRAY:
                return 0
            elem, _, nelems = struct.unpack_from("<III", self._data, self._types[arr] + 12)
            ekind, _, _, _, esize = self._type(self._skip_mods(elem))
            return size if ekind == INT and esize == 1 and nelems == size else 0
        names = list(prefer) + sorted(n for k, n in self._by_name if k == STRUCT)
        for name in names:
            tid = self._by_name.get((STRUCT, name), 0)
            if tid and bytes_struct(tid):
                return tid, self._type(tid)[4]
        return 0, 0

    def has_struct(self, name):
        return bool(self._find((STRUCT, UNION), name))

    def enum(self, name):
        """{enumerator name: value} of enum `name` ({} if absent)."""
        tid = self._find((ENUM, ENUM64), name)
        if not tid:
            return {}
        kind, vlen, kflag, _, _ = self._type(tid)
        base = self._types[tid] + 12
        out = {}
        for i in range(vlen):
            if kind == ENUM:
                name_off, val = struct.unpack_from("<Ii" if kflag else "<II", self._data, base + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", self._data, base + 12 * i)
                val = lo | (hi << 32)
            out[self._str(name_off)] = val
        return out

    def tracepoint_args(self, tp_name):
        """Argument types of raw tracepoint `tp_name` as a list of strings, or None if unknown.

        Uses the kernel's `btf_trace_<name>` typedef (a pointer to the probe's prototype, whose
        first parameter is the hidden `void *__data`). Pointers to structs read "struct sk_buff *".
        """
        tid = self._find((TYPEDEF,), "btf_trace_" + tp_name)
        if not tid:
            return None
        ptr = self._type(tid)[4]
        proto = self._skip_mods(self._type(ptr)[4]) if self._type(ptr)[0] == PTR else 0
        if not proto or self._type(proto)[0] != FUNC_PROTO:
            return None
        _, vlen, _, _, _ = self._type(proto)
        base = self._types[proto] + 12
        args = []
        for i in range(vlen):
            _, ptype = struct.unpack_from("<II", self._data, base + 8 * i)
            args.append(self._type_name(ptype))
        return args[1:]

    def _type_name(self, tid):
        tid = self._skip_mods(tid)
        if not tid:
            return "void"
        kind, _, _, name_off, ref = self._type(tid)
        if kind == PTR:
            return self._type_name(ref) + " *"
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum "}.get(kind, "")
        return prefix + (self._str(name_off) if name_off else "?")


_cached = None


def kernel_btf():
    """The running kernel's BTF, parsed once per process."""
    global _cached
    if _cached is None:
        _cached = BTF.load()
    return _cached
