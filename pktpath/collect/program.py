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
    ("PP_OFF_SKB_END", "sk_buff", "end"),
    ("PP_OFF_SKB_MAC", "sk_buff", "mac_header"),
    ("PP_OFF_SKB_NET", "sk_buff", "network_header"),
    ("PP_OFF_SKB_DEV", "sk_buff", "dev"),
    ("PP_OFF_DEV_NAME", "net_device", "name"),
    ("PP_OFF_DEV_IFINDEX", "net_device", "ifindex"),
    ("PP_OFF_DEV_NET", "net_device", "nd_net.net"),
    ("PP_OFF_NET_INUM", "net", "ns.inum"),
    ("PP_OFF_SK_NET", "sock", "__sk_common.skc_net.net"),
    ("PP_OFF_SK_NUM", "sock", "__sk_common.skc_num"),
    ("PP_OFF_SK_DPORT", "sock", "__sk_common.skc_dport"),
    ("PP_OFF_INET_SPORT", "inet_sock", "inet_sport"),
    ("PP_OFF_SKB_CB", "sk_buff", "cb"),
    ("PP_OFF_TCB_SEQ", "tcp_skb_cb", "seq"),
    ("PP_OFF_TCB_END_SEQ", "tcp_skb_cb", "end_seq"),
    ("PP_OFF_SK_QHEAD", "sock", "sk_receive_queue"),
    ("PP_OFF_SK_PROTO", "sock", "sk_protocol"),
    ("PP_OFF_UDP_READERQ", "udp_sock", "reader_queue"),
    ("PP_OFF_SKBHEAD_NEXT", "sk_buff_head", "next"),
    ("PP_OFF_SKBHEAD_PREV", "sk_buff_head", "prev"),
    ("PP_OFF_SKBHEAD_QLEN", "sk_buff_head", "qlen"),
    ("PP_OFF_SKB_PREV", "sk_buff", "prev"),
    ("PP_OFF_SKB_NEXT", "sk_buff", "next"),
)
# sk_buff fields copied in one read, with their sizes (dev is 170 bytes before the others: one
# longer read costs less than a second read at every matching hop)
SPAN = (("PP_OFF_SKB_DEV", 8), ("PP_OFF_SKB_HEAD", 8), ("PP_OFF_SKB_TAIL", 4),
        ("PP_OFF_SKB_END", 4), ("PP_OFF_SKB_MAC", 2), ("PP_OFF_SKB_NET", 2))

# Reading a packet ID from the skb's first page fragment (payload not in the linear data):
# skb_shinfo(skb) = head + end; frags[0] is a page (netmem) + offset + length; a page's kernel
# address is page_offset_base + pfn * PAGE_SIZE, pfn = (page - vmemmap_base) / sizeof(page).
# Both bases are randomized (KASLR) and are data symbols, which /proc/kallsyms lists only with
# CONFIG_KALLSYMS_ALL. Without them the program learns them from a slab (bpf/pktpath.c,
# pp_learn_bases): a socket's kmem_cache -> a partial slab's struct slab (in vmemmap) and its
# freelist (an address inside that slab's memory, in the direct map).
# skb_frag is a bio_vec on kernels before 6.4 (same layout, other names).
FRAG_LAYOUTS = (("skb_frag", "netmem", "len", "offset"),
                ("skb_frag", "bv_page", "bv_len", "bv_offset"),
                ("bio_vec", "bv_page", "bv_len", "bv_offset"))
PAGED_SYMBOLS = ("page_offset_base", "vmemmap_base")  # x86_64
SLAB_FIELDS = (("PP_OFF_SK_PROT", "sock", "__sk_common.skc_prot"),
               ("PP_OFF_PROTO_SLAB", "proto", "slab"),
               ("PP_OFF_CACHE_NODE", "kmem_cache", "node"),
               ("PP_OFF_CACHE_LIST", "kmem_cache", "list"),
               ("PP_OFF_NODE_PARTIAL", "kmem_cache_node", "partial"),
               ("PP_OFF_SLAB_LIST", "slab", "slab_list"),
               ("PP_OFF_SLAB_FREELIST", "slab", "freelist"),
               ("PP_OFF_SLAB_CACHE", "slab", "slab_cache"))


def paged_layout(btf, symbol=None, machine=None):
    """(-D values for reading IDs from page fragments, how the page bases are found) or
    ({}, why not) on this kernel. `symbol(name)` -> kernel address or None (default:
    /proc/kallsyms)."""
    from pktpath.kernel import symbols
    symbol = symbol or symbols.Kallsyms().address
    if (machine or os.uname().machine) != "x86_64":
        return {}, "page addresses are only computed on x86_64"
    d = {}
    for struct_name, page, length, off in FRAG_LAYOUTS:
        try:
            d["PP_OFF_FRAG_PAGE"] = btf.offset(struct_name, page)
            d["PP_OFF_FRAG_LEN"] = btf.offset(struct_name, length)
            d["PP_OFF_FRAG_OFF"] = btf.offset(struct_name, off)
            break
        except UserError:
            continue
    else:
        return {}, "no known page-fragment layout in BTF"
    try:
        nr = btf.offset("skb_shared_info", "nr_frags")
        frags = btf.offset("skb_shared_info", "frags")
        page_size = btf.size("page")
    except UserError as e:
        return {}, str(e)
    if page_size & (page_size - 1):
        return {}, "struct page is %d bytes (not a power of two)" % page_size
    d["PP_PAGE_STRUCT_SHIFT"] = page_size.bit_length() - 1
    d["PP_PAGE_SHIFT"] = (os.sysconf("SC_PAGE_SIZE")).bit_length() - 1
    start = min(nr, frags) & ~7
    d["PP_SHINFO_SPAN_START"] = start
    d["PP_SHINFO_SPAN_LEN"] = max(nr + 1, frags + d["PP_OFF_FRAG_OFF"] + 4) - start
    d["PP_OFF_SHINFO_NR_FRAGS"] = nr
    d["PP_OFF_SHINFO_FRAGS"] = frags
    if d["PP_SHINFO_SPAN_LEN"] > 128:
        return {}, "skb_shared_info layout not supported"
    addrs = [symbol(name) for name in PAGED_SYMBOLS]
    if all(addrs):
        for name, addr in zip(PAGED_SYMBOLS, addrs):
            d["PP_ADDR_" + name.upper()] = "0x%xULL" % addr
        how = "page bases from /proc/kallsyms"
    else:
        try:
            for macro, struct_name, path in SLAB_FIELDS:
                d[macro] = btf.offset(struct_name, path)
        except UserError as e:
            return {}, "page bases not in /proc/kallsyms, and %s" % e
        d["PP_LEARN_BASES"] = 1
        how = "page bases learned from a slab"
    d["PP_PAGED"] = 1
    return d, how


def resolve_offsets(btf):
    """{macro: byte offset} for every field in FIELDS, from `btf` (a pktpath.kernel.btf.BTF)."""
    return {macro: btf.offset(struct, path) for macro, struct, path in FIELDS}


def _addr_be32(ip):
    """An IPv4 address as the u32 the program compares with (network order, loaded on x86)."""
    return "0x%08xU" % int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")


def _addr_defines(macro, ip):
    """-D values for a filter address: IPv4 -> {PP_X: u32}; IPv6 -> {PP_X6_0, PP_X6_1}: its two
    8-byte halves as the program loads them (network order, on x86)."""
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return {macro: _addr_be32(ip)}
    b = a.packed
    return {"%s6_%d" % (macro, i): "0x%016xULL" % int.from_bytes(b[8 * i:8 * i + 8], "little")
            for i in (0, 1)}


def _v4(ip):
    return bool(ip) and ipaddress.ip_address(ip).version == 4


def ipv6_needed(cfg):
    """Whether an IPv6 header can be part of a packet the filter matches: not when an IPv4
    address filters the outer (underlay) level, which any encapsulated packet must pass (or no
    tunnel is parsed), and one filters the traced (inner, or only) level. Otherwise the program parses no IPv6
    (PP_NO_IPV6): such a packet is then an unparsed one, known only to the skb map."""
    outer_v4 = _v4(cfg.shost) or _v4(cfg.dhost) or not (cfg.vxlan_port or cfg.geneve_port)
    return not (outer_v4 and (_v4(cfg.sip) or _v4(cfg.dip)))


# Geneve option bytes the header length is sized for (more may fit; longer are counted)
GENEVE_OPTS = 32


def hdr_len(id_offset, l4=8):
    """PP_HDR_LEN: header bytes read per hook, a power of two covering IPv4 with options (both
    layers) + VXLAN, and IPv6 (both layers) + Geneve with GENEVE_OPTS bytes of options; `l4`:
    the inner transport header's length (UDP 8; TCP up to 60)."""
    v4 = 18 + 60 + 8 + 8 + 14 + 60 + l4
    v6 = 18 + 40 + 8 + 8 + GENEVE_OPTS + 14 + 40 + l4
    need = max(v4, v6) + id_offset + 4
    n = 128
    while n < need:
        n *= 2
    return n


RESCUE_PAGES = 64  # the fallback ring (bpf/pktpath.c)

# The immediate of the placeholder call that tracer.py turns into a bpf_rdonly_cast kfunc call
# in tp_btf programs (bpf/pktpath.c, pp_cast): not a helper number any kernel has.
CAST_CALL = 0x70707070


def direct_pkt(btf):
    """(-D values for reading packet headers in place in tp_btf programs, "") or ({}, why not):
    needs the bpf_rdonly_cast kfunc (Linux >= 6.2) and a struct that is an array of bytes."""
    fid = btf.func_id("bpf_rdonly_cast")
    if not fid:
        return {}, "no bpf_rdonly_cast kfunc in this kernel"
    tid, size = btf.byte_buffer(64)
    if not tid:
        return {}, "no byte-array struct in the kernel's BTF"
    return {"PP_DIRECT_PKT": 1, "PP_CAST_CALL": "0x%x" % CAST_CALL, "PP_BYTES_BTF_ID": tid,
            "PP_BYTES_SIZE": size, "PP_CAST_FUNC_ID": fid}, ""


def cflags(cfg, offsets, map_entries=65536, map_ttl_ns=2_000_000_000, stacks=False,
           drops_all=False, summary=True, paths=65536, paged=None, direct=None, extra=None):
    """-D flags for config `cfg` (pktpath.config.Config) and BTF `offsets`; `stacks` records the
    kernel stack at each drop of a traced packet, `drops_all` counts every drop (dropwatch);
    `extra`: more -D values (the `drops` command's, see drop_defines)."""
    d = dict(offsets)
    d.update(extra or {})
    if extra and "PP_OFF_SKB_SK" in extra:
        # `drops` reads the span and skb->sk in one read (bpf/pktpath.c, pp_dropdetail)
        start = min(offsets[m] for m, _ in SPAN) & ~7
        if extra["PP_OFF_SKB_SK"] < start:
            raise UserError("sk_buff layout not supported (sk before the fields read)")
        d["PP_DROP_SPAN_LEN"] = max([offsets[m] + size for m, size in SPAN] +
                                    [extra["PP_OFF_SKB_SK"] + 8]) - start
        # the headers a drop shows: 802.1Q + outer IPv6 + UDP + Geneve with GENEVE_OPTS bytes of
        # options + Ethernet + IPv6 + the TCP flags (174), in whole 8-byte words
        need = 18 + 40 + 8 + 8 + GENEVE_OPTS + 14 + 40 + 14
        d["PP_DROP_HDR_LEN"] = min((need + 7) & ~7, hdr_len(cfg.id_offset))
    d.update(paged or {})
    d.update(direct or {})
    if stacks:
        d["PP_STACKS"] = 1
    d["PP_LASTSEEN_NS"] = "1000000ULL"  # 1 ms: a device-to-socket call chain takes us
    # ... unless its CPU stalls (1.1 ms seen, #17): pp_deliver's fallback then also takes the
    # packet the CPU saw last up to 20 ms ago, if its flow is the socket's (port)
    d["PP_LASTSEEN_DELIVER_NS"] = "20000000ULL"
    if summary:
        d["PP_SUMMARY"] = 1
        d["PP_PATHS"] = paths
        d["PP_RESUME_NS"] = "1000000ULL"    # 1 ms: one batch's callbacks run back to back
        # a shallower delivery scan, for tests: every batch deeper than it must be resumed
        depth = os.environ.get("PKTPATH_DELIVER_SCAN")
        if depth:
            d["PP_DELIVER_SCAN"] = max(2, int(depth))   # the tail + 1
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
    d["PP_SKBHEAD_SPAN_LEN"] = max(offsets["PP_OFF_SKBHEAD_NEXT"] + 8,
                                   offsets["PP_OFF_SKBHEAD_PREV"] + 8,
                                   offsets["PP_OFF_SKBHEAD_QLEN"] + 4)
    d["PP_WAKEUP_EVERY"] = 256
    d["PP_HDR_LEN"] = hdr_len(cfg.id_offset, 60 if cfg.proto != "udp" else 8)
    if cfg.vxlan_port:
        d["PP_VXLAN_PORT"] = cfg.vxlan_port
    if cfg.geneve_port:
        d["PP_GENEVE_PORT"] = cfg.geneve_port
    d["PP_ID_OFFSET"] = cfg.id_offset
    d["PP_ID_BIG"] = 1 if cfg.id_byteorder == "big" else 0
    d["PP_RINGBUF_PAGES"] = cfg.ringbuf_pages
    d["PP_RESCUE_PAGES"] = RESCUE_PAGES
    d["PP_MAP_ENTRIES"] = map_entries
    d["PP_MAP_TTL_NS"] = "%dULL" % map_ttl_ns
    for key, macro in (("shost", "PP_SHOST"), ("dhost", "PP_DHOST"),
                       ("sip", "PP_SIP"), ("dip", "PP_DIP")):
        if getattr(cfg, key):
            d.update(_addr_defines(macro, getattr(cfg, key)))
    if cfg.port:
        d["PP_PORT"] = cfg.port
    # the traced (inner) transport protocols; UDP is parsed anyway (tunnels are UDP)
    if cfg.proto in ("udp", "any"):
        d["PP_PROTO_UDP"] = 1
    if cfg.proto in ("tcp", "any"):
        d["PP_PROTO_TCP"] = 1
    if cfg.id_from == "headers":
        d["PP_KEY_HEADERS"] = 1
    if not ipv6_needed(cfg) and not (extra and "PP_DROPS_ONLY" in extra):
        d["PP_NO_IPV6"] = 1
    return ["-D%s=%s" % (k, v) for k, v in sorted(d.items())]


# --pcap (bpf/pktpath.c, pp_snap): the skb's length and data pointer, read only there
PCAP_FIELDS = (("PP_OFF_SKB_LEN", "sk_buff", "len"),
               ("PP_OFF_SKB_DATA", "sk_buff", "data"))
SNAP_PAGES = 1024  # the snaps ring: 4 MiB, ~20k snaps between two polls


def pcap_defines(btf, pages=SNAP_PAGES):
    """-D values of a program that also copies each traced hop's headers (--pcap)."""
    d = {m: btf.offset(struct, path) for m, struct, path in PCAP_FIELDS}
    d.update(PP_PCAP=1, PP_SNAP_PAGES=pages)
    return d


# what the `drops` command reads besides FIELDS: the skb's socket and its state
DROP_FIELDS = (("PP_OFF_SKB_SK", "sk_buff", "sk"),
               ("PP_OFF_SK_STATE", "sock", "__sk_common.skc_state"))
PROTOCOLS = {"tcp": (6,), "udp": (17,), "icmp": (1, 58), "any": ()}


def _addr_halves(ip):
    """An IPv4/IPv6 address as the two u64 halves of a struct pp_flow address (as loaded on x86:
    little-endian; an IPv4 address takes the first 4 bytes, the rest zero)."""
    b = ipaddress.ip_address(ip).packed.ljust(16, b"\0")
    return ("0x%016xULL" % int.from_bytes(b[:8], "little"),
            "0x%016xULL" % int.from_bytes(b[8:], "little"))


def _any_of(values):
    return "(" + "||".join("(x)==%d" % v for v in values) + ")"


def drop_defines(btf, proto="any", port=None, host=None, netns=(), reasons=(), burst=10,
                 window_s=1.0, flows=16384):
    """-D values of the `drops` command (bpf/pktpath.c, pp_dropdetail): its BTF offsets, the
    filters (`netns`: inodes, `reasons`: enum skb_drop_reason values), the detail quota (`burst`
    records per (location, reason) per `window_s`), the size of the per-flow count table."""
    d = {m: btf.offset(struct, path) for m, struct, path in DROP_FIELDS}
    d.update(PP_DROPS_ONLY=1, PP_DROP_DETAIL=1, PP_DROP_BURST=int(burst),
             PP_DROP_WINDOW_NS="%dULL" % max(1, int(window_s * 1e9)), PP_DROP_FLOWS=flows)
    if proto == "arp":
        d["PP_DF_ETHERTYPE"] = "0x0806"
    elif PROTOCOLS.get(proto):
        d["PP_DF_PROTO_MATCH(x)"] = _any_of(PROTOCOLS[proto])
    if port:
        d["PP_DF_PORT"] = int(port)
    if host:
        d["PP_DF_HOST0"], d["PP_DF_HOST1"] = _addr_halves(host)
    if netns:
        d["PP_DF_NETNS_MATCH(x)"] = _any_of(sorted(netns))
    if reasons:
        d["PP_DF_REASON_MATCH(x)"] = _any_of(sorted(reasons))
    return d


def _arg(method, i):
    if i < 0:
        return "0"
    if method == "raw_tracepoint":
        return "ctx->args[%d]" % i
    if method == "tp_btf":
        return "ctx[%d]" % i
    if method == "fentry":
        return "a%d" % i
    return "PT_REGS_PARM%d(ctx)" % (i + 1)


def _call(index, hook):
    a = [_arg(hook.method, i) for i in hook.args]
    direct = 1 if hook.method == "tp_btf" else 0   # skb is a BTF pointer: direct loads
    if hook.kind == "drop":
        return "pp_drop(ctx, %s, %d, %s, (u32)%s, %d)" % (a[0], index, a[1], a[2], direct)
    if hook.kind == "deliver":
        # a tp_btf delivery hook exists only where pp_cast does (Capabilities.tp_btf_direct)
        return "pp_deliver(ctx, %s, %d, %d)" % (a[0], index, 2 if direct else 0)
    if hook.kind == "reader":
        return "pp_reader(ctx, %s, %d, %d)" % (a[0], index, 2 if direct else 0)
    if hook.kind == "consume":
        return "pp_consume(ctx, %s, %d, %d)" % (a[0], index, direct)
    if hook.kind == "segment":
        return "pp_segment(ctx, %s, %d, %d)" % (a[0], index, direct)
    if hook.kind == "state":
        return "pp_state(ctx, %s, (int)%s, (int)%s, %d, %d)" % (a[0], a[1], a[2], index,
                                                               2 if direct else 0)
    return "pp_pass(ctx, %s, %d, %d)" % (a[0], index, direct)


def entry_point(index, hook):
    """C entry function(s) for a planned, attached hook: `pp_h<index>` (and, for a kretprobe,
    `pp_h<index>_entry`). fentry uses bcc's KFUNC_PROBE, which bcc attaches itself at load."""
    fn = "pp_h%d" % index
    if hook.method == "raw_tracepoint":
        return "int %s(struct bpf_raw_tracepoint_args *ctx)\n{\n    return %s;\n}\n" % (
            fn, _call(index, hook))
    if hook.method == "tp_btf":   # loaded and attached by tracer.py (bcc 0.26 cannot)
        return "int %s(u64 *ctx)\n{\n    return %s;\n}\n" % (fn, _call(index, hook))
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
