/* pktpath: the kernel side. One program, many hooks.
 *
 * Every hook hands an skb (or, for delivery, a socket) to one of three handlers below. A handler
 * (pp_handle) works in steps: read the skb's fields (pp_skb_fields); parse its headers in layers
 * (pp_parse: L2 -> L3 -> L4 -> a tunnel chosen by UDP destination port -> the inner L2/L3/L4),
 * apply the filter to the flows (pp_match_outer, pp_match_inner) and take the packet key
 * (pp_key_payload: the ID in the payload); find the ID elsewhere when the headers did not give
 * it (pp_identify); record an event (pp_record_event) or a hop of the packet's path
 * (pp_summary). The drop monitor of --drops all is pp_dropwatch. In tp_btf programs on kernels
 * with bpf_rdonly_cast every read is a plain load in place (pp_cast, PP_AT, PP_RD); otherwise the
 * skb fields and the headers are copied with one bounded bpf_probe_read_kernel each. Only
 * matching packets are recorded.
 *
 * Nothing here uses a kernel header's struct layout: every field offset (PP_OFF_*) is resolved
 * from the running kernel's BTF by pktpath/collect/program.py and passed as -D. Filter values
 * (PP_*) come from the config the same way. The per-hook entry points are generated (see
 * program.py) and appended after this file. Every record, map key and counter user space reads
 * is declared in pktpath.h.
 */

/* pktpath.h is prepended by program.py. struct pt_regs (kprobe entry points) is the one layout
 * taken from headers: it is the architecture's stable register ABI, not a kernel struct. */
#include <uapi/linux/ptrace.h>

/* Header bytes copied (or read in place) per hook: L2 (<=18) + IPv4 (<=60) + UDP + VXLAN + Eth +
 * IPv4 (<=60) + UDP + ID offset + 4, and at least IPv6 (40) + UDP + Geneve with 32 bytes of
 * options + Eth + IPv6 + UDP + ID (program.py, hdr_len). PP_HDR_LEN is a power of two. Headers
 * past it (long IPv6 extension chains, long Geneve options) are counted, not followed. */
struct pp_scratch {
    u8 h[2 * PP_HDR_LEN];   /* PP_HDR_LEN copied; the rest bounds reads at a masked offset */
};

/* skb address -> packet ID, for hooks where the headers can no longer be parsed: a direct-mapped
 * cache (an array indexed by a hash of the skb's data buffer and end of data, see pp_skbslot; a
 * newer entry evicts an older one in its slot). An array lookup is a few inlined instructions,
 * where an LRU hash insert cost ~200 ns on every traced packet. The skb's head pointer, end of
 * linear data and a time stamp are kept too: skb structs are recycled quickly and not every free
 * is visible, so an entry is only trusted for the same skb and data buffer and for
 * PP_MAP_TTL_NS. Slots are shared by CPUs without a lock: `check` (the other fields but skb,
 * xor-ed) rejects a slot two CPUs wrote at once. */
struct pp_skbinfo {
    u64 skb;
    u64 head;
    u64 ts;
    u64 id;
    u32 tail;   /* end of the linear data: a recycled skb and buffer rarely has the same */
    u32 _pad;
    u64 check;
};

BPF_RINGBUF_OUTPUT(events, PP_RINGBUF_PAGES);
/* A second, small ring: a reservation can also fail while the ring is far from full (the
 * ring's lock is a resilient spinlock that gives up under contention on recent kernels); the
 * record then goes here instead of being lost. */
BPF_RINGBUF_OUTPUT(rescue, PP_RESCUE_PAGES);
BPF_PERCPU_ARRAY(scratch, struct pp_scratch, 1);
BPF_ARRAY(skbids, struct pp_skbinfo, PP_MAP_ENTRIES);   /* PP_MAP_ENTRIES: a power of two */
/* [0]: nonzero once a traced packet's skb was put in the skb map (pp_skbmap_put). Until then
 * no skb map lookup can hit (its slots are all empty), so the lookups made for packets the
 * filter rejects (after NAT, pp_parse's PP_REWRITTEN; a socket on another port,
 * pp_nat_candidate) are skipped: a tracer whose filter matched nothing yet pays no cache miss
 * per hook for them. Written once (not at every put: a line both CPUs would keep writing). */
BPF_ARRAY(armed, u32, 1);
/* counters, per CPU, indexed by enum pp_counter (pktpath.h) */
BPF_PERCPU_ARRAY(counters, u64, PP_CNT_COUNT);
/* packet IDs that lost at least one event (ring buffer full): their verdict is `incomplete` */
BPF_TABLE("lru_hash", u32, u64, lostids, 65536);
#ifdef PP_STACKS
BPF_STACK_TRACE(stacks, 4096);
#endif
#ifdef PP_SUMMARY
/* An open path's key: the packet ID and the skb its path began on (pp_path.skb). An ID is not
 * unique (identical payloads, restarted or concurrent senders): two packets of one ID under
 * way at once are on two skbs, so they are two paths. (The ID is widened to 64 bits here, so
 * the key does not depend on its width.) Measured on the lab (Linux 6.18): a datagram keeps
 * its skb from the sender's socket to the receiver's (veth, VXLAN encap and decap, bridge,
 * underlay), so the key found at the first hook is found at every hook after it. */
struct pp_pathkey {
    u64 skb;
    u64 id;
};
BPF_TABLE("hash", struct pp_pathkey, struct pp_path, paths, PP_PATHS);
/* packet ID -> the skb of the path of that ID begun last: where a packet that moved to another
 * skb (a clone: a packet tap, a bridge flood; a copy) is looked for. A direct-mapped cache (an
 * array indexed by a hash of the ID, as skbids): a few instructions where a hash map insert
 * costs ~200 ns per packet. An entry evicted by another ID, stale (its path closed since) or
 * torn by two CPUs only makes that lookup miss (the packet then begins a path of its own). */
struct pp_pathskb {
    u64 id;
    u64 skb;
};
BPF_ARRAY(pathskb, struct pp_pathskb, PP_MAP_ENTRIES);

/* The slot: the ID's low bits, folded with its higher ones. Consecutive IDs (a counter, the
 * common case) take consecutive slots, four to a cache line, and the CPU's prefetcher follows
 * the stream: a multiplicative hash sent every new packet to a cold line (measured with
 * bpf_stats: ~75 ns per packet on the lab). IDs that differ only in high bits still spread. */
static __always_inline struct pp_pathskb *pp_pathskb_slot(u64 id)
{
    u32 idx = (u32)(id ^ (id >> 16) ^ (id >> 32)) & (PP_MAP_ENTRIES - 1);
    return pathskb.lookup(&idx);
}
BPF_PERCPU_ARRAY(pathinit, struct pp_path, 1);
#endif
/* per CPU: the last traced packet seen passing a hook, and where. A UDP datagram is queued to
 * its socket in the same softirq call chain that saw it at the device, on the same CPU; a TCP
 * segment that changes its socket's state does so there too (pp_state). */
struct pp_lastseen {
    u64 ts;
    u64 skb;    /* its path's key (summary mode) */
    u64 id;
    u32 netns;
    u32 ports;  /* events mode: its flow's ports (pp_flow4.ports), 0 if not parsed */
    u32 proto;  /* events mode: its transport protocol, 0 if not parsed */
    u32 _lpad;
};
BPF_PERCPU_ARRAY(lastseen, struct pp_lastseen, 1);
#ifdef PP_DROPS_ALL
/* struct pp_dropkey (pktpath.h) -> drops; both CPUs write it: see pp_dropwatch */
BPF_HASH(dropcounts, struct pp_dropkey, u64, 4096);
#endif

#define PP_MATCH 0
#define PP_NOMATCH 1
#define PP_UNPARSED 2
/* pp_handle's results, for the delivery scan */
#define PP_H_CLOSED 1       /* an older datagram whose packet was delivered already */
#define PP_H_DELIVERED 2    /* a delivery was recorded */

#define PP_IN_FRAGS 3   /* matched, but the ID lies in the paged data (pp_paged_id) */
/* parsed, but the inner filter rejected the flow: a traced packet after NAT if the skb map
 * says its skb carries an open one (the key is then the map's) */
#define PP_REWRITTEN 4

/* A flow as the parse holds it: the IPv4 addresses as loaded (network order) and both UDP
 * ports in one load (network order; on x86 sport is the low half). It lives in registers until
 * the filter decides; pp_flow_put widens it into a struct pp_flow record. An IPv6 flow has
 * saddr = daddr = 0 here (no IPv4 filter address is 0.0.0.0, so an IPv4 filter rejects it at no
 * cost to IPv4) and its addresses in the struct pp_pkt's in6 (see pp_ipv6). */
struct pp_flow4 {
    u32 saddr, daddr, ports;
};

/* A packet of the traced flow, as the parse leaves it for the record. */
struct pp_pkt {
    u32 id;                 /* the packet key (payload ID, or header hash: see pp_key_headers) */
    u32 _idpad;
    u32 vni;
    struct pp_flow4 in;     /* the traced (inner, or only) flow */
    struct pp_flow4 out;    /* the outer flow when tun != PP_TUN_NONE, else zero */
    u8 family;              /* 4 or 6; 0: not parsed (the ID came from the skb map) */
    u8 tun;                 /* PP_TUN_* */
    u8 ofamily;             /* the outer flow's family (0 when tun is PP_TUN_NONE) */
    u8 proto;               /* the traced flow's transport protocol (17 UDP, 6 TCP) */
    /* IPv6 addresses (saddr, daddr; network order as loaded), only read when the family is 6.
     * The parse writes in6; a tunnel moves the outer ones to out6. Never zeroed (see
     * PP_PKT_ZERO). */
    u64 in6[4];
    u64 out6[4];
};
/* the bytes of a struct pp_pkt that must be zero when it is not parsed */
#define PP_PKT_ZERO offsetof(struct pp_pkt, in6)


static __always_inline int pp_is_kptr(u64 p)
{
    return p >= 0xffff800000000000ULL;
}

static __always_inline void pp_count(u32 idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        (*c)++;
}

/* The slot: a hash of the data buffer and its end (an entry is only valid for both anyway;
 * the skb address itself may be a BTF pointer, which the verifier lets nobody multiply) */
static __always_inline struct pp_skbinfo *pp_skbslot(u64 head, u32 tail)
{
    u32 idx = (u32)(((head + tail) * 0x9E3779B97F4A7C15ULL) >> 40) & (PP_MAP_ENTRIES - 1);
    return skbids.lookup(&idx);
}

/* (the skb address is left out: it may be a BTF pointer, and a torn skb field only makes a
 * lookup miss) */
static __always_inline u64 pp_skbcheck(u64 head, u64 ts, u64 id, u32 tail)
{
    return head ^ ts ^ ((id << 32 | id >> 32) + tail) ^ 0x5bd1e9955bd1e995ULL;
}

/* The packet key `skb` carried (same buffer, not too long ago) in *id: 0, or -1 if none; -2
 * when that packet is done (see pp_skbmap_close) */
static __always_inline int pp_skbmap_get(u64 skb, u64 head, u32 tail, u64 *id)
{
    struct pp_skbinfo *e = pp_skbslot(head, tail);
    if (!e || e->skb != skb || e->head != head || e->tail != tail)
        return -1;
    u64 ts = e->ts;
    u64 v = e->id;
    u64 check = e->check, want = pp_skbcheck(head, ts, v, tail);
    if (bpf_ktime_get_ns() - ts > PP_MAP_TTL_NS)
        return -1;
    if (check == want) {
        *id = v;
        return 0;
    }
    return check == ~want ? -2 : -1;
}

static __always_inline int pp_armed(void)
{
    u32 zero = 0;
    u32 *a = armed.lookup(&zero);
    return a && *a;
}

static __always_inline void pp_skbmap_put(u64 skb, u64 head, u32 tail, u64 id, u64 now)
{
    u32 zero = 0;
    u32 *a = armed.lookup(&zero);
    if (a && !*a)
        *a = 1;
    struct pp_skbinfo *e = pp_skbslot(head, tail);
    if (!e)
        return;
    e->skb = skb;
    e->head = head;
    e->ts = now;
    e->id = id;
    e->tail = tail;
    e->check = pp_skbcheck(head, now, id, tail);
}

/* the packet in `skb` is done (delivered, dropped): the skb will carry other packets */
static __always_inline void pp_skbmap_del(u64 skb, u64 head, u32 tail)
{
    struct pp_skbinfo *e = pp_skbslot(head, tail);
    if (e && e->skb == skb)
        e->skb = 0;
}

/* The packet in `skb` is done, and says so to a later look at the same skb and buffer: a
 * delivery callback that finds the datagram still queued (the next callbacks of a batch see
 * the same tail) must not deliver it a second time. A lookup for its ID misses (pp_skbmap_get
 * gives -2); a new packet on the same skb and buffer overwrites the slot. */
static __always_inline void pp_skbmap_close(u64 skb, u64 head, u32 tail)
{
    struct pp_skbinfo *e = pp_skbslot(head, tail);
    if (e && e->skb == skb && e->head == head && e->tail == tail)
        e->check = ~pp_skbcheck(head, e->ts, e->id, tail);
}

/* The tracer lost a record of packet `id`: count it, and remember the ID (its verdict will be
 * `incomplete`, not `lost`). */
static __always_inline void pp_lost(u32 id)
{
    pp_count(PP_CNT_LOST);
    u32 key = id;
    u64 *n = lostids.lookup(&key);
    if (n) {
        __sync_fetch_and_add(n, 1);
    } else {
        u64 one = 1;
        lostids.update(&key, &one);
    }
}

/* Waking user space for every record costs more than the record: wake it every
 * PP_WAKEUP_EVERY records per CPU only (it also polls on a timer, so nothing waits long). */
static __always_inline u64 pp_wakeup(void)
{
    u32 idx = PP_CNT_SUBMITTED;
    u64 *c = counters.lookup(&idx);
    if (!c)
        return 0;
    (*c)++;
    return (*c % PP_WAKEUP_EVERY) == 0 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Loads from the header copy (a map value: unaligned loads are fine) in network byte order. */
static __always_inline u16 rd16(u8 *h, u32 off)
{
    return __builtin_bswap16(*(u16 *)(h + off));
}

static __always_inline u32 rd32(u8 *h, u32 off)
{
    return __builtin_bswap32(*(u32 *)(h + off));
}

/* An address, kept in network order (compared with the PP_*IP constants as loaded on x86). */
static __always_inline u32 rdaddr(u8 *h, u32 off)
{
    return *(u32 *)(h + off);
}

/* h + off in the header copy, the offset masked in an asm the compiler cannot see through (it
 * would drop a mask it can prove redundant, and the verifier cannot): see PP_AT_COPY. */
static __always_inline u8 *pp_at_copy(u8 *h, u32 off)
{
    u64 o = off;
    asm volatile("%[o] &= %[m]" : [o] "+r"(o) : [m] "i"(PP_HDR_LEN - 1));
    return h + o;
}

#ifdef PP_DIRECT_PKT
/* bpf_rdonly_cast(addr, PP_BYTES_BTF_ID). The loader (tracer.py) turns this call into the kfunc
 * call; the verifier replaces it by a register move and types the result as an untrusted pointer
 * to a struct that is one PP_BYTES_SIZE-byte array: loads through it are plain loads, which the
 * kernel's exception table makes safe (no helper call, no copy). Only tp_btf programs use it. */
static void *(*pp_cast)(u64 addr, u32 btf_id) = (void *)PP_CAST_CALL;
#define PP_AT(h, addr, off, direct) \
    ((direct) ? (u8 *)pp_cast((addr) + (off), PP_BYTES_BTF_ID) : PP_AT_COPY(h, off))
#else
#define PP_AT(h, addr, off, direct) PP_AT_COPY(h, off)
#endif
/* In the copy, every offset is below PP_HDR_LEN where it is used (each layer checks its own);
 * the mask restates that for the verifier, which loses a check's bound when the compiler moves
 * it to a copy of the register (variable-length Geneve options made that happen), and the
 * scratch is twice PP_HDR_LEN long so that a header read at any masked offset stays inside. */
#define PP_AT_COPY(h, off) pp_at_copy(h, off)

/* Kernel memory reads. `direct` 2: a load through pp_cast (any address: the verifier needs no
 * typed pointer); otherwise a bpf_probe_read_kernel (its result is 0 if it faults). */
#ifdef PP_DIRECT_PKT
#define PP_RD(type, addr, direct) \
    ((direct) == 2 ? *(type *)pp_cast((u64)(addr), PP_BYTES_BTF_ID) : pp_rd_##type((u64)(addr)))
#else
#define PP_RD(type, addr, direct) pp_rd_##type((u64)(addr))
#endif
#define PP_RD_FN(type) \
    static __always_inline type pp_rd_##type(u64 addr) \
    { \
        type v = 0; \
        bpf_probe_read_kernel(&v, sizeof(v), (void *)addr); \
        return v; \
    }
PP_RD_FN(u64)
PP_RD_FN(u32)
PP_RD_FN(u16)

/* ---- The parse, in layers: L2 -> L3 -> L4 -> tunnel (by UDP destination port) -> the inner
 * L2/L3/L4 -> filter -> packet key. Each layer reads from `h` (a copy of the headers) or,
 * `direct`, in place at `addr` (see pp_cast), and returns the next layer's offset. ---- */

/* L2, Ethernet (and one 802.1Q tag if `vlan`) at `eth`, which is `off` from the start: the L3
 * offset; its ethertype in *type. (Given a pointer, not an offset: the tunnel layer already
 * holds one, and each pp_cast is a call that costs registers.) */
static __always_inline u32 pp_l2(u8 *eth, u32 off, int vlan, u16 *type)
{
    u16 proto = rd16(eth, 12);
    off += 14;
    if (vlan && proto == 0x8100) {
        proto = rd16(eth, 16);
        off += 4;
    }
    *type = proto;
    return off;
}

/* L3, IPv4 at `off`: the L4 offset, the protocol in *proto, the addresses in f; 0 if it has no
 * L4 header we read (options shorter than legal, or a later fragment); -1 if not IPv4. */
static __always_inline s32 pp_ipv4(u8 *h, u64 addr, int direct, u32 off, struct pp_flow4 *f,
                                   u8 *proto, u64 *k3)
{
    if (off > PP_HDR_LEN - 20)
        return -1;
    u8 *ip = PP_AT(h, addr, off, direct);
    /* three loads (x86 is little-endian): [vihl tos len id frag] [ttl proto csum saddr] daddr */
    u64 w0 = *(u64 *)ip, w1 = *(u64 *)(ip + 8);
    u8 vihl = w0;
    if ((vihl >> 4) != 4)
        return (vihl >> 4) == 6 ? -2 : -1;   /* -2: IPv6 (no L2 header said which) */
    *proto = w1 >> 8;
    /* header key (PP_KEY_HEADERS): total length, ID, flags + fragment offset (see
     * pp_key_headers). Not TOS (ECN may be marked on the way), TTL or checksum (both change
     * at every router) */
    *k3 = w0 >> 16 | (u64)(vihl & 0xf) << 48;   /* (the header length: see pp_key_headers) */
    /* a non-first fragment has no L4 header (offset: low 5 bits of byte 6, byte 7) */
    if (((w0 >> 48) & 0xff1f) || (vihl & 0xf) < 5)
        return 0;
    f->saddr = w1 >> 32;
    f->daddr = rdaddr(ip, 16);
    return off + (vihl & 0xf) * 4;
}

/* IPv6 extension headers walked before the L4 header (more are counted, not followed) */
#define PP_IP6_EXTS 3

static __always_inline int pp_ip6_ext(u8 nh)
{
    /* hop-by-hop, routing, fragment, destination options, AH */
    return nh == 0 || nh == 43 || nh == 44 || nh == 60 || nh == 51;
}

/* L3, IPv6 at `off`: as pp_ipv4, the addresses to a6[0..3] (saddr, daddr) and zero in f.
 * Walks up to PP_IP6_EXTS extension headers; a longer chain, or one past the bytes we read, is
 * counted (PP_CNT_IP6_EXT_UNWALKED) and returns 0, as does a non-first fragment. */
static __always_inline s32 pp_ipv6(u8 *h, u64 addr, int direct, u32 off, struct pp_flow4 *f,
                                   u64 *a6, u8 *proto, u64 *k3)
{
    if (off > PP_HDR_LEN - 40)
        return -1;
    u8 *ip = PP_AT(h, addr, off, direct);
    if ((ip[0] >> 4) != 6)
        return -1;
    /* header key: the flow label (stands in for IPv4's ID; not the traffic class) and the
     * payload length, as loaded */
    *k3 = (*(u32 *)ip & 0xffff0f00) | ((u64)*(u16 *)(ip + 4) << 32);
    u8 nh = ip[6];
    a6[0] = *(u64 *)(ip + 8);
    a6[1] = *(u64 *)(ip + 16);
    a6[2] = *(u64 *)(ip + 24);
    a6[3] = *(u64 *)(ip + 32);
    f->saddr = 0;
    f->daddr = 0;
    off += 40;
    #pragma clang loop unroll(disable)
    for (int i = 0; i < PP_IP6_EXTS; i++) {
        if (!pp_ip6_ext(nh))
            break;
        if (off > PP_HDR_LEN - 8)
            break;
        u8 *x = PP_AT(h, addr, off, direct);
        u32 w = *(u32 *)x;      /* next header, length, (fragment: offset and flags) */
        if (nh == 44 && (__builtin_bswap32(w) & 0xfff8))
            return 0;           /* a non-first fragment: no L4 header */
        /* length without a branch per type (each doubles the verifier's paths): AH counts
         * 4-byte words after the first two, the others 8-byte units after the first (a
         * fragment header's length byte is reserved, 0: 8 bytes) */
        u32 ah = nh == 51;
        off += (((w >> 8) & 0xff) + 1 + ah) << (3 - ah);
        nh = w;
    }
    if (pp_ip6_ext(nh) || off > PP_HDR_LEN - 8) {
        pp_count(PP_CNT_IP6_EXT_UNWALKED);
        return 0;
    }
    *proto = nh;
    return off;
}

/* L3 by ethertype (no L2 header: 0x0800, and pp_ipv4 tells IPv6 by its version): the L4 offset
 * as pp_ipv4, the family in *fam. IPv6 is one branch off the IPv4 path. */
static __always_inline s32 pp_l3(u8 *h, u64 addr, int direct, u16 type, u32 off,
                                 struct pp_flow4 *f, u64 *a6, u8 *proto, u8 *fam, u64 *k3)
{
#ifdef PP_NO_IPV6
    /* no IPv6 flow can match the filter on either level (program.py): an IPv6 packet is not
     * parsed (as an unparsed one, the skb map alone may still know it) */
    *fam = 4;
    if (type != 0x0800)
        return -1;
    s32 r4 = pp_ipv4(h, addr, direct, off, f, proto, k3);
    return r4 == -2 ? -1 : r4;
#else
    if (type == 0x0800) {
        s32 r = pp_ipv4(h, addr, direct, off, f, proto, k3);
        if (r != -2) {
            *fam = 4;
            return r;
        }
    } else if (type != 0x86dd) {
        return -1;
    }
    *fam = 6;
    return pp_ipv6(h, addr, direct, off, f, a6, proto, k3);
#endif
}

/* L4 at `off`: the header's length (UDP 8; TCP its data offset) with the ports in f, for UDP
 * (always: tunnels are UDP) and TCP (when traced, PP_PROTO_TCP); 0 for a protocol not traced;
 * -1 if the header lies past the bytes we have. Header key (PP_KEY_HEADERS) in k4[0..1]: UDP's
 * length; TCP's sequence and acknowledgement numbers, data offset and flags. Not the checksum:
 * with checksum offload the sender's stack sees a partial one (docs/DESIGN.md). */
static __always_inline int pp_l4(u8 *h, u64 addr, int direct, u8 proto, u32 off,
                                 struct pp_flow4 *f, u64 *k4)
{
    if (proto == 17 /* IPPROTO_UDP */) {
        if (off > PP_HDR_LEN - 8)
            return -1;
        u8 *u = PP_AT(h, addr, off, direct);
        f->ports = *(u32 *)u;   /* sport, dport in network order */
#ifdef PP_KEY_HEADERS
        k4[0] = *(u16 *)(u + 4);
        k4[1] = 0;
#endif
        return 8;
    }
#ifdef PP_PROTO_TCP
    if (proto == 6 /* IPPROTO_TCP */) {
        if (off > PP_HDR_LEN - 20)
            return -1;
        u8 *t = PP_AT(h, addr, off, direct);
        f->ports = *(u32 *)t;
        u16 offflags = *(u16 *)(t + 12);   /* data offset (high 4 bits of byte 12), flags */
#ifdef PP_KEY_HEADERS
        k4[0] = *(u64 *)(t + 4);           /* seq, ack */
        k4[1] = offflags;
#endif
        u32 len = (offflags >> 2) & 0x3c;
        return len < 20 ? 20 : len;
    }
#endif
    return 0;
}

static __always_inline u16 pp_dport(struct pp_flow4 *f)
{
    return __builtin_bswap16(f->ports >> 16);
}

/* Tunnels, by outer UDP destination port (either port may be left out: not parsed). */
static __always_inline u8 pp_tunnel_of(struct pp_flow4 *f)
{
#if defined(PP_VXLAN_PORT) || defined(PP_GENEVE_PORT)
    u16 dport = pp_dport(f);
#endif
#ifdef PP_VXLAN_PORT
    if (dport == PP_VXLAN_PORT)
        return PP_TUN_VXLAN;
#endif
#ifdef PP_GENEVE_PORT
    if (dport == PP_GENEVE_PORT)
        return PP_TUN_GENEVE;
#endif
    return PP_TUN_NONE;
}

/* Geneve (RFC 8926) at `off`: ver (2 bits, 0) + option length (6 bits, 4-byte words), flags,
 * protocol type (0x6558: Ethernet), VNI (24 bits), reserved, then the options. As
 * pp_tunnel_hdr; options running past the bytes we read are counted
 * (PP_CNT_GENEVE_OPTS_UNREAD), the packet is then unparsed. */
static __always_inline s32 pp_geneve(u8 *h, u64 addr, int direct, u32 off, u32 *vni,
                                     u8 **inner)
{
    if (off > PP_HDR_LEN - 8)
        return -1;
    u8 *g = PP_AT(h, addr, off, direct);
    u32 w0 = *(u32 *)g, w1 = *(u32 *)(g + 4);
    if ((w0 & 0xc0) || (w0 >> 16) != 0x5865)   /* version 0; bytes 2-3: 0x6558 */
        return 0;
    off += 8 + (w0 & 0x3f) * 4;
    if (off > PP_HDR_LEN - 14) {
        pp_count(PP_CNT_GENEVE_OPTS_UNREAD);
        return -1;
    }
    *vni = __builtin_bswap32(w1) >> 8;
    *inner = PP_AT(h, addr, off, direct);
    return off;
}

/* The tunnel header of `type` at `off` (behind the outer UDP header): the offset of the inner
 * Ethernet header (*inner: a pointer to it), the VNI in *vni; 0 if not one we follow; -1 if
 * past the bytes we have. */
static __always_inline s32 pp_tunnel_hdr(u8 *h, u64 addr, int direct, u8 type, u32 off,
                                         u32 *vni, u8 **inner)
{
#ifdef PP_GENEVE_PORT
    if (type == PP_TUN_GENEVE)
        return pp_geneve(h, addr, direct, off, vni, inner);
#endif
    /* VXLAN (RFC 7348): flags (0x08: VNI valid), 3 reserved, VNI (24 bits), 1 reserved.
     * The bound covers the inner Ethernet header's type too. */
    if (off > PP_HDR_LEN - 30)
        return -1;
    u8 *vx = PP_AT(h, addr, off, direct);
    u32 flags_vni = *(u32 *)(vx + 4);
    if (!(vx[0] & 0x08))
        return 0;
    *vni = __builtin_bswap32(flags_vni) >> 8;
    *inner = vx + 8;
    return off + 8;
}

/* The filter on the outer (underlay) flow of an encapsulated packet. An IPv4 filter address
 * (PP_SHOST) rejects an IPv6 flow by its zero f->saddr; an IPv6 one (PP_SHOST6_0/_1: the
 * address's two halves as loaded) checks the family and a6. */
static __always_inline int pp_match_outer(struct pp_flow4 *f, u8 fam, u64 *a6)
{
#ifdef PP_SHOST
    if (f->saddr != PP_SHOST)
        return 0;
#endif
#ifdef PP_DHOST
    if (f->daddr != PP_DHOST)
        return 0;
#endif
#ifdef PP_SHOST6_0
    if (fam != 6 || a6[0] != PP_SHOST6_0 || a6[1] != PP_SHOST6_1)
        return 0;
#endif
#ifdef PP_DHOST6_0
    if (fam != 6 || a6[2] != PP_DHOST6_0 || a6[3] != PP_DHOST6_1)
        return 0;
#endif
    return 1;
}

/* The filter on the traced (inner, or only) flow (addresses as in pp_match_outer). */
static __always_inline int pp_match_inner(struct pp_flow4 *f, u8 fam, u64 *a6)
{
#ifdef PP_SIP
    if (f->saddr != PP_SIP)
        return 0;
#endif
#ifdef PP_DIP
    if (f->daddr != PP_DIP)
        return 0;
#endif
#ifdef PP_SIP6_0
    if (fam != 6 || a6[0] != PP_SIP6_0 || a6[1] != PP_SIP6_1)
        return 0;
#endif
#ifdef PP_DIP6_0
    if (fam != 6 || a6[2] != PP_DIP6_0 || a6[3] != PP_DIP6_1)
        return 0;
#endif
#ifdef PP_PORT
    if (pp_dport(f) != PP_PORT)
        return 0;
#endif
    return 1;
}

#ifdef PP_KEY_HEADERS
static __always_inline u64 pp_mix(u64 h, u64 v)
{
    h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 31);
}

/* The packet key from the traced flow's headers (PP_KEY_HEADERS): a 64-bit hash of the fields
 * that stay the same from the packet's first sighting to its last (docs/DESIGN.md, "Header
 * keys"): addresses, protocol, ports, the L3 word k3 (pp_ipv4, pp_ipv6) and the L4 words k4
 * (pp_l4). Never 0. */
static __always_inline u32 pp_key_headers(struct pp_flow4 *f, u8 fam, u64 *a6, u8 proto,
                                          u64 k3, u64 *k4)
{
    u64 h = 0x6a09e667f3bcc908ULL ^ ((u64)fam << 8 | proto);
    if (fam == 6) {
        h = pp_mix(h, a6[0]);
        h = pp_mix(h, a6[1]);
        h = pp_mix(h, a6[2]);
        h = pp_mix(h, a6[3]);
    } else {
        h = pp_mix(h, (u64)f->saddr << 32 | f->daddr);
    }
    /* UDP: not the L3 length nor IPv4's more-fragments flag, which reassembly changes (a first
     * fragment and its reassembled datagram have one key; UDP's length covers the length).
     * TCP: the L3 length with the data offset gives the payload length. */
#ifdef PP_PROTO_TCP
    if (proto == 17) {
#else
    {   /* (only UDP is traced) */
#endif
        k3 &= fam == 6 ? 0x00000000ffffffffULL : 0x0000ffdfffff0000ULL;
    }
#ifdef PP_PROTO_TCP
    else {
        /* A TCP segment that occupies sequence space (SYN, FIN or data) is keyed by its bytes
         * of the stream: not the IP ID (IPv6: the flow label) nor the ACK number, which a
         * retransmission of it changes, so that a retransmission has its first copy's key
         * (user space marks it). A pure ACK keeps both: the receiver's ACKs share seq, flags
         * and length. k4[1]: TCP bytes 12-13 as loaded (data offset, flags). */
        u32 of = (u32)k4[1];
        u32 plen = fam == 6 ? __builtin_bswap16((u16)(k3 >> 32))
                            : __builtin_bswap16((u16)k3) - ((k3 >> 48) & 0xf) * 4;
        int seqspace = ((of >> 8) & 3) || plen > ((of & 0xf0) >> 2);
        if (fam == 6)
            k3 &= seqspace ? 0x0000ffff00000000ULL : 0x0000ffffffffffffULL;
        else
            k3 &= seqspace ? 0x0000ffdf0000ffffULL : 0x0000ffdfffffffffULL;
        if (seqspace)
            k4[0] &= 0xffffffffULL;   /* the sequence number (its 4 bytes as loaded) */
    }
#endif
    h = pp_mix(h, (u64)f->ports << 32 | (u32)k4[1]);
    h = pp_mix(h, k3);
    h = pp_mix(h, k4[0]);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    /* 32 bits kept: see pp_pkt.id (docs/DESIGN.md, "Header keys") */
    u32 k = h;
    return k ? k : 1;
}
#endif

/* The packet key: the ID at PP_ID_OFFSET of the payload, which starts at `pay`; `linear` bytes
 * from the start are the skb's linear data. (A header fingerprint, for traffic that carries no
 * ID, goes here next.) */
static __always_inline int pp_key_payload(u8 *h, u64 addr, int direct, u32 pay, u32 linear,
                                          u32 *id)
{
    pay += PP_ID_OFFSET;
    if (pay > PP_HDR_LEN - 4)
        return PP_UNPARSED;
    if (pay + 4 > linear) {
#ifdef PP_PAGED
        if (pay >= linear) {
            *id = pay - linear;   /* offset into the paged data, for pp_paged_id */
            return PP_IN_FRAGS;
        }
#endif
        pp_count(PP_CNT_UNREACHABLE);
        return PP_UNPARSED;
    }
    u8 *v = PP_AT(h, addr, pay, direct);
#if PP_ID_BIG
    *id = rd32(v, 0);
#else
    *id = rdaddr(v, 0);
#endif
    return PP_MATCH;
}

/* Parse the headers at the start of `h` (a copy) or `addr` (`direct`: in place), l2: Ethernet
 * first, else IPv4 first. `linear` is how many bytes from there are the skb's linear data.
 * Most packets a tracer sees are not traced, so the filter decides before anything is kept:
 * *p is written only when the result is not PP_NOMATCH (then every field of it), and until then
 * the parse lives in registers (a zeroed struct kept across the in-place reads cost ~40
 * instructions of spills per hook). */
static __always_inline int pp_parse(u8 *h, u64 addr, int direct, int l2, u32 linear,
                                    struct pp_pkt *p)
{
    u32 off = 0;
    u16 type = 0x0800;
    if (linear < 28)
        goto unparsed;
    if (l2)
        off = pp_l2(PP_AT(h, addr, 0, direct), 0, 1, &type);
    struct pp_flow4 f, o = {};
    u8 proto = 0, fam = 0, ofam = 0;
    u64 k3 = 0, k4[2] = {};
    s32 l4 = pp_l3(h, addr, direct, type, off, &f, p->in6, &proto, &fam, &k3);
    if (l4 < 0)
        goto unparsed;
    if (l4 == 0)
        return PP_NOMATCH;
    l4 &= 2 * PP_HDR_LEN - 1;   /* (already below that: a bound for the verifier) */
    s32 l4len = pp_l4(h, addr, direct, proto, l4, &f, k4);
    if (l4len < 0)
        goto unparsed;
    if (l4len == 0)
        return PP_NOMATCH;
    u32 vni = 0;
#ifdef PP_PROTO_TCP
    u8 tun = proto == 17 ? pp_tunnel_of(&f) : PP_TUN_NONE;
#else
    u8 tun = pp_tunnel_of(&f);   /* (only UDP got here) */
#endif
    if (tun != PP_TUN_NONE) {
        /* what we parsed is the outer flow; the inner Ethernet + IPv4/IPv6 + UDP follow */
        if (!pp_match_outer(&f, fam, p->in6))
            return PP_NOMATCH;
        u8 *eth;
        s32 in = pp_tunnel_hdr(h, addr, direct, tun, l4 + 8, &vni, &eth);
        if (in < 0)
            goto unparsed;
        if (in == 0)
            return PP_NOMATCH;
        o = f;
        ofam = fam;
#ifndef PP_NO_IPV6
        if (fam == 6) {
            p->out6[0] = p->in6[0];
            p->out6[1] = p->in6[1];
            p->out6[2] = p->in6[2];
            p->out6[3] = p->in6[3];
        }
#endif
        in = pp_l2(eth, in, 0, &type);
#ifdef PP_NO_IPV6
        if (type != 0x0800)
#else
        if (type != 0x0800 && type != 0x86dd)
#endif
            return PP_NOMATCH;
        l4 = pp_l3(h, addr, direct, type, in, &f, p->in6, &proto, &fam, &k3);
        if (l4 <= 0)
            return PP_NOMATCH;
        l4 &= 2 * PP_HDR_LEN - 1;
        l4len = pp_l4(h, addr, direct, proto, l4, &f, k4);
        if (l4len < 0)
            goto unparsed;
        if (l4len == 0)
            return PP_NOMATCH;
    }
#ifndef PP_PROTO_UDP
    if (proto == 17)
        return PP_NOMATCH;   /* (UDP is parsed for the tunnels) */
#endif
    /* The filter applies to the packet as first seen: a flow it rejects may be a traced packet
     * after NAT (DNAT/REDIRECT, SNAT). Then *p is filled too and the skb map decides
     * (PP_REWRITTEN; see pp_identify). */
    int rc = PP_MATCH;
    if (!pp_match_inner(&f, fam, p->in6)) {
        if (!pp_armed())
            return PP_NOMATCH;   /* nothing in the skb map yet: not a rewritten traced one */
        rc = PP_REWRITTEN;
    }
    /* a packet of the traced flow (or maybe one): from here on every result fills *p */
    p->in = f;
    p->out = o;
    p->vni = vni;
    p->family = fam;
    p->tun = tun;
    p->ofamily = ofam;
    p->proto = proto;
    if (rc != PP_MATCH) {
        p->id = 0;
        return rc;
    }
#ifdef PP_KEY_HEADERS
    p->id = pp_key_headers(&f, fam, p->in6, proto, k3, k4);
    return PP_MATCH;
#else
    u32 id = 0;
#ifdef PP_PROTO_TCP
    u32 pay = l4 + (l4len & 0x3f);
#else
    u32 pay = l4 + 8;   /* a constant where only UDP is traced: fewer verifier states */
#endif
    rc = pp_key_payload(h, addr, direct, pay, linear, &id);
    p->id = id;
    return rc;
#endif
unparsed:
    __builtin_memset(p, 0, PP_PKT_ZERO);
    return PP_UNPARSED;
}

#ifdef PP_PAGED
/* page_offset_base and vmemmap_base: [0], [1] (0 until known) */
BPF_ARRAY(pagebases, u64, 2);

#ifdef PP_LEARN_BASES
/* Learn the two randomized bases from a slab (of the socket's kmem_cache, or of a cache after
 * it in the list of caches, whichever first has a partial slab): a struct slab lives in
 * vmemmap (which starts at a 1 GiB boundary and, below 64 GiB of RAM, spans less than 1 GiB) and
 * its freelist points into the slab's own memory in the direct map (which also starts at a
 * 1 GiB boundary). The slab is checked to belong to that cache before it is trusted. */
static __always_inline void pp_learn_bases(u64 sk)
{
    if (!pp_is_kptr(sk))
        return;
    u64 prot = 0, cache = 0, node = 0, first = 0, freelist = 0, owner = 0;
    bpf_probe_read_kernel(&prot, sizeof(prot), (void *)(sk + PP_OFF_SK_PROT));
    if (!pp_is_kptr(prot))
        return;
    bpf_probe_read_kernel(&cache, sizeof(cache), (void *)(prot + PP_OFF_PROTO_SLAB));
    if (!pp_is_kptr(cache))
        return;
    /* this cache's node-0 partial list may be empty: walk on through the list of caches */
    u64 slab = 0;
    #pragma clang loop unroll(disable)
    for (int i = 0; i < 256; i++) {
        node = 0;
        first = 0;
        bpf_probe_read_kernel(&node, sizeof(node), (void *)(cache + PP_OFF_CACHE_NODE));
        if (pp_is_kptr(node)) {
            u64 head = node + PP_OFF_NODE_PARTIAL;
            bpf_probe_read_kernel(&first, sizeof(first), (void *)head);
            if (pp_is_kptr(first) && first != head) {
                slab = first - PP_OFF_SLAB_LIST;
                bpf_probe_read_kernel(&owner, sizeof(owner),
                                      (void *)(slab + PP_OFF_SLAB_CACHE));
                bpf_probe_read_kernel(&freelist, sizeof(freelist),
                                      (void *)(slab + PP_OFF_SLAB_FREELIST));
                if (owner == cache && pp_is_kptr(freelist))
                    break;
            }
        }
        slab = 0;
        u64 next = 0;
        bpf_probe_read_kernel(&next, sizeof(next), (void *)(cache + PP_OFF_CACHE_LIST));
        if (!pp_is_kptr(next))
            return;
        cache = next - PP_OFF_CACHE_LIST;
    }
    if (!slab)
        return;
    u64 vm = slab & ~((1ULL << 30) - 1);
    u64 pfn = (slab - vm) >> PP_PAGE_STRUCT_SHIFT;
    u64 b = (freelist - (pfn << PP_PAGE_SHIFT)) & ~((1ULL << 30) - 1);
    if (!pp_is_kptr(b))
        return;
    u32 k0 = 0, k1 = 1;
    pagebases.update(&k1, &vm);
    pagebases.update(&k0, &b);
}

/* Attached only while pktpath starts: it sends one datagram from its own socket, this learns the
 * bases from that socket's cache, and is detached again (tracer.py, Tracer._learn_page_bases). */
int pp_learn(struct bpf_raw_tracepoint_args *ctx)
{
    pp_learn_bases(ctx->args[0]);
    return 0;
}
#endif

/* The ID at offset `poff` of the skb's paged data (its first page fragment): GSO senders
 * (UDP_SEGMENT), GRO and header-splitting drivers leave only the headers in the linear part.
 * Only the first fragment is read, and only a page (not a device-memory net_iov). */
static __always_inline int pp_paged_id(u64 head, u32 end, u32 poff, u32 *id)
{
    u64 sh[(PP_SHINFO_SPAN_LEN + 7) / 8];
    if (bpf_probe_read_kernel(sh, sizeof(sh), (void *)(head + end + PP_SHINFO_SPAN_START)))
        return -1;
    u8 *b = (u8 *)sh - PP_SHINFO_SPAN_START;
    if (b[PP_OFF_SHINFO_NR_FRAGS] == 0)
        return -1;
    u64 page = *(u64 *)(b + PP_OFF_SHINFO_FRAGS + PP_OFF_FRAG_PAGE);
    u32 flen = *(u32 *)(b + PP_OFF_SHINFO_FRAGS + PP_OFF_FRAG_LEN);
    u32 foff = *(u32 *)(b + PP_OFF_SHINFO_FRAGS + PP_OFF_FRAG_OFF);
    if ((page & 1) || !pp_is_kptr(page) || poff + 4 > flen)
        return -1;
    u64 base = 0, vmemmap = 0;
#ifndef PP_LEARN_BASES
    bpf_probe_read_kernel(&base, sizeof(base), (void *)PP_ADDR_PAGE_OFFSET_BASE);
    bpf_probe_read_kernel(&vmemmap, sizeof(vmemmap), (void *)PP_ADDR_VMEMMAP_BASE);
#else
    u32 k0 = 0, k1 = 1;
    u64 *pb = pagebases.lookup(&k0), *pv = pagebases.lookup(&k1);
    if (pb && pv) {
        base = *pb;
        vmemmap = *pv;
    }
#endif
    if (!base || page < vmemmap || page - vmemmap >= (1ULL << 30))
        return -1;
    u64 pfn = (page - vmemmap) >> PP_PAGE_STRUCT_SHIFT;
    u64 addr = base + (pfn << PP_PAGE_SHIFT) + foff + poff;
    u32 v = 0;
    if (bpf_probe_read_kernel(&v, sizeof(v), (void *)addr))
        return -1;
    *id = PP_ID_BIG ? rd32((u8 *)&v, 0) : v;   /* as pp_parse reads it */
    return 0;
}
#endif

/* The skb fields we need, copied in one read of the span [PP_SKB_SPAN_START, +PP_SKB_SPAN_LEN). */
#define SKBF(buf, type, off) (*(type *)((u8 *)(buf) + (off) - PP_SKB_SPAN_START))
#define SKBF_DEV(buf, type, off) (*(type *)((u8 *)(buf) + (off) - PP_DEV_SPAN_START))

static __always_inline u32 pp_netns_of_net(u64 net, int direct)
{
    return pp_is_kptr(net) ? PP_RD(u32, net + PP_OFF_NET_INUM, direct) : 0;
}

/* Where the packet is: netns, device and (for a socket) local port. On a socket queue skb->dev
 * is not valid (UDP reuses it), so the socket's netns is used instead. */
static __always_inline void pp_where(u64 d, u64 sk, u32 *netns, u32 *ifindex, char *dev,
                                     u16 *port, int direct)
{
    *netns = 0;
    *ifindex = 0;
    *port = 0;
    __builtin_memset(dev, 0, PP_DEV_LEN);
    if (sk) {
        *port = PP_RD(u16, sk + PP_OFF_SK_NUM, direct);
        *netns = pp_netns_of_net(PP_RD(u64, sk + PP_OFF_SK_NET, direct), direct);
        return;
    }
    if (!pp_is_kptr(d))
        return;
#ifdef PP_DIRECT_PKT
    if (direct) {
        /* d is a plain address here in every case: read through pp_cast */
        u8 *dv = (u8 *)pp_cast(d + PP_OFF_DEV_NAME, PP_BYTES_BTF_ID);
        *(u64 *)dev = *(u64 *)dv;
        *(u64 *)(dev + 8) = *(u64 *)(dv + 8);
        *ifindex = PP_RD(u32, d + PP_OFF_DEV_IFINDEX, 2);
        *netns = pp_netns_of_net(PP_RD(u64, d + PP_OFF_DEV_NET, 2), 2);
        return;
    }
#endif
    /* name, ifindex and nd_net in one read of the net_device span */
    u64 span[(PP_DEV_SPAN_LEN + 7) / 8];
    if (bpf_probe_read_kernel(span, sizeof(span), (void *)(d + PP_DEV_SPAN_START)))
        return;
    __builtin_memcpy(dev, (u8 *)span + PP_OFF_DEV_NAME - PP_DEV_SPAN_START, PP_DEV_LEN);
    *ifindex = SKBF_DEV(span, u32, PP_OFF_DEV_IFINDEX);
    *netns = pp_netns_of_net(SKBF_DEV(span, u64, PP_OFF_DEV_NET), 0);
}

/* A struct pp_flow record from the parse's flow (family 0: not parsed, all zero; 6: the
 * addresses from a6). An IPv4 address and the 4 zero bytes after it are one 8-byte store. */
static __always_inline void pp_flow_put(struct pp_flow *r, struct pp_flow4 *f, u64 *a6,
                                        u8 family, u8 proto)
{
#ifndef PP_NO_IPV6
    if (family == 6) {
        r->saddr[0] = a6[0];
        r->saddr[1] = a6[1];
        r->daddr[0] = a6[2];
        r->daddr[1] = a6[3];
    } else
#endif
    {
        r->saddr[0] = f->saddr;
        r->saddr[1] = 0;
        r->daddr[0] = f->daddr;
        r->daddr[1] = 0;
    }
    r->family = family;
    r->protocol = family ? proto : 0;
    r->sport = __builtin_bswap16(f->ports);
    r->dport = __builtin_bswap16(f->ports >> 16);
}

#ifdef PP_SUMMARY

/* Whether the parse's flow differs from record r (NAT rewrote addresses or ports). */
static __always_inline int pp_flow_differs(struct pp_flow *r, struct pp_flow4 *f, u64 *a6,
                                           u8 family)
{
    if (r->family != family || r->sport != __builtin_bswap16(f->ports) ||
        r->dport != __builtin_bswap16(f->ports >> 16))
        return 1;
#ifndef PP_NO_IPV6
    if (family == 6)
        return r->saddr[0] != a6[0] || r->saddr[1] != a6[1] || r->daddr[0] != a6[2] ||
               r->daddr[1] != a6[3];
#endif
    return r->saddr[0] != f->saddr || r->daddr[0] != f->daddr;
}

/* The IPv4 addresses of a parsed flow as one word (as loaded; IPv6: 0, see pp_flow4). */
static __always_inline u64 pp_kaddrs(struct pp_flow4 *f)
{
    return (u64)f->daddr << 32 | f->saddr;
}

/* Whether a sighting's parsed flow differs from its path's first one (NAT rewrote addresses or
 * ports): the IPv4 addresses and ports against the path's copy of them (one cache line the hop
 * touches anyway; no byte swaps); an IPv6 flow (kaddrs 0) against the record. */
static __always_inline int pp_flow_moved(struct pp_path *v, struct pp_pkt *p)
{
    u64 a = pp_kaddrs(&p->in);
    if (v->kaddrs != a || v->kports != p->in.ports)
        return 1;
#ifndef PP_NO_IPV6
    if (!a)
        return pp_flow_differs(&v->inner, &p->in, p->in6, p->family);
#endif
    return 0;
}

/* Emit path `v` (its hops up to `idx` + 1) to user space. */
static __always_inline void pp_emit(struct pp_path *v, u32 idx, u64 id)
{
    /* emit only the hops recorded, not the empty slots */
    u64 n = (u64)idx + 1;
    if (n > PP_MAX_HOPS)
        n = PP_MAX_HOPS;
    u64 size = offsetof(struct pp_path, hops) + n * sizeof(struct pp_hop);
    asm volatile("" : "+r"(size));  /* bound the register the helper call uses */
    if (size > sizeof(struct pp_path))
        size = sizeof(struct pp_path);
    u64 wake = pp_wakeup();
    if (events.ringbuf_output(v, size, wake) < 0) {
        if (rescue.ringbuf_output(v, size, BPF_RB_FORCE_WAKEUP) < 0)
            pp_lost(id);
        else
            pp_count(PP_CNT_RESCUED);
    }
}

/* The open path of packet key->id that this sighting continues (key->skb: the skb it is on;
 * set to the path's key when found), or NULL: the sighting begins a new packet.
 * - On the path's own skb: it continues that path, unless it is back at the hook + device the
 *   path began at: that skb now carries another packet of the same ID (the first one's end
 *   went unseen). The old path is then emitted as it stands, open: user space reports it like
 *   a path that went quiet (`lost` at its last sighting, or `incomplete`), never delivered.
 * - On another skb: the path of that ID begun last (pathskb), unless this is the device that
 *   path began at (another packet of the ID: a second sender's, or the next identical one). A
 *   delivery or drop on another skb ends that path only if the path is on that skb by now, or
 *   it is the packet this CPU saw pass moments ago (pp_lastseen): a datagram of an older
 *   packet of the ID, still queued, must not deliver a newer one. `exact`: no other skb. */
static __always_inline struct pp_path *pp_path_of(struct pp_pathkey *key, u16 hook, u8 kind,
                                                  u64 netdev, u64 now, int exact)
{
    struct pp_path *v = paths.lookup(key);
    if (v) {
        if (kind != PP_KIND_PASS || netdev != v->first_dev || hook != v->hops[0].hook)
            return v;
        u32 idx = v->nhops;
        if (idx > PP_MAX_HOPS)
            idx = PP_MAX_HOPS;
        if (idx)
            pp_emit(v, idx - 1, key->id);
        paths.delete(key);
        return 0;
    }
    if (exact)
        return 0;
    struct pp_pathskb *first = pp_pathskb_slot(key->id);
    if (!first || first->id != key->id || first->skb == key->skb)
        return 0;
    struct pp_pathkey k = {.skb = first->skb, .id = key->id};
    v = paths.lookup(&k);
    if (!v)
        return 0;
    if (kind == PP_KIND_PASS) {
        /* on the device where that path began: another packet of the ID. (The device, not the
         * hook + device: two packets of one ID sent at once on two CPUs both begin there, and
         * the second may look before the first has written its first hop; first_dev is set
         * before the path is published. Seen as a merged 17-hop path, ~1 run in 16.) */
        if (netdev == v->first_dev)
            return 0;
    } else if (v->last_skb != key->skb) {
        u32 zero = 0;
        struct pp_lastseen *ls = lastseen.lookup(&zero);
        if (!ls || ls->skb != k.skb || ls->id != k.id || now - ls->ts > PP_LASTSEEN_NS)
            return 0;
    }
    key->skb = k.skb;
    return v;
}

/* Append this sighting to the packet's path; on delivery or drop, emit the whole path.
 * `origin`: the path's key skb when the caller knows it (a delivery of the packet last seen),
 * else 0 (this skb's). `only_open` 1: a datagram deeper in a socket queue is delivered only
 * while its path is open on this skb (PP_H_CLOSED if not). 2: the sighting was identified by
 * the skb map alone (not parsed, or a flow the filter rejects): it continues an open path (on
 * any skb) but never begins one. The map keeps every skb + buffer a packet travelled on, and
 * only the last is closed when the packet is done: an skb and buffer recycled for another
 * segment within PP_MAP_TTL_NS (a TCP retransmission's clone, dropped, then its skb and the
 * buffer its head was copied from reused for the server's ACK) would otherwise begin a packet
 * of the old key with the new segment's flow. Nor does a rewritten sighting whose ports are
 * the path's, swapped, continue it: that is a reply on a recycled skb, never a NAT rewrite. */
static __always_inline int pp_summary(void *ctx, u64 skb, u16 hook, u8 kind, u64 location,
                                      u32 reason, u64 sk, struct pp_pkt *p, u8 flags, u64 now,
                                      u64 head, u32 tail, int map_it, u64 netdev, int direct,
                                      u64 origin, int only_open)
{
    u32 id = p->id;
    struct pp_pathkey key = {.skb = origin ? origin : skb, .id = p->id};
    struct pp_path *v = pp_path_of(&key, hook, kind, netdev, now, only_open == 1);
    if (!v) {
        if (only_open == 2)
            return 0;
        if (only_open)
            return PP_H_CLOSED;   /* already delivered (or never seen): so are older ones */
        /* a datagram still queued whose packet was delivered already (the next callbacks of a
         * batch see the same tail): not a second delivery */
        u64 was;
        if (kind == PP_KIND_DELIVER && skb && pp_skbmap_get(skb, head, tail, &was) == -2)
            return PP_H_CLOSED;
        u32 zero = 0;
        struct pp_path *init = pathinit.lookup(&zero);
        if (!init)
            return 0;
        init->first_ts = now;
        init->skb = key.skb;
        init->first_dev = netdev;
        init->id = id;
        pp_flow_put(&init->inner, &p->in, p->in6, p->family, p->proto);
        init->kaddrs = pp_kaddrs(&p->in);
        init->kports = p->in.ports;
        init->stack_id = -1;
        v = paths.lookup_or_try_init(&key, init);
        if (!v) {
            pp_count(PP_CNT_LOST_PATHS_FULL);
            pp_lost(id);
            return 0;
        }
        struct pp_pathskb *ps = pp_pathskb_slot(key.id);
        if (ps) {
            ps->id = key.id;
            ps->skb = key.skb;
        }
    }
    if (only_open == 2 && (flags & PP_F_REWRITTEN) && p->proto == v->inner.protocol &&
        v->inner.sport == __builtin_bswap16(p->in.ports >> 16) &&
        v->inner.dport == __builtin_bswap16(p->in.ports))
        return 0;
    v->last_ts = now;
    /* skb -> ID for the hooks that cannot parse the packet: written when the packet shows up
     * on another skb or data buffer, not at every hop */
    if (map_it && (v->last_skb != skb || v->last_head != head || v->last_tail != tail)) {
        pp_skbmap_put(skb, head, tail, id, now);
        v->last_skb = skb;
        v->last_head = head;
        v->last_tail = tail;
    }
    if (p->tun != PP_TUN_NONE && !v->ktun) {
        v->ktun = 1;
        v->tun.type = p->tun;
        v->tun.vni = p->vni;
        pp_flow_put(&v->tun.outer, &p->out, p->out6, p->ofamily, 17);
    }
    /* Claim a hop slot. bcc's LLVM cannot use an atomic fetch-add's result, so read then add:
     * two CPUs racing on one packet may claim the same slot; the loser's hop is then missing
     * and the empty slot it leaves is not marked PP_F_HOP_SET, so user space skips it. */
    u32 idx = v->nhops;
    __sync_fetch_and_add(&v->nhops, 1);
    /* NAT: the first sighting whose (parsed) flow differs from the path's first one */
    if (p->family && idx && pp_flow_moved(v, p) && !v->nat_hop) {
        v->nat_hop = idx;
        pp_flow_put(&v->nat, &p->in, p->in6, p->family, p->proto);
    }
    u16 port = 0;
    if (idx < PP_MAX_HOPS) {
        struct pp_hop *h = &v->hops[idx];
        h->dt = now - v->first_ts;
        h->hook = hook;
        h->kind = kind;
        h->flags = flags | PP_F_HOP_SET;
        h->cpu = bpf_get_smp_processor_id();
        pp_where(netdev, sk, &h->netns, &h->ifindex, h->dev, &port, direct);
        if (kind == PP_KIND_PASS) {
            u32 zero = 0;
            struct pp_lastseen *ls = lastseen.lookup(&zero);
            if (ls) {
                ls->ts = now;
                ls->skb = key.skb;
                ls->id = id;
                ls->netns = h->netns;
            }
        }
    } else {
        u32 n = 0;
        char dev[PP_DEV_LEN];
        pp_where(netdev, sk, &n, &n, dev, &port, direct);
    }
    if (kind == PP_KIND_PASS)
        return 0;
    /* the packet is done: its skbs and buffers will be reused for other packets */
    u64 last = v->last_skb;
    if (last)
        pp_skbmap_close(last, v->last_head, v->last_tail);
    if (skb && (skb != last || head != v->last_head || tail != v->last_tail)) {
        pp_skbmap_put(skb, head, tail, id, now);
        pp_skbmap_close(skb, head, tail);
    }
    v->final_kind = kind;
    v->location = location;
    v->reason = reason;
    v->port = port;
#ifdef PP_STACKS
    if (kind == PP_KIND_DROP)
        v->stack_id = stacks.get_stackid(ctx, BPF_F_REUSE_STACKID);
#endif
    pp_emit(v, idx, id);
    paths.delete(&key);
    /* the packet this CPU saw pass last is done: pp_deliver's and pp_state's look at it (a
     * lookup of a path just deleted) is skipped; ts stays (pp_nat_candidate: recent traffic) */
    u32 zero = 0;
    struct pp_lastseen *ls = lastseen.lookup(&zero);
    if (ls && ls->skb == key.skb && ls->id == key.id)
        ls->skb = 0;
    return kind == PP_KIND_DELIVER ? PP_H_DELIVERED : 0;
}
#endif


#define PP_HK(hook, kind) (((u32)(hook) << 8) | (kind))

/* ---- pp_handle, in steps: the skb's fields -> its headers (parse, filter, key) -> the ID
 * when the headers did not give it -> the record (an event, or a hop of the packet's path). ---- */

/* The skb fields pp_handle uses. (Filled through a pointer to a local: after inlining they are
 * registers, as separate variables were.) */
struct pp_skbf {
    u64 head, netdev;
    u32 tail, end;
    u16 mac, net;
};

/* Step 1: read the skb's fields; nonzero if it cannot be read. In place (`direct`), only what
 * the filter needs: dev and end are read by pp_skb_late once the packet matched. */
static __always_inline int pp_skb_fields(u64 skb, int direct, struct pp_skbf *s)
{
#ifdef PP_DIRECT_PKT
    if (direct) {
        /* loads through pp_cast (also for a BTF-typed skb: the verifier would type its head as
         * a pointer, which pp_skbslot cannot hash) */
        s->head = PP_RD(u64, skb + PP_OFF_SKB_HEAD, 2);
        s->tail = PP_RD(u32, skb + PP_OFF_SKB_TAIL, 2);
#if PP_OFF_SKB_MAC == PP_OFF_SKB_NET + 2
        u32 hdrs = PP_RD(u32, skb + PP_OFF_SKB_NET, 2);
        s->net = hdrs;
        s->mac = hdrs >> 16;
#else
        s->mac = PP_RD(u16, skb + PP_OFF_SKB_MAC, 2);
        s->net = PP_RD(u16, skb + PP_OFF_SKB_NET, 2);
#endif
        s->netdev = 0;
        s->end = 0;
        return 0;
    }
#endif
    if (direct) {
        /* tp_btf: skb is a BTF-typed pointer, its fields are plain loads (no helper call);
         * head is read as a number (recent verifiers type a char pointer as memory) */
        s->head = pp_rd_u64(skb + PP_OFF_SKB_HEAD);
        s->netdev = *(u64 *)(skb + PP_OFF_SKB_DEV);
        s->tail = *(u32 *)(skb + PP_OFF_SKB_TAIL);
        s->end = *(u32 *)(skb + PP_OFF_SKB_END);
        s->mac = *(u16 *)(skb + PP_OFF_SKB_MAC);
        s->net = *(u16 *)(skb + PP_OFF_SKB_NET);
        return 0;
    }
    u64 span[(PP_SKB_SPAN_LEN + 7) / 8];
    if (bpf_probe_read_kernel(span, sizeof(span), (void *)(skb + PP_SKB_SPAN_START)))
        return -1;
    s->head = SKBF(span, u64, PP_OFF_SKB_HEAD);
    s->netdev = SKBF(span, u64, PP_OFF_SKB_DEV);
    s->tail = SKBF(span, u32, PP_OFF_SKB_TAIL);
    s->end = SKBF(span, u32, PP_OFF_SKB_END);
    s->mac = SKBF(span, u16, PP_OFF_SKB_MAC);
    s->net = SKBF(span, u16, PP_OFF_SKB_NET);
    return 0;
}

/* The fields step 1 left for later in place: read once the packet matched. */
static __always_inline void pp_skb_late(u64 skb, int direct, struct pp_skbf *s)
{
#ifdef PP_DIRECT_PKT
    if (direct) {
        s->netdev = PP_RD(u64, skb + PP_OFF_SKB_DEV, 2);
        s->end = PP_RD(u32, skb + PP_OFF_SKB_END, 2);
    }
#endif
}

/* Step 2: parse the headers at head + start (`linear` bytes of linear data from there): in
 * place (tp_btf with pp_cast), else from one bounded copy. PP_MATCH, PP_NOMATCH, PP_UNPARSED or
 * PP_IN_FRAGS (see pp_parse; *p is set unless PP_NOMATCH). */
static __always_inline int pp_headers(u64 head, u32 start, u32 linear, int l2, int direct,
                                      struct pp_pkt *p)
{
#ifdef PP_DIRECT_PKT
    if (direct)
        return pp_parse(0, head + start, 1, l2, linear, p);
#endif
    u32 zero = 0;
    struct pp_scratch *s = scratch.lookup(&zero);
    if (!s)
        return PP_NOMATCH;
    /* One bounded read; copying less than PP_HDR_LEN when the linear part is short keeps us
     * from reading past the buffer. Bytes past `linear` are never used for a match. */
    u64 want = linear;
    if (want > PP_HDR_LEN)
        want = PP_HDR_LEN;
    asm volatile("" : "+r"(want));  /* re-check below on the register the call uses */
    if (want >= 28 && want <= PP_HDR_LEN &&
        bpf_probe_read_kernel(s->h, want, (void *)(head + start)) == 0)
        return pp_parse(s->h, 0, 0, l2, linear, p);
    __builtin_memset(p, 0, PP_PKT_ZERO);
    return PP_UNPARSED;
}

/* Step 3: the packet ID when the parse did not read it from the linear data: from the first
 * page fragment (PP_IN_FRAGS), or from the skb map (PP_UNPARSED: *known set). The final result
 * (PP_MATCH or PP_UNPARSED with p->id set), or -1: not a traced packet. */
static __always_inline int pp_identify(u64 skb, struct pp_skbf *s, int rc, struct pp_pkt *p,
                                       int *known)
{
#ifdef PP_PAGED
    if (rc == PP_IN_FRAGS) {
        rc = PP_UNPARSED;
        u32 pid = 0;
        if (pp_paged_id(s->head, s->end, p->id, &pid) == 0) {
            p->id = pid;
            rc = PP_MATCH;
            pp_count(PP_CNT_FROM_FRAGS);
        } else {
            pp_count(PP_CNT_UNREACHABLE);
        }
    }
#endif
    if (rc == PP_REWRITTEN) {
        /* headers parsed (the rewritten flow is kept), the ID is the skb's */
        u64 rid = 0;
        if (pp_skbmap_get(skb, s->head, s->tail, &rid) < 0)
            return -1;
        p->id = rid;
        *known = 2;
        return PP_UNPARSED;
    }
    if (rc == PP_UNPARSED) {
        u64 mid = 0;
        if (pp_skbmap_get(skb, s->head, s->tail, &mid) < 0)
            return -1;
        p->id = mid;
        *known = 1;
        pp_count(PP_CNT_FROM_MAP);
    }
    return rc;
}

#ifndef PP_SUMMARY
/* Step 4, events mode: one struct pp_event for this sighting. */
static __always_inline int pp_record_event(void *ctx, u64 skb, u16 hook, u8 kind, u64 location,
                                           u32 reason, u64 sk, struct pp_pkt *p, u8 flags,
                                           u64 now, u64 netdev, int direct)
{
    struct pp_event *e = events.ringbuf_reserve(sizeof(struct pp_event));
    if (!e) {
        e = rescue.ringbuf_reserve(sizeof(struct pp_event));  /* see `rescue` */
        if (!e) {
            pp_lost(p->id);
            return 0;
        }
        pp_count(PP_CNT_RESCUED);
    }
    e->ts = now;
    e->skb = skb;
    e->location = location;
    e->id = p->id;
    e->reason = reason;
    e->hook = hook;
    e->cpu = bpf_get_smp_processor_id();
    e->kind = kind;
    e->flags = flags;
    e->stack_id = -1;
    pp_flow_put(&e->inner, &p->in, p->in6, p->family, p->proto);
    e->tun.type = p->tun;
    e->tun.vni = p->vni;
    pp_flow_put(&e->tun.outer, &p->out, p->out6, p->tun != PP_TUN_NONE ? p->ofamily : 0, 17);
#ifdef PP_STACKS
    if (kind == PP_KIND_DROP)
        e->stack_id = stacks.get_stackid(ctx, BPF_F_REUSE_STACKID);
#endif
    pp_where(netdev, sk, &e->netns, &e->ifindex, e->dev, &e->port, direct);
    if (kind == PP_KIND_PASS) {
        /* for pp_state and pp_deliver's fallback, as summary mode's hops note it */
        u32 zero = 0;
        struct pp_lastseen *ls = lastseen.lookup(&zero);
        if (ls) {
            ls->ts = now;
            ls->skb = skb;
            ls->id = p->id;
            ls->netns = e->netns;
            ls->ports = p->family ? p->in.ports : 0;
            ls->proto = p->family ? p->proto : 0;
        }
    } else if (kind == PP_KIND_DROP) {
        /* a dropped packet is never delivered by pp_deliver's fallback */
        u32 zero = 0;
        struct pp_lastseen *ls = lastseen.lookup(&zero);
        if (ls && ls->skb == skb && ls->id == p->id)
            ls->ts = 0;
    }
    events.ringbuf_submit(e, pp_wakeup());
    return 0;
}
#endif

#ifdef PP_PCAP
/* --pcap: the packet's first PP_SNAP_LEN bytes at this hop (from `start`, the mac header when
 * set, else the network header), in their own ring. One bounded copy; skb->len and skb->data at
 * their BTF offsets (the original length counts from `start`, not from data). Built only with
 * -DPP_PCAP: the default program has none of this. A full ring loses the snap, not the hop. */
BPF_RINGBUF_OUTPUT(snaps, PP_SNAP_PAGES);

static __always_inline void pp_snap(u64 skb, struct pp_skbf *s, u32 start, int l2, u16 hook,
                                    u8 kind, u64 id, u64 now, u64 sk, int direct)
{
    struct pp_snap *r = snaps.ringbuf_reserve(sizeof(struct pp_snap));
    if (!r)
        return;
    u32 len = 0;
    u64 data = 0;
    bpf_probe_read_kernel(&len, sizeof(len), (void *)(skb + PP_OFF_SKB_LEN));
    bpf_probe_read_kernel(&data, sizeof(data), (void *)(skb + PP_OFF_SKB_DATA));
    u64 from = s->head + start;
    if (data > from && data - from < 0x10000)
        len += data - from;         /* receive: data at L3, the copy starts at L2 */
    else if (from > data && from - data < len)
        len -= from - data;
    u64 cap = s->tail - start;      /* linear bytes from start (start < tail: pp_handle) */
    if (cap > PP_SNAP_LEN)
        cap = PP_SNAP_LEN;
    asm volatile("" : "+r"(cap));   /* re-check on the register the call uses */
    if (!(cap >= 1 && cap <= PP_SNAP_LEN &&
          bpf_probe_read_kernel(r->data, cap, (void *)from) == 0))
        cap = 0;
    r->ts = now;
    r->skb = skb;
    r->id = id;
    r->len = len;
    r->caplen = cap;
    r->hook = hook;
    r->kind = kind;
    r->flags = l2 ? PP_SNAP_L2 : 0;
    r->_spad = 0;
    pp_where(s->netdev, sk, &r->netns, &r->ifindex, r->dev, &r->port, direct);
    snaps.ringbuf_submit(r, 0);
}
#endif

/* Common path: identify the packet in `skb`, then emit an event of kind `hk & 0xff` for hook
 * `hk >> 8`. `aux` is the drop reason for PP_KIND_DROP, the socket for the deliver kinds (whose
 * netns/port are taken from the socket: skb->dev is not valid on a socket queue).
 * (bcc loads each entry point on its own, so this is inlined into each: call sites are kept
 * few, and loops are not unrolled, to keep compile and load fast.) */
static __always_inline int pp_handle(void *ctx, u64 skb, u32 hk, u64 location, u64 aux,
                                     int direct)
{
    u16 hook = hk >> 8;
    u8 kind = hk & 0xff;
    u32 reason = kind == PP_KIND_DROP ? (u32)aux : 0;
    u64 sk = kind == PP_KIND_DELIVER ? aux : 0;
    if (!pp_is_kptr(skb))
        return 0;
    struct pp_skbf s;
    if (pp_skb_fields(skb, direct, &s))
        return 0;
    int l2 = s.mac != 0xffff && s.mac != s.net;
    u32 start = l2 ? s.mac : s.net;
    if (start == 0xffff || start >= s.tail)
        return 0;

    /* filled by pp_parse unless PP_NOMATCH. Kept in memory (the empty asm takes its address):
     * split into registers, its fields' zeros were spilled on every path through the parse */
    struct pp_pkt p;
    asm volatile("" : : "r"(&p) : "memory");
    int rc = pp_headers(s.head, start, s.tail - start, l2, direct, &p);
    if (rc == PP_NOMATCH || (rc == PP_UNPARSED && !pp_armed()))
        return 0;   /* (unparsed: known only by the skb map, empty until a packet matched) */
    pp_skb_late(skb, direct, &s);
    int known = 0;
    rc = pp_identify(skb, &s, rc, &p, &known);
    if (rc < 0)
        return 0;

    u64 now = bpf_ktime_get_ns();
#ifdef PP_PCAP
    pp_snap(skb, &s, start, l2, hook, kind, p.id, now, sk, direct ? 2 : 0);
#endif
#ifndef PP_SUMMARY
    if (rc == PP_MATCH && kind == PP_KIND_PASS)
        pp_skbmap_put(skb, s.head, s.tail, p.id, now);
    if (kind == PP_KIND_CONSUME) {
        /* as in summary mode, a consume only ends a packet seen on this very skb and buffer
         * (the sender's copy of a TCP segment, freed when it is acknowledged, is not it) */
        u64 was;
        if (pp_skbmap_get(skb, s.head, s.tail, &was) < 0 || (u32)was != p.id)
            return 0;
    }
    if (kind != PP_KIND_PASS) {
        /* a queued datagram already delivered (a batch's later callbacks see the same tail) */
        u64 was;
        if (kind == PP_KIND_DELIVER && pp_skbmap_get(skb, s.head, s.tail, &was) == -2)
            return PP_H_CLOSED;
        /* dropped or delivered: the skb carries others */
        if (rc == PP_MATCH)
            pp_skbmap_put(skb, s.head, s.tail, p.id, now);
        pp_skbmap_close(skb, s.head, s.tail);
    }
#endif
    u8 flags = (p.tun != PP_TUN_NONE ? PP_F_ENCAP : 0) |
               (known == 1 ? PP_F_FROM_MAP : known ? PP_F_REWRITTEN : 0) |
               (kind == PP_KIND_PASS ? (u8)aux : 0);   /* a pass hook's aux: extra PP_F_* */
#ifdef PP_SUMMARY
    /* a consume ends the path open on this very skb, never starts one (the sender's copy of a
     * TCP segment, freed when it is acknowledged, is not the packet) */
    return pp_summary(ctx, skb, hook, kind, location, reason, sk, &p, flags, now,
                      s.head, s.tail, rc == PP_MATCH && kind == PP_KIND_PASS, s.netdev,
                      direct ? 2 : 0, 0, kind == PP_KIND_CONSUME ? 1 : known ? 2 : 0);
#else
    return pp_record_event(ctx, skb, hook, kind, location, reason, sk, &p, flags, now,
                           s.netdev, direct ? 2 : 0);
#endif
}

/* A hook that sees the skb pass. */
static __always_inline int pp_pass(void *ctx, u64 skb, u16 hook, int direct)
{
    return pp_handle(ctx, skb, PP_HK(hook, PP_KIND_PASS), 0, 0, direct);
}

/* A hook where the stack is done with the skb normally (consume_skb): ends its open path. */
static __always_inline int pp_consume(void *ctx, u64 skb, u16 hook, int direct)
{
    return pp_handle(ctx, skb, PP_HK(hook, PP_KIND_CONSUME), 0, 0, direct);
}

/* tcp:tcp_probe (a segment processed by an established socket): a pass hook whose hop says
 * whether the segment occupies sequence space (data or FIN: it is queued, or merged into the
 * queue's tail by tcp_try_coalesce and freed unseen) or not (a pure ACK, freed by __kfree_skb,
 * which has no tracepoint). User space infers the verdict of a path that ends here. */
static __always_inline int pp_segment(void *ctx, u64 skb, u16 hook, int direct)
{
    if (!pp_is_kptr(skb))
        return 0;
    u32 seq = PP_RD(u32, skb + PP_OFF_SKB_CB + PP_OFF_TCB_SEQ, direct);
    u32 end = PP_RD(u32, skb + PP_OFF_SKB_CB + PP_OFF_TCB_END_SEQ, direct);
    return pp_handle(ctx, skb, PP_HK(hook, PP_KIND_PASS), 0, seq != end ? PP_F_DATA : 0, direct);
}

#ifdef PP_DROPS_ALL
#ifdef PP_DROP_DETAIL
/* The `drops` command: the drop monitor also names the flow of each drop. Per drop: the skb's
 * device, netns and socket state, its headers parsed (pp_dflow; through a VXLAN or Geneve tunnel
 * to the inner flow), the filters (PP_DF_*), then the exact counts (dropcounts, dropflows) and, within
 * the quota of its (location, reason) (pp_dropquota_take), one struct pp_dropinfo record. */
BPF_PERCPU_ARRAY(dropinit, struct pp_dropinfo, 1);
BPF_HASH(dropquota, struct pp_dropkey, struct pp_dropquota, 4096);
BPF_TABLE("lru_hash", struct pp_dropflow, u64, dropflows, PP_DROP_FLOWS);

/* L3 (IPv4, IPv6, ARP) and L4 (TCP, UDP, ICMP, ICMPv6) of a drop at `off` of the header copy
 * `h` (`linear` bytes of it valid), into d and f: the UDP header's offset (for the tunnel), or
 * 0. IPv6 extension headers are not walked: the protocol is then the first one's. */
static __always_inline u32 pp_dflow(u8 *h, u32 off, u32 linear, u16 type,
                                    struct pp_dropinfo *d, struct pp_flow *f)
{
    u8 proto;
    u32 l4;
    d->ethertype = type;
    if (type == 0x0800) {
        if (off > PP_HDR_LEN - 20 || off + 20 > linear)
            return 0;
        u8 vihl = h[off];
        if ((vihl >> 4) != 4 || (vihl & 0xf) < 5)
            return 0;
        proto = h[off + 9];
        f->family = 4;
        f->protocol = proto;
        f->saddr[0] = *(u32 *)(h + off + 12);
        f->daddr[0] = *(u32 *)(h + off + 16);
        if (rd16(h, off + 6) & 0x1fff)
            return 0;   /* a later fragment: no L4 header */
        l4 = off + (vihl & 0xf) * 4;
    } else if (type == 0x86dd) {
        if (off > PP_HDR_LEN - 40 || off + 40 > linear)
            return 0;
        proto = h[off + 6];
        f->family = 6;
        f->protocol = proto;
        __builtin_memcpy(f->saddr, h + off + 8, 16);
        __builtin_memcpy(f->daddr, h + off + 24, 16);
        l4 = off + 40;
    } else if (type == 0x0806) {
        /* ARP for IPv4: the sender's and target's addresses, the opcode */
        if (off > PP_HDR_LEN - 28 || off + 28 > linear || rd16(h, off + 2) != 0x0800)
            return 0;
        f->family = 4;
        d->msg_type = rd16(h, off + 6);
        f->saddr[0] = *(u32 *)(h + off + 14);
        f->daddr[0] = *(u32 *)(h + off + 24);
        return 0;
    } else {
        return 0;
    }
    if (l4 > PP_HDR_LEN - 20)
        return 0;
    if (proto == 6 /* TCP */) {
        if (l4 + 14 > linear)
            return 0;
        f->sport = rd16(h, l4);
        f->dport = rd16(h, l4 + 2);
        d->tcp_flags = h[l4 + 13];
    } else if (proto == 17 /* UDP */) {
        if (l4 + 8 > linear)
            return 0;
        f->sport = rd16(h, l4);
        f->dport = rd16(h, l4 + 2);
        return l4;
    } else if (proto == 1 || proto == 58 /* ICMP, ICMPv6 */) {
        if (l4 + 2 > linear)
            return 0;
        d->msg_type = h[l4];
        d->msg_code = h[l4 + 1];
    }
    return 0;
}

/* The headers of a dropped skb, from its MAC header when it has one, else its network header:
 * into d (flow, tunnel, TCP flags, ICMP type). */
static __always_inline void pp_dropparse(u64 skb, struct pp_skbf *s, struct pp_dropinfo *d)
{
    int l2 = s->mac != 0xffff && s->mac != s->net;
    u32 start = l2 ? s->mac : s->net;
    if (start == 0xffff || start >= s->tail)
        return;
    u32 linear = s->tail - start;
    u32 zero = 0;
    struct pp_scratch *sc = scratch.lookup(&zero);
    if (!sc)
        return;
    /* the headers a drop shows: up to outer IPv6 + UDP + Geneve with 32 bytes of options (or
     * VXLAN) + Ethernet + IPv6 + TCP (PP_DROP_HDR_LEN) */
    u64 want = linear;
    if (want > PP_DROP_HDR_LEN)
        want = PP_DROP_HDR_LEN;
    asm volatile("" : "+r"(want));
    if (want < 20 || want > PP_DROP_HDR_LEN ||
        bpf_probe_read_kernel(sc->h, want, (void *)(s->head + start)))
        return;
    linear = want;   /* what lies past the copy is never read */
    u8 *h = sc->h;
    u16 type;
    u32 off = 0;
    if (l2) {
        off = pp_l2(h, 0, 1, &type);
    } else {
        type = (h[0] >> 4) == 6 ? 0x86dd : 0x0800;
    }
    u32 l4 = pp_dflow(h, off, linear, type, d, &d->flow);
    if (!l4)
        return;
    /* a tunnel by outer UDP destination port (the tracer's pp_tunnel_of), its header by the
     * tracer's pp_tunnel_hdr (VXLAN; Geneve with options): the inner Ethernet at `in` */
    struct pp_flow4 of = {.ports = (u32)__builtin_bswap16(d->flow.dport) << 16};
    u8 tun = pp_tunnel_of(&of);
    if (tun == PP_TUN_NONE || l4 + 16 > linear)
        return;
    u32 vni = 0;
    u8 *eth;
    s32 in = pp_tunnel_hdr(h, 0, 0, tun, l4 + 8, &vni, &eth);
    if (in <= 0)
        return;
    d->tun.type = tun;
    d->tun.vni = vni;
    d->tun.outer = d->flow;
    __builtin_memset(&d->flow, 0, sizeof(d->flow));
    d->ethertype = 0;   /* the inner packet, unless it lies past the bytes we read */
    if (in + 14 > linear)
        return;
    in = pp_l2(eth, in, 0, &type);
    pp_dflow(h, in, linear, type, d, &d->flow);
}

/* The filters of `drops` (PP_DF_*: --proto, --port, --host; --reason and --netns are tested
 * before the parse): 1 if the drop is counted and shown. */
static __always_inline int pp_drop_match(struct pp_dropinfo *d)
{
#ifdef PP_DF_ETHERTYPE
    if (d->ethertype != PP_DF_ETHERTYPE)
        return 0;
#endif
#ifdef PP_DF_PROTO_MATCH
    if (!PP_DF_PROTO_MATCH(d->flow.protocol))
        return 0;
#endif
#ifdef PP_DF_PORT
    if (d->flow.sport != PP_DF_PORT && d->flow.dport != PP_DF_PORT)
        return 0;
#endif
#ifdef PP_DF_HOST0
    if (!(d->flow.saddr[0] == PP_DF_HOST0 && d->flow.saddr[1] == PP_DF_HOST1) &&
        !(d->flow.daddr[0] == PP_DF_HOST0 && d->flow.daddr[1] == PP_DF_HOST1) &&
        !(d->tun.outer.saddr[0] == PP_DF_HOST0 && d->tun.outer.saddr[1] == PP_DF_HOST1) &&
        !(d->tun.outer.daddr[0] == PP_DF_HOST0 && d->tun.outer.daddr[1] == PP_DF_HOST1))
        return 0;
#endif
    return 1;
}

/* A detail record for this drop (location, reason) while its quota lasts: PP_DROP_BURST per
 * PP_DROP_WINDOW_NS. Two CPUs may race on `used`: at most a record or two over the quota. */
static __always_inline struct pp_dropquota *pp_dropquota_take(u64 location, u32 reason, u64 now)
{
    struct pp_dropkey qk = {.location = location, .reason = reason};
    u64 w = now / PP_DROP_WINDOW_NS;
    struct pp_dropquota *q = dropquota.lookup(&qk);
    if (!q) {
        struct pp_dropquota init = {.window = w};
        dropquota.insert(&qk, &init);
        q = dropquota.lookup(&qk);
        if (!q)
            return 0;
    }
    if (q->window != w) {
        q->window = w;
        q->used = 0;
    }
    if (q->used >= PP_DROP_BURST)
        return 0;
    __sync_fetch_and_add(&q->used, 1);
    return q;
}

/* Fill the per-CPU detail record of this drop (NULL: filtered out). */
static __always_inline struct pp_dropinfo *pp_dropdetail(u64 skb, u64 location, u32 reason)
{
#ifdef PP_DF_REASON_MATCH
    if (!PP_DF_REASON_MATCH(reason))
        return 0;
#endif
    u32 zero = 0;
    struct pp_dropinfo *d = dropinit.lookup(&zero);
    if (!d)
        return 0;
    __builtin_memset(d, 0, sizeof(*d));
    /* the skb fields pp_skb_fields reads and its socket, in one read */
    struct pp_skbf s;
    u64 span[(PP_DROP_SPAN_LEN + 7) / 8];
    if (bpf_probe_read_kernel(span, sizeof(span), (void *)(skb + PP_SKB_SPAN_START)))
        return 0;
    s.head = SKBF(span, u64, PP_OFF_SKB_HEAD);
    s.netdev = SKBF(span, u64, PP_OFF_SKB_DEV);
    s.tail = SKBF(span, u32, PP_OFF_SKB_TAIL);
    s.mac = SKBF(span, u16, PP_OFF_SKB_MAC);
    s.net = SKBF(span, u16, PP_OFF_SKB_NET);
    u64 sk = SKBF(span, u64, PP_OFF_SKB_SK);
    u16 port;
    pp_where(s.netdev, 0, &d->netns, &d->ifindex, d->dev, &port, 0);
    d->sk_state = PP_NO_SK_STATE;
    if (pp_is_kptr(sk)) {
        bpf_probe_read_kernel(&d->sk_state, 1, (void *)(sk + PP_OFF_SK_STATE));
        if (!d->netns) {
            u64 net = 0;
            bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + PP_OFF_SK_NET));
            d->netns = pp_netns_of_net(net, 0);
        }
    }
#ifdef PP_DF_NETNS_MATCH
    if (!PP_DF_NETNS_MATCH(d->netns))
        return 0;
#endif
    pp_dropparse(skb, &s, d);
    if (!pp_drop_match(d))
        return 0;
    d->location = location;
    d->reason = reason;
    return d;
}
#endif

/* The drop monitor (--drops all, dropwatch mode; and `drops`): count every drop on the machine
 * by location, reason and netns. Both CPUs update one hash: the count is added atomically, and
 * a missing key is inserted only if still missing (BPF_NOEXIST); the CPU that loses that race
 * adds to the entry the winner inserted. With PP_DROP_DETAIL (`drops`), only the drops that
 * pass its filters, each counted per flow too and, within its quota, shown in detail. */
static __always_inline void pp_count_key(struct pp_dropkey *dk)
{
    u64 *n = dropcounts.lookup(dk);
    if (!n) {
        u64 one = 1;
        if (dropcounts.insert(dk, &one) == 0)   /* BPF_NOEXIST */
            return;
        n = dropcounts.lookup(dk);   /* another CPU inserted it meanwhile (or the map is full) */
        if (!n)
            return;
    }
    __sync_fetch_and_add(n, 1);
}

static __always_inline void pp_dropwatch(void *ctx, u64 skb, u64 location, u32 reason)
{
    struct pp_dropkey dk = {.location = location, .reason = reason};
#ifdef PP_DROP_DETAIL
    struct pp_dropinfo *d = pp_dropdetail(skb, location, reason);
    if (!d)
        return;
    dk.netns = d->netns;
    pp_count_key(&dk);
    struct pp_dropflow fk = {.flow = d->flow, .reason = reason, .netns = d->netns,
                             .vni = d->tun.vni, .ethertype = d->ethertype, .tun = d->tun.type};
    u64 *fn = dropflows.lookup(&fk);
    if (fn) {
        __sync_fetch_and_add(fn, 1);
    } else {
        u64 one = 1;
        if (dropflows.insert(&fk, &one) != 0) {
            fn = dropflows.lookup(&fk);
            if (fn)
                __sync_fetch_and_add(fn, 1);
        }
    }
    u64 now = bpf_ktime_get_ns();
    struct pp_dropquota *q = pp_dropquota_take(location, reason, now);
    if (!q)
        return;
    d->ts = now;
    u64 pt = bpf_get_current_pid_tgid();
    d->pid = pt >> 32;
    d->tid = (u32)pt;
    bpf_get_current_comm(d->comm, sizeof(d->comm));
    d->cpu = bpf_get_smp_processor_id();
    d->stack_id = -1;
#ifdef PP_STACKS
    d->stack_id = stacks.get_stackid(ctx, BPF_F_REUSE_STACKID);
#endif
    if (events.ringbuf_output(d, sizeof(*d), pp_wakeup()) < 0) {
        __sync_fetch_and_add(&q->lost, 1);
        pp_count(PP_CNT_LOST);
    }
#else
    u64 dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(skb + PP_OFF_SKB_DEV));
    if (pp_is_kptr(dev)) {
        u64 net = 0;
        bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + PP_OFF_DEV_NET));
        dk.netns = pp_netns_of_net(net, 0);
    }
    pp_count_key(&dk);
#endif
}
#endif

/* kfree_skb: the skb is dropped at `location` for `reason`. */
static __always_inline int pp_drop(void *ctx, u64 skb, u16 hook, u64 location, u32 reason,
                                   int direct)
{
#ifdef PP_DROPS_ALL
    pp_dropwatch(ctx, skb, location, reason);
#endif
#ifdef PP_DROPS_ONLY
    return 0;   /* `drops`: no traced flow */
#endif
    return pp_handle(ctx, skb, PP_HK(hook, PP_KIND_DROP), location, reason, direct);
}

/* Look at up to PP_DELIVER_SCAN datagrams from the tail of the receive queue, then up to
 * PP_READER_SCAN from the tail of UDP's reader_queue. The receive queue's tail is parsed
 * (pp_handle); the datagrams behind it are known by the skb map (pp_deliver_known): delivered
 * while their packet is open, and a scan stops at the first one already delivered (queues are
 * in arrival order: so are the ones before it).
 *
 * Batches (summary mode): since Linux 6.18 one CPU may queue a batch of datagrams that other
 * CPUs handed it (udp_prod_queue), then call sk_data_ready once per datagram, each time with
 * the batch's last one as the tail. A batch can be deeper than one scan: the scan that runs out
 * of depth leaves where it stopped in `resume` (per CPU: the batch's callbacks run back to back
 * on the CPU that queued it), and the next callback for the same socket continues from there
 * after its tail. nb datagrams come with nb callbacks, each able to deliver PP_DELIVER_SCAN.
 * A resume point is only followed while it is still linked in a queue (a reader that took it
 * unlinked it) and for PP_RESUME_NS.
 * One loop, not unrolled, so that pp_handle is inlined once here. */
#ifdef PP_SUMMARY
#ifndef PP_DELIVER_SCAN
#define PP_DELIVER_SCAN 8   /* (tests set a shallow depth: PKTPATH_DELIVER_SCAN, program.py) */
#endif
struct pp_resume {
    u64 sk;
    u64 skb;
    u64 ts;
};
BPF_PERCPU_ARRAY(resume, struct pp_resume, 1);
#else
#define PP_DELIVER_SCAN 3
#endif
#define PP_READER_SCAN 3
#define PP_HEADS (PP_DELIVER_SCAN + PP_READER_SCAN)  /* the scan's index of the heads */
#define PP_HEAD_SCAN 2   /* datagrams looked at from the heads (pp_scan_queues, pp_reader) */

/* `skb` is still linked in a queue (not taken by a reader: __skb_unlink clears next) */
static __always_inline int pp_linked(u64 skb, int direct)
{
    u64 next = PP_RD(u64, skb + PP_OFF_SKB_NEXT, direct);
    return pp_is_kptr(next) && PP_RD(u64, next + PP_OFF_SKB_PREV, direct) == skb;
}

/* The head (next), tail (prev) and length of the queue at `q` */
static __always_inline void pp_queue_ends(u64 q, int direct, u64 *head, u64 *tail, u32 *qlen)
{
    if (direct) {
        *head = PP_RD(u64, q + PP_OFF_SKBHEAD_NEXT, 2);
        *tail = PP_RD(u64, q + PP_OFF_SKBHEAD_PREV, 2);
        *qlen = PP_RD(u32, q + PP_OFF_SKBHEAD_QLEN, 2);
        return;
    }
    u64 qh[(PP_SKBHEAD_SPAN_LEN + 7) / 8] = {};
    bpf_probe_read_kernel(qh, sizeof(qh), (void *)q);
    *head = *(u64 *)((u8 *)qh + PP_OFF_SKBHEAD_NEXT);
    *tail = *(u64 *)((u8 *)qh + PP_OFF_SKBHEAD_PREV);
    *qlen = *(u32 *)((u8 *)qh + PP_OFF_SKBHEAD_QLEN);
}

static __always_inline void pp_queue_tail(u64 q, int direct, u64 *tail, u32 *qlen)
{
    u64 head;
    pp_queue_ends(q, direct, &head, tail, qlen);
}

/* A datagram behind the tail: known by the skb map alone (no parse: the parse is inlined once,
 * for the tail; a loop of parses was too much for the verifier). Every traced packet's skb is
 * in the map from its first sighting at a pass hook, open, and closed once it is done.
 * PP_H_DELIVERED, PP_H_CLOSED (done already), or 0 (not a traced packet, or not known here). */
static __always_inline int pp_deliver_known(void *ctx, u64 skb, u16 hook, u64 sk, int direct)
{
    struct pp_skbf s;
    if (pp_skb_fields(skb, direct, &s))
        return 0;
    u64 id = 0;
    int st = pp_skbmap_get(skb, s.head, s.tail, &id);
    if (st == -2)
        return PP_H_CLOSED;
    if (st < 0)
        return 0;
    struct pp_pkt p;
    __builtin_memset(&p, 0, PP_PKT_ZERO);
    p.id = id;
    u64 now = bpf_ktime_get_ns();
#ifdef PP_PCAP
    {
        int l2 = s.mac != 0xffff && s.mac != s.net;
        u32 start = l2 ? s.mac : s.net;
        if (start != 0xffff && start < s.tail)
            pp_snap(skb, &s, start, l2, hook, PP_KIND_DELIVER, id, now, sk, direct ? 2 : 0);
    }
#endif
#ifdef PP_SUMMARY
    /* delivered only while its path is open (PP_H_CLOSED if not) */
    return pp_summary(ctx, skb, hook, PP_KIND_DELIVER, 0, 0, sk, &p, PP_F_FROM_MAP, now,
                      s.head, s.tail, 0, 0, direct ? 2 : 0, 0, 1);
#else
    pp_skbmap_close(skb, s.head, s.tail);
    pp_record_event(ctx, skb, hook, PP_KIND_DELIVER, 0, 0, sk, &p, PP_F_FROM_MAP, now, 0,
                    direct ? 2 : 0);
    return PP_H_DELIVERED;
#endif
}

static __always_inline int pp_scan_queues(void *ctx, u64 sk, u16 hook, int direct, int udp,
                                          int reader)
{
    u64 rq = sk + PP_OFF_SK_QHEAD, readerq = sk + PP_OFF_UDP_READERQ;
    u64 skb = 0, from = 0, tmp;
    u32 qlen = 0, j = 1, start = 1;
    int found = 0, deep = reader, inrq = 0;
#ifdef PP_SUMMARY
    u32 zero = 0;
    struct pp_resume *rs = 0;
    if (!reader) {
        rs = resume.lookup(&zero);
        if (rs && rs->sk == sk) {
            /* (the clock only read here: a resume point for this socket is rare) */
            if (bpf_ktime_get_ns() - rs->ts < PP_RESUME_NS && pp_is_kptr(rs->skb) &&
                pp_linked(rs->skb, direct))
                from = rs->skb;
            else
                rs->sk = 0;
        }
    }
#endif
    if (reader) {
        start = PP_HEADS;   /* the reader: the heads only */
    } else {
        /* the receive queue's tail: parsed (it may be new to the skb map) */
        pp_queue_tail(rq, direct, &skb, &qlen);
        if (pp_is_kptr(skb) && skb != rq && qlen) {
            int r = pp_handle(ctx, skb, PP_HK(hook, PP_KIND_DELIVER), 0, sk, direct);
            if (r == PP_H_DELIVERED)
                found = 1;
            if (r == PP_H_CLOSED) {
#ifdef PP_SUMMARY
                if (from && rs) {
                    /* delivered by an earlier callback of this batch: on where that
                     * callback's scan stopped (a new tail is a new batch: scanned from the
                     * tail, the resume point kept for the callbacks after it) */
                    skb = from;
                    rs->sk = 0;
                    deep = 1;
                    pp_count(PP_CNT_DELIVER_RESUMED);
                } else
#endif
                start = PP_DELIVER_SCAN;    /* those before it were delivered too */
            } else {
                skb = PP_RD(u64, skb + PP_OFF_SKB_PREV, direct);
            }
        } else {
            start = PP_DELIVER_SCAN;
        }
    }
    /* the datagrams behind it, then the reader queue's tail and those behind it; then, after a
     * scan that ran out of depth (a batch deeper than it) and at the reader, the oldest
     * datagrams: the heads */
    #pragma clang loop unroll(disable)
    for (u32 i = start; i < PP_HEADS + PP_HEAD_SCAN; i++) {
        if (i == PP_DELIVER_SCAN) {
            if (!udp)
                break;
            pp_queue_tail(readerq, direct, &skb, &qlen);
            j = 0;
        }
        if (i >= PP_HEADS) {
            if (i == PP_HEADS) {
                if (!deep || !udp)
                    break;
                /* the reader takes the reader queue's head next, or (that queue empty) the
                 * receive queue's */
                pp_queue_ends(readerq, direct, &skb, &tmp, &qlen);
                j = 0;
            }
            if (!inrq && (!pp_is_kptr(skb) || skb == readerq || skb == rq || j >= qlen)) {
                pp_queue_ends(rq, direct, &skb, &tmp, &qlen);
                inrq = 1;
                j = 0;
            }
            if (!pp_is_kptr(skb) || skb == rq || skb == readerq || j >= qlen)
                break;
        } else if (!pp_is_kptr(skb) || skb == rq || skb == readerq || j >= qlen) {
            if (i >= PP_DELIVER_SCAN || !udp) {
                if (!deep || !udp)
                    break;   /* (a TCP socket has no reader queue) */
                i = PP_HEADS - 1;
                continue;
            }
            i = PP_DELIVER_SCAN - 1;  /* on to the reader queue */
            continue;
        }
        int r = pp_deliver_known(ctx, skb, hook, sk, direct);
        if (r == PP_H_DELIVERED) {
            found = 1;
            if (i >= PP_HEADS)
                pp_count(reader ? PP_CNT_DELIVER_READER : PP_CNT_DELIVER_HEAD);
        }
        if (i >= PP_HEADS) {
            /* the heads: from the oldest on (delivered ones are skipped: a batch is delivered
             * from both ends) */
            skb = PP_RD(u64, skb + PP_OFF_SKB_NEXT, direct);
            j++;
            continue;
        }
        if (r == PP_H_CLOSED) {
            /* a datagram queued before it was delivered already: so were those before it (and
             * the reader queue's, older still, once this scan delivered the ones after it) */
            if (i >= PP_DELIVER_SCAN || found || !udp) {
                if (!deep || !udp)
                    break;
                i = PP_HEADS - 1;
                continue;
            }
            i = PP_DELIVER_SCAN - 1;
            continue;
        }
        skb = PP_RD(u64, skb + PP_OFF_SKB_PREV, direct);
        j++;
        if (i == PP_DELIVER_SCAN - 1 && pp_is_kptr(skb) && skb != rq && j < qlen) {
            /* out of depth with more datagrams behind: the next callback goes on from here
             * (summary), and this one looks at the heads too */
            deep = 1;
#ifdef PP_SUMMARY
            if (rs) {
                rs->sk = sk;
                rs->skb = skb;
                rs->ts = bpf_ktime_get_ns();
            }
#endif
        }
    }
    return found;
}

#ifdef PP_PORT
/* Whether socket sk (not on the filter's port) may hold a traced packet: its receive queue's
 * tail is an open packet's skb (skb map), or (summary) a traced packet passed on this CPU
 * moments ago. */
static __always_inline int pp_nat_candidate(u64 sk, int direct)
{
    if (!pp_armed())
        return 0;   /* no traced packet yet (a lastseen entry implies one in the skb map) */
#ifdef PP_SUMMARY
    u32 zero = 0;
    struct pp_lastseen *ls = lastseen.lookup(&zero);
    if (ls && ls->ts && bpf_ktime_get_ns() - ls->ts <= PP_LASTSEEN_NS)
        return 1;
#endif
    u64 skb = 0;
    u32 qlen = 0;
    pp_queue_tail(sk + PP_OFF_SK_QHEAD, direct, &skb, &qlen);
    if (!pp_is_kptr(skb) || skb == sk + PP_OFF_SK_QHEAD || !qlen)
        return 0;
    struct pp_skbf s;
    if (pp_skb_fields(skb, direct, &s))
        return 0;
    u64 was;
    return pp_skbmap_get(skb, s.head, s.tail, &was) >= 0;
}
#endif

/* The packet this CPU saw pass last (lastseen), if seen within `window` ns (PP_LASTSEEN_NS:
 * moments ago) and in socket sk's namespace: what the fallbacks of pp_deliver and pp_state
 * look at. */
static __always_inline struct pp_lastseen *pp_recent_in(u64 sk, int direct, u64 now, u64 window)
{
    u32 zero = 0;
    struct pp_lastseen *ls = lastseen.lookup(&zero);
    if (!ls || !ls->ts || now - ls->ts > window)
        return 0;
    u64 skn = PP_RD(u64, sk + PP_OFF_SK_NET, direct);
    if (pp_netns_of_net(skn, direct) != ls->netns)
        return 0;
    return ls;
}

static __always_inline struct pp_lastseen *pp_recent(u64 sk, int direct, u64 now)
{
    return pp_recent_in(sk, direct, now, PP_LASTSEEN_NS);
}

/* A socket's data-ready callback: the datagram just queued is the receive queue's tail.
 * Races: when two CPUs queue datagrams at once, both callbacks may see the later one as the
 * tail, so the datagrams before it are looked at too; and a reader running on another CPU may
 * already have moved the queue to UDP's reader_queue, so that queue's tail is looked at as well.
 * In summary mode those extra datagrams only count while their path is still open (an ID is
 * not delivered twice). A reader that has already consumed the datagram leaves no trace here:
 * the reader itself saw it at its queue's head when it returned from the read before (pp_reader),
 * or it is the packet this CPU saw last (the fallback below); else it is reported lost. */
static __always_inline int pp_deliver(void *ctx, u64 sk, u16 hook, int direct)
{
    if (!pp_is_kptr(sk))
        return 0;
    u16 skproto = PP_RD(u16, sk + PP_OFF_SK_PROTO, direct);
    /* the traced protocols' sockets only (TCP: its receive queue's tail; which segment a
     * callback delivers, with coalescing and out-of-order queues, is not settled here) */
#if defined(PP_PROTO_UDP) && defined(PP_PROTO_TCP)
    if (skproto != 17 && skproto != 6)
        return 0;
#elif defined(PP_PROTO_TCP)
    if (skproto != 6)
        return 0;
#else
    if (skproto != 17 /* IPPROTO_UDP */)
        return 0;
#endif
#ifdef PP_PORT
    /* cheapest test first: a socket on another port receives a traced packet only after NAT
     * (REDIRECT, DNAT): then the skb map knows the queue's tail (or, in summary mode, this CPU
     * saw a traced packet pass moments ago: the reader may have taken it already) */
    if (PP_RD(u16, sk + PP_OFF_SK_NUM, direct) != PP_PORT && !pp_nat_candidate(sk, direct))
        return 0;
#endif
    int found = pp_scan_queues(ctx, sk, hook, direct, skproto == 17, 0);
#ifdef PP_SUMMARY
    if (skproto != 17)
        return 0;   /* (the fallback below is for UDP's reader, see pp_scan_queues) */
    /* The reader may have taken the datagram already (between the queueing and this callback;
     * also when the scan delivered others of the same batch). It is then the packet this CPU
     * saw last, moments ago, in the socket's own namespace: deliver that one if its path is
     * still open (the CPU that calls sk_data_ready queued its own datagram in that batch). */
    /* Seen longer ago than moments (a vCPU stalled between the datagram's last hop and its
     * callback: 1.1 ms seen, #17): only a packet on its way to this socket's port. */
    (void)found;
    u64 now = bpf_ktime_get_ns();
    struct pp_lastseen *ls = pp_recent_in(sk, direct, now, PP_LASTSEEN_DELIVER_NS);
    if (!ls || !ls->skb)
        return 0;   /* (skb 0: that packet is done, see pp_summary) */
    struct pp_pkt p;
    __builtin_memset(&p, 0, PP_PKT_ZERO);
    p.id = ls->id;
    struct pp_pathkey key = {.skb = ls->skb, .id = ls->id};
    struct pp_path *v = paths.lookup(&key);
    if (!v)
        return 0;
    if (now - ls->ts > PP_LASTSEEN_NS) {
        u16 num = PP_RD(u16, sk + PP_OFF_SK_NUM, direct);
        if (v->inner.protocol != 17 ||
            (v->inner.dport != num && !(v->nat_hop && v->nat.dport == num)))
            return 0;
        pp_count(PP_CNT_DELIVER_LATE);
    }
    ls->ts = 0;
    pp_summary(ctx, 0, hook, PP_KIND_DELIVER, 0, 0, sk, &p, 0, now, 0, 0, 0, 0, direct,
               ls->skb, 1);
#else
    /* Events mode, the same fallback when the scan found nothing: the reader took the
     * datagram this CPU queued (seen as the 2,000-ID two-sender test's false `lost`, ~1 run
     * in 4). A delivery event of the packet this CPU saw pass last (not dropped since), on its
     * skb; flagged as known from the map: user space never begins a packet with it, and the
     * same skb delivered to the same socket twice is one delivery. */
    if (found || skproto != 17)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct pp_lastseen *ls = pp_recent_in(sk, direct, now, PP_LASTSEEN_DELIVER_NS);
    if (!ls || !ls->skb || ls->proto != 17)
        return 0;
    if (now - ls->ts > PP_LASTSEEN_NS) {
        /* (as summary mode: seen longer ago, only on its way to this socket's port; ports as
         * loaded, the destination in the high half, network order as inet_sport) */
        if ((u16)(ls->ports >> 16) != PP_RD(u16, sk + PP_OFF_INET_SPORT, direct))
            return 0;
        pp_count(PP_CNT_DELIVER_LATE);
    }
    struct pp_pkt p;
    __builtin_memset(&p, 0, PP_PKT_ZERO);
    p.id = ls->id;
    u64 lskb = ls->skb;
    ls->ts = 0;
    pp_record_event(ctx, lskb, hook, PP_KIND_DELIVER, 0, 0, sk, &p, PP_F_FROM_MAP, now, 0,
                    direct);
#endif
    return 0;
}

/* sock:sock_recv_length: a socket's reader returns from a read (recvmsg; also peeks, partial
 * reads and empty reads). The datagram it reads next is in the socket: the head of UDP's
 * reader_queue, or (that queue empty) of the receive queue. Delivered if its packet is open
 * (known by the skb map: no parse). Every datagram read but the first after an empty queue is
 * thus seen before it is read, also where a batch's callbacks (pp_scan_queues, from the tail)
 * have not reached it yet. UDP sockets only (TCP verdicts come from tcp_probe and the socket
 * queue's tail). A datagram that is dropped is never in a socket queue. */
static __always_inline int pp_reader(void *ctx, u64 sk, u16 hook, int direct)
{
    if (!pp_is_kptr(sk))
        return 0;
#ifdef PP_PROTO_UDP
    if (PP_RD(u16, sk + PP_OFF_SK_PROTO, direct) != 17 /* IPPROTO_UDP */)
        return 0;
    if (!pp_armed())
        return 0;   /* no traced packet yet */
#ifdef PP_PORT
    /* a socket on another port holds a traced packet only after NAT (as pp_deliver) */
    if (PP_RD(u16, sk + PP_OFF_SK_NUM, direct) != PP_PORT && !pp_nat_candidate(sk, direct))
        return 0;
#endif
    pp_scan_queues(ctx, sk, hook, direct, 1, 1);
#endif
    return 0;
}

/* sock:inet_sock_set_state: a TCP socket's state change made by a segment that queues
 * nothing (the handshake's last ACK: SYN_RECV -> ESTABLISHED; the ACK of our FIN: FIN_WAIT1 ->
 * FIN_WAIT2, LAST_ACK -> CLOSE, CLOSING -> TIME_WAIT). The tracepoint has no skb: the segment is
 * the packet this CPU saw pass moments ago (the change runs in the softirq that received it, or
 * right after in the socket owner's release_sock: same CPU), if its flow is the socket's (ports,
 * netns). It ends that packet's path as consumed. */
static __always_inline int pp_state(void *ctx, u64 sk, int old, int new, u16 hook, int direct)
{
    if (!((old == 3 && new == 1) || (old == 4 && new == 5) || (old == 9 && new == 7) ||
          (old == 11 && new == 6)))
        return 0;
#ifndef PP_SUMMARY
    /* events mode: the same link, by the flow the CPU noted with the segment's last event
     * (there is no path): a consume record of that key, at the socket */
    if (!pp_is_kptr(sk))
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct pp_lastseen *ls = pp_recent(sk, direct, now);
    if (!ls || ls->proto != 6)
        return 0;
    /* (ports as loaded: sport low half; the socket's own port is the segment's destination) */
    u16 sport = PP_RD(u16, sk + PP_OFF_INET_SPORT, direct);
    u16 dport = PP_RD(u16, sk + PP_OFF_SK_DPORT, direct);
    if ((u16)(ls->ports >> 16) != sport || (u16)ls->ports != dport)
        return 0;
    struct pp_pkt p;
    __builtin_memset(&p, 0, PP_PKT_ZERO);
    p.id = ls->id;
    ls->ts = 0;
    pp_record_event(ctx, 0, hook, PP_KIND_CONSUME, 0, 0, sk, &p, 0, now, 0, direct);
#else
    if (!pp_is_kptr(sk))
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct pp_lastseen *ls = pp_recent(sk, direct, now);
    if (!ls || !ls->skb)
        return 0;
    struct pp_pathkey key = {.skb = ls->skb, .id = ls->id};
    struct pp_path *v = paths.lookup(&key);
    if (!v || v->inner.protocol != 6)
        return 0;
    /* (not skc_num: unhashing on the way to CLOSE zeroes it before the tracepoint fires) */
    u16 sport = PP_RD(u16, sk + PP_OFF_INET_SPORT, direct);   /* network order */
    u16 dport = PP_RD(u16, sk + PP_OFF_SK_DPORT, direct);
    if (v->inner.dport != __builtin_bswap16(sport) || v->inner.sport != __builtin_bswap16(dport))
        return 0;
    struct pp_pkt p;
    __builtin_memset(&p, 0, PP_PKT_ZERO);
    p.id = ls->id;
    ls->ts = 0;
    pp_summary(ctx, 0, hook, PP_KIND_CONSUME, 0, 0, sk, &p, 0, now, 0, 0, 0, 0, direct,
               ls->skb, 1);
#endif
    return 0;
}

/* kretprobe hooks: the entry stashes the skb per task, the return emits the event with the
 * function's return value in `reason` (nonzero: the function refused the packet). */
BPF_HASH(retstash, u64, u64, 10240);

static __always_inline int pp_stash(u64 skb)
{
    u64 key = bpf_get_current_pid_tgid();
    retstash.update(&key, &skb);
    return 0;
}

static __always_inline int pp_ret(void *ctx, u16 hook, long rc)
{
    u64 key = bpf_get_current_pid_tgid();
    u64 *skb = retstash.lookup(&key);
    if (!skb)
        return 0;
    u64 s = *skb;
    retstash.delete(&key);
    return pp_handle(ctx, s, PP_HK(hook, PP_KIND_PASS), 0, 0, 0);
}

/* ---- generated entry points follow ---- */
