"""The built-in lab, its faults, the sender and the demo, for real (root)."""
import json
import os
import subprocess
import sys
import time

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def leftovers():
    """pp- namespaces and pp- links in the root namespace."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return ([line.split()[0] for line in ns.splitlines() if line.startswith("pp-")] +
            [l.split(":")[1].strip() for l in links.splitlines() if ": pp-" in l])


def test_up_is_idempotent_and_down_leaves_nothing():
    overlay.up()
    overlay.up()
    st = overlay.status()
    assert sorted(st["namespaces"]) == sorted(overlay.LAB_NS) and st["sink"]
    overlay.down()
    overlay.down()
    assert leftovers() == []
    assert not os.path.exists(overlay.RUN_DIR)


def test_down_cleans_a_half_built_lab():
    subprocess.run(["ip", "netns", "add", "pp-hostA"], check=True)
    subprocess.run(["ip", "link", "add", "pp-ulA", "type", "veth", "peer", "name", "pp-ulB"],
                   check=True)
    overlay.down()
    assert leftovers() == []


def test_sender_ids_arrive_as_sent(lab_up, tmp_path):
    rec = tmp_path / "ids"
    sink = subprocess.Popen(["ip", "netns", "exec", overlay.RECEIVER_NS, sys.executable, "-m",
                             "pktpath.lab.sink", "--port", "5001", "--record", str(rec)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert "listening" in sink.stdout.readline()
        p = subprocess.run(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP, "--port",
                                  "5001", "--start-id", "4000000000", "--count", "20"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "sent 20 datagrams (IDs 4000000000..4000000019)" in p.stdout
        deadline = time.time() + 5
        while time.time() < deadline and (not rec.exists() or
                                          len(rec.read_text().split()) < 20):
            time.sleep(0.05)
        assert [int(x) for x in rec.read_text().split()] == list(range(4000000000, 4000000020))
    finally:
        sink.terminate()
        sink.wait()


def test_fault_list_names_every_fault():
    p = subprocess.run(RUN + ["lab", "fault", "--list"], capture_output=True, text=True)
    assert p.returncode == 0
    for name in overlay.FAULTS:
        assert name in p.stdout


def test_unknown_fault_is_one_line(lab_up):
    p = subprocess.run(RUN + ["lab", "fault", "no-listner"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "did you mean 'no-listener'" in p.stderr


# fault -> (send size, {id parity or None: (verdict, reason prefix or None, netns)})
FAULT_EXPECT = {
    "no-listener": (64, {None: ("dropped", "NO_SOCKET", "pp-ctrB")}),
    "iptables-drop": (64, {1: ("dropped", "NETFILTER_DROP", "pp-ctrB"),
                           0: ("delivered", None, "pp-ctrB")}),
    "vni-mismatch": (64, {None: ("dropped", "VXLAN_VNI_NOT_FOUND", "pp-hostB")}),
    "underlay-mtu": (1300, {None: ("dropped", None, "pp-hostA")}),
    "link-down": (64, {None: ("dropped", "NO_TX_TARGET", "pp-hostB")}),
}


@pytest.mark.parametrize("name", sorted(FAULT_EXPECT) + ["rcvbuf-full"])
def test_fault_reported_as_promised(lab_up, fault, tmp_path, name, check_fault_verdicts):
    fault(name)
    size, expect = FAULT_EXPECT.get(name, (64, {}))
    out = tmp_path / "v.jsonl"
    p = subprocess.run(RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--json", str(out),
                              "--timeline", "0", "--"] + RUN +
                       ["send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP, "--port",
                        str(overlay.PORT), "--count", "6", "--size", str(size), "--rate", "200"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    packets = {json.loads(l)["id"]: json.loads(l) for l in out.read_text().splitlines()}
    assert sorted(packets) == list(range(1, 7))
    check_fault_verdicts(name, packets, expect)


def test_demo_shows_delivered_and_dropped(tmp_path):
    out = tmp_path / "demo.jsonl"
    p = subprocess.run(RUN + ["demo", "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    verdicts = {json.loads(l)["verdict"] for l in out.read_text().splitlines()}
    assert {"delivered", "dropped"} <= verdicts
    for reason in ("NETFILTER_DROP", "NO_SOCKET", "VXLAN_VNI_NOT_FOUND"):
        assert reason in p.stdout
    assert leftovers() == []  # demo takes its lab down
