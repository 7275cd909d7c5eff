"""The live status line of a real trace: drawn in place on a terminal's stderr (a pty here),
cleared before the report; absent when stderr is a pipe."""
import os
import re
import select
import subprocess
import sys

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def command(count):
    # the sender's own output goes to a pipe: only the tracer writes on the terminal
    send = " ".join(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst", overlay.DST_IP,
                           "--port", str(overlay.PORT), "--count", str(count), "--rate", "200"])
    return RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"), "--timeline", "0", "--",
                  "sh", "-c", send + " 2>&1 | cat >/dev/null"]


def test_status_line_on_a_terminal_only(lab_up):
    master, slave = os.openpty()
    p = subprocess.Popen(command(500), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:     # EIO: the tracer closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read().decode()
    assert p.wait(60) == 0, err
    os.close(master)
    text = err.decode()
    lines = re.findall(r"\r(\d+ packets: \d+ delivered, \d+ dropped, \d+ lost \| \d+ events/s \| "
                       r"tracer lost \d+)\x1b\[K", text)
    assert len(lines) >= 2, text                   # 2.5 s of traffic, twice a second
    assert "500 delivered" in lines[-1] or int(lines[-1].split()[2]) > 0, lines
    last = text.rindex("\r\x1b[K")                 # cleared ...
    assert last > text.rindex(lines[-1])           # ... after the last status line
    assert "\r" not in text[last + 4:].replace("\r\n", "\n")   # nothing redrawn after
    assert "== summary ==" in out and "\r" not in out


def test_no_status_line_in_a_pipe(lab_up):
    p = subprocess.run(command(300), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "\x1b" not in p.stderr and "events/s" not in p.stderr
