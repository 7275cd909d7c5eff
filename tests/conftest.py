"""Test sessions split by privilege: `root` tests need root, BPF and network namespaces (CI is
root); everything else runs anywhere."""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (BPF, network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _lab_session():
    from pktpath.lab import overlay
    yield overlay
    overlay.down()


@pytest.fixture
def lab_up(_lab_session):
    """The two-host VXLAN lab (IPv4 over IPv4), healthy; built when missing (a lifecycle test may have removed
    it) and removed at the end of the session."""
    lab = _lab_session
    st = lab.status()
    if set(lab.LAB_NS) - set(st["namespaces"]) or not st["sink"] or st["faults"] or \
            st["shape"] != lab.DEFAULT_SHAPE:
        lab.up()
    return lab


@pytest.fixture
def fault(lab_up):
    """fault(name) injects a lab fault; it is cleared after the test."""
    def inject(name):
        lab_up.apply_fault(name)
    yield inject
    lab_up.clear_faults()


@pytest.fixture
def check_fault_verdicts():
    """check(name, packets, expect): see _check_fault_verdicts."""
    return _check_fault_verdicts


def _check_fault_verdicts(name, packets, expect):
    """The verdicts of 6 lab packets (IDs 1-6) sent with lab fault `name`: `expect` maps ID parity
    (or None: any) to (verdict, drop reason or None, namespace); rcvbuf-full drops the last one."""
    if name == "rcvbuf-full":
        verdicts = [packets[i]["verdict"] for i in range(1, 7)]
        assert "delivered" in verdicts and verdicts[-1] == "dropped"
        assert packets[6]["drop"]["reason"] == "SOCKET_RCVBUFF"
        assert packets[6]["drop"]["netns_name"] == "pp-ctrB"
        return
    for pid, pkt in packets.items():
        verdict, reason, ns = expect.get(pid % 2, expect.get(None))
        assert pkt["verdict"] == verdict, (name, pkt)
        where = pkt["drop"] if verdict == "dropped" else pkt["delivered"]
        assert where["netns_name"] == ns, (name, pkt)
        if reason:
            assert pkt["drop"]["reason"] == reason, (name, pkt)
