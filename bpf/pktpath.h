/* pktpath: the event record, shared by the BPF program and user space.
 *
 * pktpath/events.py mirrors this layout with ctypes; tests/test_events.py parses this file and
 * checks that both agree, field by field. Change both or neither.
 */
#ifndef PKTPATH_H
#define PKTPATH_H

#define PP_DEV_LEN 16

/* event kinds */
#define PP_KIND_PASS    0   /* the packet went through a hook */
#define PP_KIND_DROP    1   /* kfree_skb: dropped, with reason and location */
#define PP_KIND_DELIVER 2   /* queued to a socket's receive queue */

/* event flags */
#define PP_F_ENCAP    1     /* outer header is VXLAN: o* fields and vni are set */
#define PP_F_FROM_MAP 2     /* headers not parseable here: ID taken from the skb->ID map */
#define PP_F_HOP_SET  0x80  /* summary mode: this hop slot was written */

struct pp_event {
    __u64 ts;               /* bpf_ktime_get_ns() */
    __u64 skb;              /* skb address */
    __u64 location;         /* drop: kernel address of the kfree_skb caller */
    __u32 id;               /* packet ID read from the payload */
    __u32 netns;            /* netns inode */
    __u32 ifindex;
    __u32 reason;           /* drop: enum skb_drop_reason value */
    __u32 vni;
    __u32 saddr;            /* inner (or only) IPv4 header, network order */
    __u32 daddr;
    __u32 osaddr;           /* outer IPv4 header when encapsulated, network order */
    __u32 odaddr;
    __u16 sport;            /* host order */
    __u16 dport;
    __u16 osport;
    __u16 odport;
    __u16 hook;             /* index into the hook list the program was generated with */
    __u16 cpu;
    __u8  kind;             /* PP_KIND_* */
    __u8  flags;            /* PP_F_* */
    __u16 port;             /* deliver: the socket's local port */
    char  dev[PP_DEV_LEN];
    __s32 stack_id;         /* drop with --stack: id in the stacks map, else -1 */
};


/* Summary mode (the default): the kernel keeps each packet's path in a map and emits one
 * struct pp_path per packet when it is delivered or dropped; user space sweeps out paths that
 * went quiet (lost). */
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
    __u32 id;
    __u32 reason;           /* final drop: enum skb_drop_reason */
    __u32 vni;
    __u32 saddr;            /* inner (or only) header, network order */
    __u32 daddr;
    __u32 osaddr;           /* outer header, first encapsulated sighting */
    __u32 odaddr;
    __u16 sport;
    __u16 dport;
    __u16 osport;
    __u16 odport;
    __u16 port;             /* deliver: socket's local port */
    __u8  final_kind;       /* PP_KIND_DROP / PP_KIND_DELIVER, or PP_KIND_PASS if still open */
    __u8  has_encap;
    __u32 nhops;            /* hops recorded (may exceed PP_MAX_HOPS: the rest were not kept) */
    __s32 stack_id;
    __u64 last_skb;         /* kernel side only: skb and data buffer of the last sighting */
    __u64 last_head;
    __u32 last_tail;
    __u32 _pad2;
    struct pp_hop hops[PP_MAX_HOPS];
};

#endif
