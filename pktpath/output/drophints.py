"""One line per kernel drop reason (enum skb_drop_reason, by name without SKB_DROP_REASON_): its
usual cause and what to check. The `drops` command prints it the first time a reason shows up and
in its summary. A reason not listed gets no hint (names come from the running kernel)."""

HINTS = {
    "NOT_SPECIFIED": "the caller gave no reason: look at the location (and --stack) to see which "
                     "code path freed it",
    "NO_SOCKET": "nothing listens on that port in that namespace (or it listens on another "
                 "address): check `ss -lnptu` inside the namespace",
    "SOCKET_RCVBUFF": "the reader is too slow or its receive buffer too small: check the "
                      "process reading the socket, raise SO_RCVBUF / net.core.rmem_max",
    "SOCKET_BACKLOG": "the socket's backlog was full while its owner held it: the reader is "
                      "too slow",
    "SOCKET_FILTER": "a socket filter (SO_ATTACH_FILTER / BPF) on the socket refused it",
    "PROTO_MEM": "the protocol's memory limit is reached: check net.ipv4.udp_mem / tcp_mem and "
                 "/proc/net/sockstat",
    "NETFILTER_DROP": "a firewall rule dropped it (the kernel does not say which table or chain "
                      "at the drop; --stack names the hook): in that namespace find the rule "
                      "whose counter grows (`iptables -L -v -n -x` with -t raw/mangle/nat/filter, "
                      "`nft list ruleset` with counters) or trace the flow (`nft monitor trace` "
                      "after a `meta nftrace set 1` rule; iptables: -t raw ... -j TRACE)",
    "OTHERHOST": "addressed to another host's MAC (promiscuous or bridged device): usually "
                 "harmless",
    "IP_CSUM": "bad IPv4 header checksum: a corrupting link, NIC or middlebox",
    "IP_INHDR": "malformed IPv4 header (version, length, TTL): check the sender",
    "IP_RPFILTER": "reverse-path filter: the source is not routed back through this device; "
                   "check rp_filter and the routes",
    "UNICAST_IN_L2_MULTICAST": "unicast IP in a link-layer multicast/broadcast frame",
    "XFRM_POLICY": "an IPsec policy refused it: check `ip xfrm policy`",
    "IP_NOPROTO": "no handler for this IP protocol here (module not loaded?)",
    "PKT_TOO_SMALL": "shorter than its headers say: a truncating link or a malformed sender",
    "TCP_CSUM": "bad TCP checksum: a corrupting link, NIC or checksum offload problem",
    "UDP_CSUM": "bad UDP checksum: a corrupting link, NIC or checksum offload problem",
    "NEIGH_FAILED": "the neighbour (ARP/NDP) could not be resolved: check that the next hop "
                    "answers (`ip neigh`)",
    "NEIGH_QUEUEFULL": "too many packets waiting for one ARP/NDP resolution: the next hop does "
                       "not answer; raise unres_qlen_bytes only if it is slow",
    "NEIGH_DEAD": "the neighbour entry was removed while packets waited on it",
    "TC_EGRESS": "a tc egress filter or action dropped it: check `tc filter show dev DEV "
                 "egress`",
    "TC_INGRESS": "a tc ingress filter or action dropped it: check `tc filter show dev DEV "
                  "ingress`",
    "QDISC_DROP": "the queueing discipline dropped it (queue full, policer): check `tc -s "
                  "qdisc show dev DEV`",
    "QDISC_OVERLIMIT": "the qdisc's limit was reached: check `tc -s qdisc`",
    "CPU_BACKLOG": "the per-CPU input backlog was full: raise net.core.netdev_max_backlog or "
                   "spread the load (RPS)",
    "XDP": "an XDP program dropped it: check `ip link show DEV` for an attached program",
    "TAP_FILTER": "the tap device's filter refused it",
    "TAP_TXFILTER": "the tap device's transmit filter refused it",
    "SOCKET_CLOSE": "the socket was closed with this packet still queued",
    "TCP_INVALID_SEQUENCE": "TCP segment outside the receive window: an old duplicate, or a "
                            "peer out of sync",
    "TCP_RESET": "the segment reset the connection",
    "TCP_FLAGS": "TCP segment with invalid flags for the connection's state",
    "TCP_ZEROWINDOW": "the receiver's window is zero: the reading application is too slow",
    "TCP_OLD_DATA": "data already received (retransmission): look for loss on the path",
    "TCP_OVERWINDOW": "data beyond the receive window",
    "TCP_OFOMERGE": "out-of-order data merged into data already queued",
    "TCP_RFC7323_PAWS": "PAWS: a timestamp older than the connection's (a recycled 4-tuple, "
                        "or NAT mixing hosts)",
    "TCP_LISTEN_OVERFLOW": "the listener's accept queue is full: the server does not accept "
                           "fast enough, or raise its backlog / net.core.somaxconn",
    "TCP_OFO_DROP": "out-of-order queue pruned under memory pressure",
    "TCP_MINTTL": "TTL under the socket's IP_MINTTL",
    "TCP_MD5NOTFOUND": "TCP-MD5 expected but missing (BGP sessions: check the keys)",
    "TCP_MD5UNEXPECTED": "TCP-MD5 present but not configured here",
    "TCP_MD5FAILURE": "TCP-MD5 signature mismatch: the peers' keys differ",
    "IP_OUTNOROUTES": "no route for the destination: check `ip route get DST` in that "
                      "namespace",
    "IP_INNOROUTES": "no route to forward it (or to the source): check the routes",
    "BPF_CGROUP_EGRESS": "a cgroup BPF egress program refused it: `bpftool cgroup tree`",
    "IPV6DISABLED": "IPv6 is disabled on this device or namespace",
    "IPV6_NDISC_FRAG": "fragmented neighbour discovery message",
    "IPV6_NDISC_HOP_LIMIT": "neighbour discovery message with a hop limit other than 255",
    "IPV6_NDISC_BAD_CODE": "neighbour discovery message with a bad code",
    "IPV6_NDISC_BAD_OPTIONS": "neighbour discovery message with bad options",
    "IPV6_NDISC_NS_OTHERHOST": "neighbour solicitation for an address not ours",
    "FRAG_REASM_TIMEOUT": "IP fragments never completed: a fragment was lost on the way "
                          "(check the MTU along the path)",
    "FRAG_TOO_FAR": "IP fragment too far from the others (ipfrag_max_dist)",
    "IP_TUNNEL_ECN": "tunnel ECN decapsulation refused it",
    "TUNNEL_TXINFO": "no tunnel metadata for transmission (collect_md device without a "
                     "route's tunnel key)",
    "VXLAN_INVALID_HDR": "VXLAN header with bad flags: a sender speaking another "
                         "encapsulation on this port?",
    "VXLAN_VNI_NOT_FOUND": "no VXLAN device for this VNI on the receiving host: check the "
                           "VNIs on both ends (`ip -d link show type vxlan`)",
    "VXLAN_ENTRY_EXISTS": "VXLAN FDB entry already exists",
    "VXLAN_NO_REMOTE": "no remote for this VXLAN destination: check the FDB "
                       "(`bridge fdb show dev VXLAN`)",
    "MAC_INVALID_SOURCE": "invalid source MAC (multicast or zero)",
    "IP_LOCAL_SOURCE": "packet arriving with one of our own addresses as source (a loop or "
                       "spoofing)",
    "IP_INVALID_SOURCE": "invalid source address (multicast, loopback from outside)",
    "IP_INVALID_DEST": "invalid destination address",
    "ICMP_CSUM": "bad ICMP checksum",
    "INVALID_PROTO": "protocol not valid here",
    "DEV_READY": "the device is not up (or its carrier is down): `ip link show DEV`",
    "DEV_HDR": "the device could not build the link-layer header",
    "FULL_RING": "the device's ring is full: the NIC cannot keep up",
    "NOMEM": "out of memory when allocating for the packet",
    "HDR_TRUNC": "headers truncated",
    "NO_SPACE": "no room in the transmit queue",
    "SKB_CSUM": "bad checksum",
    "SKB_GSO_SEG": "segmentation of a GSO packet failed",
    "SKB_UCOPY_FAULT": "copying from user space failed",
    "PACKET_SOCK_ERROR": "a packet socket refused it",
    "SECURITY_HOOK": "an LSM (SELinux, AppArmor) refused it",
    "IPSEC_NOSTATE": "no IPsec state for it: check `ip xfrm state`",
}


def hint(reason):
    """The hint of reason `reason` (its name), or None."""
    return HINTS.get(reason)

