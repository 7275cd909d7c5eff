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
