"""The `drops` command's records (struct pp_dropinfo, struct pp_dropflow in bpf/pktpath.h, layouts
derived by records.py), decoded into plain dicts: one per drop shown in detail, one per flow
counted. Pure Python: the same dicts come from a live run and from a recording."""
import time

from pktpath.events import records

DROPINFO = records.LAYOUTS["pp_dropinfo"]
DROPFLOW = records.LAYOUTS["pp_dropflow"]
NO_SK_STATE = records.DEFINES["PP_NO_SK_STATE"]
TUNNELS = {records.DEFINES["PP_TUN_VXLAN"]: "vxlan", records.DEFINES["PP_TUN_GENEVE"]: "geneve"}

IP_PROTOCOLS = {1: "icmp", 2: "igmp", 4: "ipip", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre",
                50: "esp", 51: "ah", 58: "icmpv6", 89: "ospf", 103: "pim", 112: "vrrp",
                132: "sctp", 136: "udplite"}
ETHERTYPES = {0x0806: "arp", 0x8035: "rarp", 0x88cc: "lldp", 0x8100: "vlan", 0x88a8: "qinq",
              0x8847: "mpls"}
# include/net/tcp_states.h
TCP_STATES = ("?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
              "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
              "BOUND_INACTIVE")
TCP_FLAGS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"),
             (0x20, "URG"), (0x40, "ECE"), (0x80, "CWR"))
ARP_OPS = {1: "request", 2: "reply"}
PORTED = ("tcp", "udp", "sctp", "udplite")


def tcp_flags(byte):
    """"SYN|ACK" from a TCP header's flags byte."""
    return "|".join(name for bit, name in TCP_FLAGS if byte & bit) or "none"


def proto_name(ethertype, family, protocol):
    """"tcp", "udp", "icmp", "icmpv6", "arp", "ip proto 99", "ethertype 0x88b5", "?" (no
    headers parsed)."""
    if ethertype in (0x0800, 0x86dd):
        if not family:
            return "ipv6" if ethertype == 0x86dd else "ip"
        return IP_PROTOCOLS.get(protocol, "ip proto %d" % protocol)
    if not ethertype:
        return "?"
    return ETHERTYPES.get(ethertype, "ethertype 0x%04x" % ethertype)


def _ends(proto, family, saddr, daddr, sport, dport):
    """(src, dst) texts: "addr:port" for protocols with ports, else "addr"; None if no address."""
    if not family:
        return None, None
    src, dst = records.format_host(family, saddr), records.format_host(family, daddr)
    if proto in PORTED:
        return "%s:%d" % (src, sport), "%s:%d" % (dst, dport)
    return src, dst


def wall_time(t_ns, clock):
    """Kernel monotonic ns -> "HH:MM:SS.ffffff" local wall time, by the run's clock pair."""
    wall = (t_ns - clock["mono_ns"] + clock["wall_ns"]) / 1e9
    return time.strftime("%H:%M:%S", time.localtime(wall)) + ".%06d" % int(wall % 1 * 1e6)


class DropDecoder:
    """struct pp_dropinfo bytes -> the detail dict (the `--json` object of one drop).
    `reasons` {code: name}, `symbolize` address -> "function+0xoff", `clock` the run's clock
    pair (session.clock_pair), `netns_names` () -> {inode (str): name}, `stack` stack_id ->
    [frames] (None: no stacks)."""

    def __init__(self, reasons, symbolize, clock, netns_names, stack=None):
        self.reasons, self.symbolize, self.clock = reasons, symbolize, clock
        self.netns_names, self.stack = netns_names, stack

    def decode(self, data):
        r = DROPINFO.unpack(data)
        ethertype = r["ethertype"]
        fam, protocol = r["flow.family"], r["flow.protocol"]
        proto = proto_name(ethertype, fam, protocol)
        src, dst = _ends(proto, fam, r["flow.saddr"], r["flow.daddr"], r["flow.sport"],
                         r["flow.dport"])
        tun = TUNNELS.get(r["tun.type"])
        osrc = odst = None
        if tun:
            o = "tun.outer."
            osrc, odst = _ends("udp", r[o + "family"], r[o + "saddr"], r[o + "daddr"],
                               r[o + "sport"], r[o + "dport"])
        names = self.netns_names()
        netns = r["netns"]
        d = {
            "t_ns": r["ts"],
            "time": wall_time(r["ts"], self.clock),
            "reason": self.reasons.get(r["reason"], str(r["reason"])),
            "reason_code": r["reason"],
            "location": self.symbolize(r["location"]) or "0x%x" % r["location"],
            "netns": netns,
            "netns_name": names.get(str(netns)) or names.get(netns),
            "dev": r["dev"].split(b"\0", 1)[0].decode(errors="replace") or None,
            "ifindex": r["ifindex"] or None,
            "proto": proto,
            "src": src,
            "dst": dst,
            "tunnel": tun,
            "vni": r["tun.vni"] if tun else None,
            "outer_src": osrc,
            "outer_dst": odst,
            "tcp_flags": tcp_flags(r["tcp_flags"]) if proto == "tcp" else None,
            "icmp_type": r["msg_type"] if proto in ("icmp", "icmpv6") else None,
            "icmp_code": r["msg_code"] if proto in ("icmp", "icmpv6") else None,
            "arp_op": ARP_OPS.get(r["msg_type"], r["msg_type"]) if proto == "arp" else None,
            "sk_state": None if r["sk_state"] == NO_SK_STATE else (
                TCP_STATES[r["sk_state"]] if r["sk_state"] < len(TCP_STATES)
                else str(r["sk_state"])),
            "pid": r["pid"],
            "comm": r["comm"].split(b"\0", 1)[0].decode(errors="replace"),
            "cpu": r["cpu"],
            "stack": None,
        }
        if self.stack is not None and r["stack_id"] >= 0:
            d["stack"] = self.stack(r["stack_id"])
        return d


def decode_flow(key, count, reasons):
    """One struct pp_dropflow key and its count -> a flow dict (the summary's top flows)."""
    r = DROPFLOW.unpack(key)
    proto = proto_name(r["ethertype"], r["flow.family"], r["flow.protocol"])
    src, dst = _ends(proto, r["flow.family"], r["flow.saddr"], r["flow.daddr"],
                     r["flow.sport"], r["flow.dport"])
    tun = TUNNELS.get(r["tun"])
    return {"drops": count, "proto": proto, "src": src, "dst": dst,
            "reason": reasons.get(r["reason"], str(r["reason"])), "netns": r["netns"],
            "tunnel": tun, "vni": r["vni"] if tun else None}
