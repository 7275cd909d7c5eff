"""IPv6 and Geneve on the lab, for real (root): IPv4 over an IPv6 underlay, IPv6 over IPv4 (and
over IPv6), each delivered and dropped; Geneve frames built by `send --geneve` (this kernel may
have no Geneve devices) followed by their inner ID across both hosts to a NO_SOCKET drop."""
import json
import os
import subprocess
import sys

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
LAB_YAML = os.path.join(ROOT, "configs", "lab.yaml")


@pytest.fixture
def lab_shape():
    """lab_shape(underlay, overlay): the lab rebuilt in that shape; the default lab is rebuilt
    by the next test that asks for it (conftest's lab_up checks the shape)."""
    def build(underlay, over):
        overlay.up(underlay=underlay, overlay=over)
        return overlay.addresses()
    yield build
    overlay.clear_faults()


def trace(tmp_path, filt, send, extra=()):
    out = tmp_path / "v.jsonl"
    p = subprocess.run(RUN + ["-c", LAB_YAML, "--json", str(out), "--timeline", "3"] +
                       [x for k, v in filt.items() for x in ("--" + k.replace("_", "-"), str(v))] +
                       list(extra) + ["--"] + RUN + ["send", "--rate", "200"] + send,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    return {json.loads(l)["id"]: json.loads(l) for l in out.read_text().splitlines()}, p.stdout


def hostport(addr, port):
    return ("[%s]:%d" if ":" in addr else "%s:%d") % (addr, port)


def check_encap(pkt, a, tunnel, vni):
    """Every encapsulated hop names the tunnel, its VNI and the underlay addresses; the inner
    addresses are on every hop."""
    enc = [h for h in pkt["path"] if h["encap"]]
    assert enc, pkt
    for h in enc:
        assert (h["tunnel"], h["vni"]) == (tunnel, vni), h
        assert h["outer_src"].rsplit(":", 1)[0] == hostport(a["shost"], 0).rsplit(":", 1)[0], h
        assert h["outer_dst"] == hostport(a["dhost"], overlay.VXLAN_PORT if tunnel == "vxlan"
                                          else overlay.GENEVE_PORT), h
    for h in pkt["path"]:
        assert h["dst"] == hostport(a["dip"], overlay.PORT), h
        assert h["src"].rsplit(":", 1)[0] == hostport(a["sip"], 0).rsplit(":", 1)[0], h
    assert all(h["tunnel"] is None and h["vni"] is None for h in pkt["path"] if not h["encap"])


@pytest.mark.parametrize("underlay,over", [("ipv6", "ipv4"), ("ipv4", "ipv6"), ("ipv6", "ipv6")])
def test_overlay_delivered_then_dropped_no_socket(lab_shape, tmp_path, underlay, over):
    a = lab_shape(underlay, over)
    send = ["--netns", overlay.SENDER_NS, "--dst", a["dip"], "--port", str(overlay.PORT)]
    packets, text = trace(tmp_path, a, send + ["--count", "4"])
    assert sorted(packets) == [1, 2, 3, 4]
    for pkt in packets.values():
        assert pkt["verdict"] == "delivered", pkt
        assert pkt["delivered"]["netns_name"] == "pp-ctrB"
        check_encap(pkt, a, "vxlan", overlay.VNI)
    assert hostport(a["dip"], overlay.PORT) in text     # the timeline shows the addresses
    overlay.apply_fault("no-listener")
    packets, text = trace(tmp_path, a, send + ["--count", "3", "--start-id", "10"])
    assert sorted(packets) == [10, 11, 12]
    udp = "__udp6_lib_rcv" if over == "ipv6" else "__udp4_lib_rcv"
    for pkt in packets.values():
        assert pkt["verdict"] == "dropped", pkt
        assert (pkt["drop"]["reason"], pkt["drop"]["netns_name"]) == ("NO_SOCKET", "pp-ctrB")
        assert pkt["drop"]["location"].startswith(udp), pkt["drop"]
        check_encap(pkt, a, "vxlan", overlay.VNI)


@pytest.mark.parametrize("underlay,inner", [("ipv4", "ipv4"), ("ipv4", "ipv6"),
                                            ("ipv6", "ipv4"), ("ipv6", "ipv6")])
def test_built_geneve_frames_followed_to_no_socket_at_the_host(lab_shape, tmp_path, underlay,
                                                              inner):
    a = lab_shape(underlay, "ipv4")
    isrc, idst, _ = overlay.OVERLAY[inner]
    filt = dict(a, sip=isrc, dip=idst)
    send = ["--netns", "pp-hostA", "--dst", a["dhost"], "--port", str(overlay.PORT),
            "--geneve", "77", "--inner-src", isrc, "--inner-dst", idst, "--count", "8"]
    packets, text = trace(tmp_path, filt, send)
    # 8 frames: their option lengths cycle through 4, 12, 20 and 28 bytes
    assert sorted(packets) == list(range(1, 9))
    for pkt in packets.values():
        assert pkt["verdict"] == "dropped", pkt
        assert (pkt["drop"]["reason"], pkt["drop"]["netns_name"]) == ("NO_SOCKET", "pp-hostB")
        names = {h["netns_name"] for h in pkt["path"]}
        assert names == {"pp-hostA", "pp-hostB"}, pkt
        assert all(h["encap"] for h in pkt["path"]), pkt
        check_encap(pkt, dict(filt), "geneve", 77)
    assert "geneve:77" in text


def test_geneve_port_null_does_not_parse_geneve(lab_up, tmp_path):
    a = overlay.addresses()
    send = ["--netns", "pp-hostA", "--dst", a["dhost"], "--port", str(overlay.PORT),
            "--geneve", "77", "--count", "3"]
    packets, _ = trace(tmp_path, a, send, extra=["--geneve-port", "0"])
    assert packets == {}


def test_lab_geneve_tunnel_without_kernel_support_is_one_line():
    if not overlay.geneve_supported():
        pytest.skip("this kernel has Geneve devices")
    p = subprocess.run(RUN + ["lab", "up", "--tunnel", "geneve"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Geneve" in p.stderr and "send --geneve" in p.stderr


# fault -> (send size, {id parity or None: (verdict, reason or None, netns)}), as test_lab's
FAULT_EXPECT = {
    "iptables-drop": (64, {1: ("dropped", "NETFILTER_DROP", "pp-ctrB"),
                           0: ("delivered", None, "pp-ctrB")}),
    "vni-mismatch": (64, {None: ("dropped", "VXLAN_VNI_NOT_FOUND", "pp-hostB")}),
    "underlay-mtu": (1300, {None: ("dropped", None, "pp-hostA")}),
    "link-down": (64, {None: ("dropped", "NO_TX_TARGET", "pp-hostB")}),
    "rcvbuf-full": (64, {}),
}


@pytest.mark.parametrize("name", sorted(FAULT_EXPECT))
@pytest.mark.parametrize("underlay,over", [("ipv6", "ipv4"), ("ipv4", "ipv6")])
def test_every_fault_in_each_shape(lab_shape, tmp_path, underlay, over, name, check_fault_verdicts):
    a = lab_shape(underlay, over)
    overlay.apply_fault(name)
    size, expect = FAULT_EXPECT[name]
    send = ["--netns", overlay.SENDER_NS, "--dst", a["dip"], "--port", str(overlay.PORT),
            "--count", "6", "--size", str(size)]
    packets, _ = trace(tmp_path, a, send)
    assert sorted(packets) == list(range(1, 7))
    check_fault_verdicts(name, packets, expect)
