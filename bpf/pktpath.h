/* pktpath: every record, map key and counter that user space reads, declared once.
 *
 * The BPF program (bpf/pktpath.c) is compiled with this file prepended. User space does not
 * mirror it by hand: pktpath/events/records.py parses this file (its #defines, enums and
 * struct bodies) and derives the struct formats, offsets, kinds, flags and counter names from
 * it. tests/unit/test_events.py parses it again, independently, and checks both agree.
 * Keep to the subset that parser reads: fixed-width __u8/__u16/__u32/__u64/__s32/char fields,
 * arrays with a literal or #defined length, and nested `struct pp_*` (as fields or arrays).
 * Arrays of scalars are read by user space as raw bytes. A field named _* is padding.
 */
#ifndef PKTPATH_H
#define PKTPATH_H

#define PP_DEV_LEN 16
#define PP_ADDR_LEN 16

/* event kinds */
#define PP_KIND_PASS    0   /* the packet went through a hook */
#define PP_KIND_DROP    1   /* kfree_skb: dropped, with reason and location */
#define PP_KIND_DELIVER 2   /* queued to a socket's receive queue */
#define PP_KIND_CONSUME 3   /* the stack finished with it normally, no data queued (TCP) */

/* event flags */
#define PP_F_ENCAP    1     /* this sighting was encapsulated: the record's tunnel is set */
#define PP_F_FROM_MAP 2     /* headers not parseable here: ID taken from the skb->ID map */
#define PP_F_DATA     4     /* tcp_probe: the segment carries data (or FIN): it is queued */
#define PP_F_REWRITTEN 8    /* parsed, but not the filter's flow: ID taken from the skb->ID map
                             * (a traced packet after NAT, or a stale entry: never a packet's
                             * first sighting) */
#define PP_F_HOP_SET  0x80  /* summary mode: this hop slot was written */

/* tunnel types (struct pp_tunnel), recognized by the outer UDP destination port */
#define PP_TUN_NONE   0
#define PP_TUN_VXLAN  1
#define PP_TUN_GENEVE 2

/* A flow: one IP + transport header's addresses and ports.
 * Addresses are the header's bytes (network order). An IPv4 address takes the first 4 bytes and
 * the other 12 are zero (not v4-mapped: one 8-byte store writes an address and clears the next
 * 4 bytes); `family` says which it is. */
struct pp_flow {
    __u64 saddr[2];         /* PP_ADDR_LEN bytes, network order (8-aligned: 8-byte stores) */
    __u64 daddr[2];
    __u8  family;           /* 4 or 6; 0: not parsed (addresses and ports zero) */
    __u8  protocol;         /* IPPROTO_UDP (17) or IPPROTO_TCP (6) */
    __u16 sport;            /* host order */
    __u16 dport;
    __u16 _fpad;
};

/* The encapsulation a packet was seen in: its type, VNI and outer (underlay) flow. */
struct pp_tunnel {
    __u8  type;             /* PP_TUN_*; PP_TUN_NONE: vni and outer are zero */
    __u8  _tpad[3];
    __u32 vni;              /* VXLAN / Geneve network identifier (24 bits) */
    struct pp_flow outer;   /* at offset 8 */
};

/* Events mode: one record per sighting. */
struct pp_event {
    __u64 ts;               /* bpf_ktime_get_ns() */
    __u64 skb;              /* skb address */
    __u64 location;         /* drop: kernel address of the kfree_skb caller */
    __u64 id;               /* packet key: the payload's ID, or a hash of its headers */
    __u32 netns;            /* netns inode */
    __u32 ifindex;
    __u32 reason;           /* drop: enum skb_drop_reason value */
    __u16 hook;             /* index into the hook list the program was generated with */
    __u16 cpu;
    __u8  kind;             /* PP_KIND_* */
    __u8  flags;            /* PP_F_* */
    __u16 port;             /* deliver: the socket's local port */
    char  dev[PP_DEV_LEN];
    __s32 stack_id;         /* drop with --stack: id in the stacks map, else -1 */
    struct pp_flow inner;   /* the traced flow: inner headers when encapsulated, else the only */
    struct pp_tunnel tun;   /* type PP_TUN_NONE unless flags has PP_F_ENCAP */
};


/* Summary mode (the default): the kernel keeps each packet's path in a map and emits one
 * struct pp_path per packet when it is delivered or dropped; user space sweeps out paths that
 * went quiet (lost). A record carries the header and the hops recorded, not the empty slots. */
#define PP_MAX_HOPS 32

struct pp_hop {
    __u32 dt;               /* ns since the packet's first sighting */
    __u16 hook;
    __u8  kind;             /* PP_KIND_* */
    __u8  flags;            /* PP_F_* */
    __u32 ifindex;
    __u32 netns;
    __u16 cpu;
    __u16 _hpad;
    char  dev[PP_DEV_LEN];
};

struct pp_path {
    __u64 first_ts;
    __u64 last_ts;
    __u64 skb;              /* first skb seen */
    __u64 location;         /* final drop: kfree_skb caller */
    __u64 id;               /* packet key (as pp_event.id) */
    __u32 reason;           /* final drop: enum skb_drop_reason */
    __u16 port;             /* deliver: socket's local port */
    __u8  final_kind;       /* PP_KIND_DROP / _DELIVER / _CONSUME, or PP_KIND_PASS if still open */
    __u8  ktun;             /* kernel side only: tun is recorded */
    __u32 nhops;            /* hops recorded (may exceed PP_MAX_HOPS: the rest were not kept) */
    __s32 stack_id;
    __u64 last_skb;         /* kernel side only: skb and data buffer of the last sighting */
    __u64 last_head;
    __u32 last_tail;
    __u32 kports;           /* kernel side only: the first sighting's ports and IPv4 addresses */
    __u64 first_dev;        /* kernel side only: the net_device of the first sighting */
    __u64 kaddrs;           /* (as loaded; IPv6: 0), compared at every hop (pp_flow_moved) */
    struct pp_flow inner;   /* first sighting */
    struct pp_tunnel tun;   /* first encapsulated sighting (PP_TUN_NONE: never seen in one) */
    struct pp_flow nat;     /* NAT: the flow first seen rewritten (differing from inner) */
    __u32 nat_hop;          /* the hop slot where it was first seen; 0: never rewritten */
    __u32 _pad4;
    struct pp_hop hops[PP_MAX_HOPS];
};

/* --pcap: the headers of a traced packet as seen at one hop, up to PP_SNAP_LEN bytes from its
 * Ethernet header (mac_header set) or else its IP header. Emitted to the `snaps` ring only in a
 * program built with -DPP_PCAP; user space joins a snap to its packet's hop by id, hook and
 * time stamp (pktpath/process/snaps.py). */
#define PP_SNAP_LEN 128
#define PP_SNAP_L2  1       /* data starts at the Ethernet header, else at the IP header */

struct pp_snap {
    __u64 ts;               /* bpf_ktime_get_ns(): the hop's time stamp */
    __u64 skb;              /* skb address */
    __u64 id;               /* packet key (as pp_event.id) */
    __u32 netns;            /* netns inode (of the socket at a deliver hook) */
    __u32 ifindex;
    __u32 len;              /* original length from the first byte copied */
    __u16 caplen;           /* bytes in data (<= PP_SNAP_LEN) */
    __u16 hook;             /* index into the hook list */
    __u8  kind;             /* PP_KIND_* */
    __u8  flags;            /* PP_SNAP_L2 */
    __u16 port;             /* deliver: the socket's local port */
    __u32 _spad;
    char  dev[PP_DEV_LEN];
    __u8  data[PP_SNAP_LEN];
};

/* --drops all (dropwatch mode): the key of the `dropcounts` hash (value: __u64 drops) */
struct pp_dropkey {
    __u64 location;         /* kfree_skb caller */
    __u32 reason;           /* enum skb_drop_reason */
    __u32 netns;            /* netns inode of skb->dev, 0 if none */
};

/* `drops` (the drop monitor with details): one record per drop shown in detail. Details are
 * rate-limited per (location, reason) in the kernel (pp_dropquota); every drop is counted in
 * `dropcounts` all the same, and per flow in `dropflows` (struct pp_dropflow). */
#define PP_COMM_LEN 16
#define PP_NO_SK_STATE 0xff

struct pp_dropinfo {
    __u64 ts;               /* bpf_ktime_get_ns() */
    __u64 location;         /* kfree_skb caller */
    __u32 reason;           /* enum skb_drop_reason */
    __u32 netns;            /* netns inode of skb->dev (else of skb->sk), 0 if none */
    __u32 ifindex;
    __u32 pid;              /* the task on CPU (tgid): may be unrelated to the packet */
    __u32 tid;
    __s32 stack_id;         /* with --stack: id in the stacks map, else -1 */
    __u16 ethertype;        /* the (inner) packet's L3 protocol: 0x0800, 0x86dd, 0x0806; 0: none */
    __u8  tcp_flags;        /* TCP: the header's flags byte */
    __u8  sk_state;         /* skb->sk's state (TCP_*), PP_NO_SK_STATE: no socket */
    __u8  msg_type;         /* ICMP/ICMPv6 type; ARP: the opcode */
    __u8  msg_code;         /* ICMP/ICMPv6 code */
    __u16 cpu;
    char  dev[PP_DEV_LEN];
    char  comm[PP_COMM_LEN];
    struct pp_flow flow;    /* inner flow when tunnelled (tun.type != PP_TUN_NONE), else the only */
    struct pp_tunnel tun;
};

/* `drops`: the key of the `dropflows` LRU hash (value: __u64 drops) */
struct pp_dropflow {
    struct pp_flow flow;
    __u32 reason;
    __u32 netns;
    __u32 vni;              /* tunnelled: the VNI, else 0 */
    __u16 ethertype;
    __u8  tun;
    __u8  _dpad;
};

/* `drops`: the value of the `dropquota` hash (key: struct pp_dropkey with netns 0) */
struct pp_dropquota {
    __u64 window;           /* ts / PP_DROP_WINDOW_NS of the current window */
    __u32 used;             /* details emitted in this window */
    __u32 lost;             /* details that found the ring buffer full */
};

/* The `counters` per-CPU array: one __u64 per CPU at each index (user space sums the CPUs).
 * User space reports each as the lower-case name after PP_CNT_ (pp_wakeup's SUBMITTED is
 * internal). */
enum pp_counter {
    PP_CNT_LOST,            /* events lost (ring buffer full, or the path table full) */
    PP_CNT_UNREACHABLE,     /* matched packets whose ID lay beyond the linear data */
    PP_CNT_FROM_MAP,        /* events attributed through skbids */
    PP_CNT_SUBMITTED,       /* records submitted (pp_wakeup) */
    PP_CNT_LOST_PATHS_FULL, /* of the lost events, those lost because the path table was full */
    PP_CNT_RESCUED,         /* records that went to the rescue ring */
    PP_CNT_FROM_FRAGS,      /* IDs read from page fragments */
    PP_CNT_IP6_EXT_UNWALKED,  /* IPv6 packets whose extension header chain was longer than the
                                 program walks (or ran past the bytes it reads): not followed */
    PP_CNT_GENEVE_OPTS_UNREAD,  /* Geneve packets whose options ran past the bytes the program
                                   reads: inner headers not parsed */
    PP_CNT_DELIVER_RESUMED, /* delivery scans that went on where a batch's last scan stopped */
    PP_CNT_DELIVER_HEAD,    /* deliveries found at a queue's head by a scan that ran out of depth */
    PP_CNT_DELIVER_READER,  /* deliveries found at a queue's head when its reader returned (the
                               datagram it reads next): none of the callbacks had reached it */
    PP_CNT_DELIVER_LATE,    /* deliveries of the packet this CPU saw last, taken by the reader
                               before its callback, seen at its last hop more than
                               PP_LASTSEEN_NS before (a stalled CPU): its flow is the socket's */
    PP_CNT_COUNT
};

#endif
