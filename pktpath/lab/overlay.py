"""`run.py lab up|down|status|fault NAME|fault --list|clear`: a two-host VXLAN overlay built from
network namespaces on this machine, the shape of a Docker/flannel overlay:

  pp-ctrA [eth0 198.51.100.1] --veth-- pp-vA [pp-br] pp-vx (VNI 42) -- pp-ul 192.0.2.1   pp-hostA
                                                                            | underlay veth
  pp-ctrB [eth0 198.51.100.2] --veth-- pp-vB [pp-br] pp-vx (VNI 42) -- pp-ul 192.0.2.2   pp-hostB

Addresses are RFC 5737 documentation ranges, every name starts with `pp-`. A UDP sink listens on
pp-ctrB:5000. `up` is idempotent (it rebuilds), `down` removes everything, even a half-built lab.

`up --underlay ipv6` runs the tunnel over IPv6 (2001:db8:1::1 -> 2001:db8:1::2), `--overlay ipv6`
gives the containers IPv6 (2001:db8:2::1 -> 2001:db8:2::2): documentation prefixes (RFC 3849),
added with `nodad`. `--tunnel geneve` uses Geneve devices instead of VXLAN where the kernel has
them. The lab remembers its shape (RUN_DIR/shape) for `fault`, `clear` and `addresses()`.
"""
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tabulate import tabulate

from pktpath.errors import UserError

PREFIX = "pp-"
LAB_NS = ("pp-hostA", "pp-hostB", "pp-ctrA", "pp-ctrB")
SENDER_NS, RECEIVER_NS = "pp-ctrA", "pp-ctrB"
SRC_IP, DST_IP = "198.51.100.1", "198.51.100.2"
UNDERLAY_A, UNDERLAY_B = "192.0.2.1", "192.0.2.2"
PORT, VNI, VXLAN_PORT, GENEVE_PORT = 5000, 42, 4789, 6081
# family -> (A's address, B's address, prefix length)
UNDERLAY = {"ipv4": (UNDERLAY_A, UNDERLAY_B, 24), "ipv6": ("2001:db8:1::1", "2001:db8:1::2", 64)}
OVERLAY = {"ipv4": (SRC_IP, DST_IP, 24), "ipv6": ("2001:db8:2::1", "2001:db8:2::2", 64)}
FAMILIES = ("ipv4", "ipv6")
TUNNELS = ("vxlan", "geneve")
DEFAULT_SHAPE = {"underlay": "ipv4", "overlay": "ipv4", "tunnel": "vxlan"}
MAC = {"A": "02:00:00:00:00:0a", "B": "02:00:00:00:00:0b"}
RUN_DIR = "/run/pktpath-lab"
SINK_PID = os.path.join(RUN_DIR, "sink.pid")
FAULT_FILE = os.path.join(RUN_DIR, "faults")
SHAPE_FILE = os.path.join(RUN_DIR, "shape")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> what it breaks, and what pktpath reports for it (checked by tests/test_lab_faults.py)
FAULTS = {
    "no-listener": {
        "breaks": "stops the UDP sink on pp-ctrB:5000",
        "expect": "dropped, reason NO_SOCKET, at __udp4_lib_rcv (IPv6: __udp6_lib_rcv) in "
                  "pp-ctrB"},
    "iptables-drop": {
        "breaks": "nftables in pp-ctrB drops datagrams to port 5000 whose packet ID is odd",
        "expect": "odd IDs dropped, reason NETFILTER_DROP, at nf_hook_slow in pp-ctrB; "
                  "even IDs delivered"},
    "vni-mismatch": {
        "breaks": "pp-hostB's VXLAN device uses VNI 43 while pp-hostA sends VNI 42",
        "expect": "dropped, reason VXLAN_VNI_NOT_FOUND, in pp-hostB (at VXLAN decap)"},
    "underlay-mtu": {
        "breaks": "underlay MTU 1280 (VXLAN devices follow: 1230) with DF set, containers still "
                  "at 1450: datagrams over ~1200 bytes cannot cross (send --size 1300)",
        "expect": "large datagrams dropped in pp-hostA at the bridge, before encapsulation "
                  "(br_nf_dev_queue_xmit or br_dev_queue_push_xmit); small ones delivered"},
    "rcvbuf-full": {
        "breaks": "the sink on pp-ctrB keeps a tiny receive buffer and never reads",
        "expect": "the first datagrams delivered, the rest dropped, reason SOCKET_RCVBUFF, "
                  "in pp-ctrB"},
    "link-down": {
        "breaks": "pp-vB (pp-hostB's bridge port to pp-ctrB) is down",
        "expect": "dropped in pp-hostB by the bridge, reason NO_TX_TARGET "
                  "(br_handle_frame_finish): it never reaches pp-ctrB"},
}


def _run(cmd, check=True):
    """Run a command quietly; UserError with its stderr's first line on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise UserError("lab: `%s` failed: %s" % (" ".join(cmd), msg[0] if msg else p.returncode))
    return p


def _ip(*args, ns=None, check=True):
    return _run(["ip"] + (["-n", ns] if ns else []) + list(args), check=check)


def _require_root():
    if os.geteuid() != 0:
        raise UserError("the lab creates network namespaces: run as root")
    if not shutil.which("ip"):
        raise UserError("`ip` (iproute2) is not installed: run `make deps`")


def _namespaces():
    p = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.startswith(PREFIX)]


def _root_links():
    p = _run(["ip", "-o", "link", "show"], check=False)
    out = []
    for line in p.stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            out.append(name)
    return out


def shape():
    """The running lab's shape: {"underlay", "overlay": "ipv4"|"ipv6", "tunnel": "vxlan"|
    "geneve"} (the default when the lab is down or older)."""
    try:
        with open(SHAPE_FILE) as f:
            return dict(DEFAULT_SHAPE, **json.load(f))
    except (OSError, ValueError):
        return dict(DEFAULT_SHAPE)


def addresses(sh=None):
    """The filter for the lab of shape `sh` (default: the running one): {shost, dhost, sip, dip}."""
    sh = sh or shape()
    ua, ub, _ = UNDERLAY[sh["underlay"]]
    oa, ob, _ = OVERLAY[sh["overlay"]]
    return {"shost": ua, "dhost": ub, "sip": oa, "dip": ob}


def trace_args(sh=None):
    """Command-line flags that point `-c configs/lab.yaml` at the lab of shape `sh`."""
    return [x for k, v in addresses(sh).items() for x in ("--" + k, v)]


def _underlay(side, sh):
    a, b, _ = UNDERLAY[sh["underlay"]]
    return (a, b) if side == "A" else (b, a)


def _nodad(addr):
    return ["nodad"] if ":" in addr else []


def _build_host(side, sh):
    host, ctr = "pp-host" + side, "pp-ctr" + side
    local, remote = _underlay(side, sh)
    _ip("link", "add", "pp-br", "type", "bridge", ns=host)
    _ip("link", "set", "pp-br", "up", ns=host)
    _add_tunnel(host, VNI, local, remote, sh)
    # container veth: created in the root ns with lab-only names, then moved and renamed
    _ip("link", "add", "pp-v" + side, "type", "veth", "peer", "name", "pp-e" + side)
    _ip("link", "set", "pp-v" + side, "netns", host)
    _ip("link", "set", "pp-e" + side, "netns", ctr)
    _ip("link", "set", "pp-e" + side, "name", "eth0", ns=ctr)
    _ip("link", "set", "pp-v" + side, "master", "pp-br", ns=host)
    _ip("link", "set", "pp-v" + side, "up", ns=host)
    src, dst, plen = OVERLAY[sh["overlay"]]
    addr, peer = (src, dst) if side == "A" else (dst, src)
    _ip("link", "set", "eth0", "address", MAC[side], "mtu", "1450", ns=ctr)
    _ip("addr", "add", "%s/%d" % (addr, plen), "dev", "eth0", *_nodad(addr), ns=ctr)
    _ip("link", "set", "eth0", "up", ns=ctr)
    # static neighbour: the first datagrams are not lost to ARP / neighbour discovery
    other = "B" if side == "A" else "A"
    _ip("neigh", "replace", peer, "lladdr", MAC[other], "dev", "eth0", "nud", "permanent", ns=ctr)


def _add_tunnel(host, vni, local, remote, sh=None, df=None):
    """The host's tunnel device pp-vx (VXLAN, or Geneve), a port of its bridge. `df` (IPv4
    underlay only: IPv6 never fragments in the path)."""
    sh = sh or shape()
    if sh["tunnel"] == "geneve":
        _ip("link", "add", "pp-vx", "type", "geneve", "id", str(vni), "remote", remote,
            "dstport", str(GENEVE_PORT), *(["df", df] if df and ":" not in local else []),
            ns=host)
    else:
        extra = ["df", df] if df and ":" not in local else []
        _ip("link", "add", "pp-vx", "type", "vxlan", "id", str(vni), "local", local, "remote",
            remote, "dstport", str(VXLAN_PORT), "dev", "pp-ul", *extra, ns=host)
    _ip("link", "set", "pp-vx", "master", "pp-br", ns=host)
    _ip("link", "set", "pp-vx", "up", ns=host)


def geneve_supported():
    """Whether this kernel can make Geneve devices (CONFIG_GENEVE): "" if so, else why not."""
    p = _ip("link", "add", "pp-gnvchk", "type", "geneve", "id", "1", "remote", "192.0.2.9",
            check=False)
    if p.returncode == 0:
        _ip("link", "del", "pp-gnvchk", check=False)
        return ""
    return (p.stderr or p.stdout).strip().splitlines()[0] if (p.stderr or p.stdout).strip() \
        else "ip link add ... type geneve failed"


def up(underlay="ipv4", overlay="ipv4", tunnel="vxlan"):
    """Build the lab (after removing any earlier or half-built one) and start the sink."""
    _require_root()
    sh = {"underlay": underlay, "overlay": overlay, "tunnel": tunnel}
    for key, choices in (("underlay", FAMILIES), ("overlay", FAMILIES), ("tunnel", TUNNELS)):
        if sh[key] not in choices:
            raise UserError("lab: --%s must be one of %s" % (key, ", ".join(choices)))
    if tunnel == "geneve":
        why = geneve_supported()
        if why:
            raise UserError("lab: --tunnel geneve: this kernel has no Geneve devices (%s; "
                            "CONFIG_GENEVE); trace built Geneve frames with `send --geneve VNI`"
                            % why)
    down()
    os.makedirs(RUN_DIR, exist_ok=True)
    try:
        with open(SHAPE_FILE, "w") as f:
            json.dump(sh, f)
        for ns in LAB_NS:
            _run(["ip", "netns", "add", ns])
            _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", "pp-ulA", "type", "veth", "peer", "name", "pp-ulB")
        plen = UNDERLAY[underlay][2]
        for side in ("A", "B"):
            addr = _underlay(side, sh)[0]
            _ip("link", "set", "pp-ul" + side, "netns", "pp-host" + side)
            _ip("link", "set", "pp-ul" + side, "name", "pp-ul", ns="pp-host" + side)
            _ip("addr", "add", "%s/%d" % (addr, plen), "dev", "pp-ul", *_nodad(addr),
                ns="pp-host" + side)
            _ip("link", "set", "pp-ul", "up", ns="pp-host" + side)
        _build_host("A", sh)
        _build_host("B", sh)
        _start_sink()
    except BaseException:
        down()
        raise


def _start_sink(*extra):
    env = dict(os.environ, PYTHONPATH=ROOT)
    if shape()["overlay"] == "ipv6":
        extra += ("--ipv6",)
    proc = subprocess.Popen(["ip", "netns", "exec", RECEIVER_NS, sys.executable, "-m",
                             "pktpath.lab.sink", "--port", str(PORT), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
                            start_new_session=True)
    line = proc.stdout.readline()  # "listening" once bound
    if "listening" not in line:
        raise UserError("lab: the UDP sink in %s did not start" % RECEIVER_NS)
    with open(SINK_PID, "w") as f:
        f.write(str(proc.pid))


def _stop_sink():
    try:
        with open(SINK_PID) as f:
            pid = int(f.read().strip())
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.02)
    except (OSError, ValueError):
        pass
    try:
        os.unlink(SINK_PID)
    except OSError:
        pass


def _sink_running():
    try:
        with open(SINK_PID) as f:
            os.kill(int(f.read().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def down():
    """Remove everything the lab made; fine to call any time, as often as you like."""
    _require_root()
    _stop_sink()
    # anything still running inside a lab namespace (a sink from a crashed run, ...)
    for ns in _namespaces():
        pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        _run(["ip", "netns", "del", ns], check=False)
    for link in _root_links():
        _ip("link", "del", link, check=False)
    shutil.rmtree(RUN_DIR, ignore_errors=True)


def active_faults():
    try:
        with open(FAULT_FILE) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []


def status():
    """{namespaces, links, sink, faults} of the lab as it is now."""
    links = {}
    for ns in _namespaces():
        p = _ip("-o", "link", "show", ns=ns, check=False)
        links[ns] = [line.split(":", 2)[1].strip().split("@")[0] for line in p.stdout.splitlines()]
    return {"namespaces": _namespaces(), "links": links, "sink": _sink_running(),
            "faults": active_faults(), "root_links": _root_links(), "shape": shape()}


def apply_fault(name):
    """Inject fault `name` (see FAULTS) into the running lab."""
    _require_root()
    if name not in FAULTS:
        close = difflib.get_close_matches(name, FAULTS, n=1)
        raise UserError("lab: unknown fault '%s'%s; see `lab fault --list`"
                        % (name, " (did you mean '%s'?)" % close[0] if close else ""))
    if set(LAB_NS) - set(_namespaces()):
        raise UserError("lab: the lab is not up (run `lab up`)")
    if name == "no-listener":
        _stop_sink()
    elif name == "iptables-drop":
        p = subprocess.run(["ip", "netns", "exec", RECEIVER_NS, "nft", "-f", "-"], text=True,
                           capture_output=True, input=(
                               "table inet pp_lab {\n chain input {\n"
                               "  type filter hook input priority 0;\n"
                               "  udp dport %d @th,64,32 & 1 == 1 drop\n }\n}\n" % PORT))
        if p.returncode:
            raise UserError("lab: nft failed: %s (is nftables installed?)"
                            % p.stderr.strip().splitlines()[0])
    elif name == "vni-mismatch":
        _ip("link", "del", "pp-vx", ns="pp-hostB")
        _add_tunnel("pp-hostB", VNI + 1, *_underlay("B", shape()))
    elif name == "underlay-mtu":
        for side in ("A", "B"):
            host = "pp-host" + side
            _ip("link", "set", "pp-ul", "mtu", "1280", ns=host)
            _ip("link", "del", "pp-vx", ns=host)
            _add_tunnel(host, VNI, *_underlay(side, shape()), df="set")
    elif name == "rcvbuf-full":
        _stop_sink()
        _start_sink("--no-read", "--rcvbuf", "1")
    elif name == "link-down":
        _ip("link", "set", "pp-vB", "down", ns="pp-hostB")
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(FAULT_FILE, "a") as f:
        f.write(name + "\n")


def clear_faults():
    """Undo every fault: the lab is healthy again."""
    _require_root()
    faults = active_faults()
    if not faults:
        return
    if "iptables-drop" in faults:
        _run(["ip", "netns", "exec", RECEIVER_NS, "nft", "delete", "table", "inet", "pp_lab"],
             check=False)
    if "vni-mismatch" in faults or "underlay-mtu" in faults:
        for side in ("A", "B"):
            host = "pp-host" + side
            _ip("link", "set", "pp-ul", "mtu", "1500", ns=host)
            _ip("link", "del", "pp-vx", ns=host, check=False)
            _add_tunnel(host, VNI, *_underlay(side, shape()))
    if "link-down" in faults:
        _ip("link", "set", "pp-vB", "up", ns="pp-hostB")
    if {"no-listener", "rcvbuf-full"} & set(faults):
        _stop_sink()
        _start_sink()
    os.unlink(FAULT_FILE)


def add_arguments(p):
    p.add_argument("action", choices=("up", "down", "status", "fault", "clear"))
    p.add_argument("fault", nargs="?", help="fault name (with `fault`)")
    p.add_argument("--list", action="store_true", help="with `fault`: list the faults")
    add_shape_arguments(p)


def add_shape_arguments(p):
    p.add_argument("--underlay", choices=FAMILIES, default="ipv4",
                   help="with `up`: the tunnel's (underlay) address family (default ipv4)")
    p.add_argument("--overlay", choices=FAMILIES, default="ipv4",
                   help="with `up`: the containers' (overlay) address family (default ipv4)")
    p.add_argument("--tunnel", choices=TUNNELS, default="vxlan",
                   help="with `up`: the tunnel devices (default vxlan; geneve needs "
                        "CONFIG_GENEVE)")


def run(args):
    if args.action == "fault" and (args.list or not args.fault):
        print(tabulate([[n, f["breaks"], f["expect"]] for n, f in FAULTS.items()],
                       headers=["FAULT", "WHAT IT BREAKS", "WHAT PKTPATH REPORTS"]))
        return 0
    if args.action == "up":
        sh = {"underlay": args.underlay, "overlay": args.overlay, "tunnel": args.tunnel}
        up(**sh)
        dst = OVERLAY[args.overlay][1]
        extra = "" if sh == DEFAULT_SHAPE else " " + " ".join(trace_args(sh))
        print("lab up (%s over %s %s): %s; sink on %s; trace it with -c configs/lab.yaml%s"
              % (args.overlay, args.underlay, args.tunnel, ", ".join(LAB_NS),
                 ("[%s]:%d" if ":" in dst else "%s:%d") % (dst, PORT), extra))
    elif args.action == "down":
        down()
        print("lab down: nothing left")
    elif args.action == "status":
        _require_root()
        st = status()
        if not st["namespaces"]:
            print("lab is down")
        for ns in st["namespaces"]:
            print("%-10s %s" % (ns, " ".join(st["links"].get(ns, []))))
        if st["namespaces"]:
            print("sink: %s; faults: %s" % ("running" if st["sink"] else "stopped",
                                            ", ".join(st["faults"]) or "none"))
            print("shape: %(overlay)s over %(underlay)s %(tunnel)s" % st["shape"])
    elif args.action == "fault":
        apply_fault(args.fault)
        print("fault %s: %s" % (args.fault, FAULTS[args.fault]["breaks"]))
    elif args.action == "clear":
        clear_faults()
        print("faults cleared")
    return 0
