"""Signals, bad output paths, a second tracer, and kill -9: nothing left behind (root)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
CFG = os.path.join(ROOT, "configs", "lab.yaml")


def pktpath_progs(settle=3.0):
    """pktpath's BPF programs still loaded. The kernel frees a program shortly after its last
    file descriptor closes (RCU), so give it up to `settle` seconds to go."""
    deadline = time.time() + settle
    while True:
        out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
        progs = [line for line in out.splitlines() if "pp_h" in line]
        if not progs or time.time() >= deadline:
            return progs
        time.sleep(0.1)


def wait_for(path, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", [0.1, 0.6, "ready"])
def test_signal_detaches_and_reports(tmp_path, sig, when):
    """A signal before tracing (start-up, compile, attach) or while tracing: no traceback, no
    pktpath BPF program left loaded; once the tracer runs, exit 0 with the report printed
    (a signal that comes before it runs may end it with 130 and one line)."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(RUN + ["-c", CFG, "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if when == "ready":
        assert wait_for(ready)
    else:
        time.sleep(when)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    assert pktpath_progs() == []
    if when == "ready" or proc.returncode == 0:
        assert proc.returncode == 0, err
        assert "stopped by %s" % sig.name in err
        assert "== summary ==" in out
    else:
        assert proc.returncode == 130 and err.strip() == "pktpath: interrupted"


def test_second_identical_tracer_is_refused(tmp_path):
    ready = tmp_path / "ready"
    first = subprocess.Popen(RUN + ["-c", CFG, "--ready-file", str(ready), "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(ready)
        p = subprocess.run(RUN + ["-c", CFG, "--duration", "1"], capture_output=True, text=True)
        assert p.returncode == 2
        assert "another pktpath tracer" in p.stderr and p.stderr.count("\n") == 1
    finally:
        first.terminate()
        first.wait(30)


@pytest.mark.parametrize("flag", ["--json", "--record"])
def test_unwritable_output_fails_before_tracing(tmp_path, flag):
    p = subprocess.run(RUN + ["-c", CFG, "--duration", "1", flag, "/nonexistent-dir/out.jsonl"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert pktpath_progs() == []


def test_kill_9_demo_then_lab_down_leaves_nothing():
    proc = subprocess.Popen(RUN + ["demo"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not pktpath_progs(settle=0):
        time.sleep(0.05)
    assert pktpath_progs(settle=0), "demo never attached"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    p = subprocess.run(RUN + ["lab", "down"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert pktpath_progs() == []
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pp-" not in ns
    assert overlay.status()["namespaces"] == []
