"""Config + BTF offsets + attach plan -> BPF C text and cflags (pure Python).

Configuration reaches the kernel side once, as -D constants; struct offsets come from the running
kernel's BTF, never from a header's struct layout.
"""
import ipaddress
import os

from pktpath.errors import UserError
from pktpath.paths import data_dir

BPF_DIR = data_dir("bpf")

# (macro, struct, member path) read by the BPF program
FIELDS = (
    ("PP_OFF_SKB_HEAD", "sk_buff", "head"),
    ("PP_OFF_SKB_TAIL", "sk_buff", "tail"),
    ("PP_OFF_SKB_MAC", "sk_buff", "mac_header"),
    ("PP_OFF_SKB_NET", "sk_buff", "network_header"),
    ("PP_OFF_SKB_DEV", "sk_buff", "dev"),
    ("PP_OFF_DEV_NAME", "net_device", "name"),
    ("PP_OFF_DEV_IFINDEX", "net_device", "ifindex"),
    ("PP_OFF_DEV_NET", "net_device", "nd_net.net"),
    ("PP_OFF_NET_INUM", "net", "ns.inum"),
    ("PP_OFF_SK_NET", "sock", "__sk_common.skc_net.net"),
    ("PP_OFF_SK_NUM", "sock", "__sk_common.skc_num"),
    ("PP_OFF_SK_QHEAD", "sock", "sk_receive_queue"),
    ("PP_OFF_SK_PROTO", "sock", "sk_protocol"),
    ("PP_OFF_UDP_READERQ", "udp_sock", "reader_queue"),
    ("PP_OFF_SKBHEAD_PREV", "sk_buff_head", "prev"),
    ("PP_OFF_SKBHEAD_QLEN", "sk_buff_head", "qlen"),
    ("PP_OFF_SKB_PREV", "sk_buff", "prev"),
)
# sk_buff fields copied in one read, with their sizes
SPAN = (("PP_OFF_SKB_HEAD", 8), ("PP_OFF_SKB_TAIL", 4), ("PP_OFF_SKB_MAC", 2),
        ("PP_OFF_SKB_NET", 2))


def resolve_offsets(btf):
    """{macro: byte offset} for every field in FIELDS, from `btf` (a pktpath.btf.BTF)."""
    return {macro: btf.offset(struct, path) for macro, struct, path in FIELDS}


def _addr_be32(ip):
    """An IPv4 address as the u32 the program compares with (network order, loaded on x86)."""
    return "0x%08xU" % int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")


def hdr_len(id_offset):
    need = 18 + 60 + 8 + 8 + 14 + 60 + 8 + id_offset + 4
    n = 128
    while n < need:
        n *= 2
    return n


RESCUE_PAGES = 64  # the fallback ring (bpf/pktpath.c)


def cflags(cfg, offsets, map_entries=65536, map_ttl_ns=2_000_000_000, stacks=False,
           drops_all=False, summary=True, paths=65536):
    """-D flags for config `cfg` (pktpath.config.Config) and BTF `offsets`; `stacks` records the
    kernel stack at each drop of a traced packet, `drops_all` counts every drop (dropwatch)."""
    d = dict(offsets)
    if stacks:
        d["PP_STACKS"] = 1
    if summary:
        d["PP_SUMMARY"] = 1
        d["PP_PATHS"] = paths
        d["PP_LASTSEEN_NS"] = "1000000ULL"  # 1 ms: a device-to-socket call chain takes us
    if drops_all:
        d["PP_DROPS_ALL"] = 1
    start = min(offsets[m] for m, _ in SPAN) & ~7  # keep u64 fields 8-aligned on the stack
    d["PP_SKB_SPAN_START"] = start
    d["PP_SKB_SPAN_LEN"] = max(offsets[m] + size for m, size in SPAN) - start
    dev = [offsets["PP_OFF_DEV_NAME"], offsets["PP_OFF_DEV_IFINDEX"], offsets["PP_OFF_DEV_NET"]]
    d["PP_DEV_SPAN_START"] = min(dev) & ~7
    d["PP_DEV_SPAN_LEN"] = max(offsets["PP_OFF_DEV_NAME"] + 16, offsets["PP_OFF_DEV_IFINDEX"] + 4,
                               offsets["PP_OFF_DEV_NET"] + 8) - d["PP_DEV_SPAN_START"]
    if d["PP_DEV_SPAN_LEN"] > 256:  # read on the BPF stack: keep it small
        raise UserError("net_device layout not supported (name/ifindex/nd_net %d bytes apart)"
                        % d["PP_DEV_SPAN_LEN"])
    d["PP_WAKEUP_EVERY"] = 32
    d["PP_HDR_LEN"] = hdr_len(cfg.id_offset)
    d["PP_VXLAN_PORT"] = cfg.vxlan_port
    d["PP_ID_OFFSET"] = cfg.id_offset
    d["PP_ID_BIG"] = 1 if cfg.id_byteorder == "big" else 0
    d["PP_RINGBUF_PAGES"] = cfg.ringbuf_pages
    d["PP_RESCUE_PAGES"] = RESCUE_PAGES
    d["PP_MAP_ENTRIES"] = map_entries
    d["PP_MAP_TTL_NS"] = "%dULL" % map_ttl_ns
    for key, macro in (("shost", "PP_SHOST"), ("dhost", "PP_DHOST"),
                       ("sip", "PP_SIP"), ("dip", "PP_DIP")):
        if getattr(cfg, key):
            d[macro] = _addr_be32(getattr(cfg, key))
    if cfg.udp_port:
        d["PP_UDP_PORT"] = cfg.udp_port
    return ["-D%s=%s" % (k, v) for k, v in sorted(d.items())]


def _arg(method, i):
    if i < 0:
        return "0"
    if method == "raw_tracepoint":
        return "ctx->args[%d]" % i
    if method == "fentry":
        return "a%d" % i
    return "PT_REGS_PARM%d(ctx)" % (i + 1)


def _call(index, hook):
    a = [_arg(hook.method, i) for i in hook.args]
    if hook.kind == "drop":
        return "pp_drop(ctx, %s, %d, %s, (u32)%s)" % (a[0], index, a[1], a[2])
    if hook.kind == "deliver":
        return "pp_deliver(ctx, %s, %d)" % (a[0], index)
    return "pp_pass(ctx, %s, %d)" % (a[0], index)


def entry_point(index, hook):
    """C entry function(s) for a planned, attached hook: `pp_h<index>` (and, for a kretprobe,
    `pp_h<index>_entry`). fentry uses bcc's KFUNC_PROBE, which bcc attaches itself at load."""
    fn = "pp_h%d" % index
    if hook.method == "raw_tracepoint":
        return "int %s(struct bpf_raw_tracepoint_args *ctx)\n{\n    return %s;\n}\n" % (
            fn, _call(index, hook))
    if hook.method == "fentry":
        params = ", ".join("u64 a%d" % i for i in range(max(hook.args) + 1))
        return "KFUNC_PROBE(%s, %s)\n{\n    return %s;\n}\n" % (
            hook.target, params, _call(index, hook))
    if hook.method == "kretprobe":
        return ("int %s_entry(struct pt_regs *ctx)\n{\n    return pp_stash(%s);\n}\n"
                "int %s(struct pt_regs *ctx)\n{\n    return pp_ret(ctx, %d, PT_REGS_RC(ctx));\n}\n"
                % (fn, _arg("kprobe", hook.args[0]), fn, index))
    return "int %s(struct pt_regs *ctx)\n{\n    return %s;\n}\n" % (fn, _call(index, hook))


def program(hooks):
    """Full C text: the event header, the shared handlers, one entry point per attached hook."""
    with open(os.path.join(BPF_DIR, "pktpath.h")) as f:
        header = f.read()
    with open(os.path.join(BPF_DIR, "pktpath.c")) as f:
        body = f.read()
    entries = [entry_point(i, h) for i, h in enumerate(hooks) if h.attached]
    return "\n".join([header, body] + entries)
