"""Truth under load (root): a flood of dropped packets, then Ctrl-C. The report must appear
within ~1 s of the signal, count exactly what the kernel counted, and the tracer's memory
must stay bounded (the dropped packets are aggregated, only a sample is kept)."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from pktpath.lab import overlay

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
CFG = os.path.join(ROOT, "configs", "lab.yaml")
FLOOD_S = float(os.environ.get("PKTPATH_FLOOD_S", "2"))


def no_ports(ns):
    """Udp NoPorts of namespace `ns` (/proc/net/snmp): datagrams dropped for want of a
    listener."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                          capture_output=True, text=True, check=True).stdout
    udp = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    return int(udp[1][udp[0].index("NoPorts")])


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None


def cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood_then_sigint(tmp_path, extra=()):
    """Trace (with the tracer's options `extra`) a flood of drops (two senders, FLOOD_S s), then
    SIGINT: (report text, stderr, dropped by the kernel, s to the report, s to the exit, tracer
    CPU s after the signal and in all, peak RSS kB, RSS kB once attached)."""
    ready = tmp_path / "ready"
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(open(CFG).read())
    tracer = subprocess.Popen(RUN + ["-c", str(cfg), "--ready-file", str(ready), "-q",
                                     "--timeline", "5"] + list(extra),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PKTPATH_TIMES="1"))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert tracer.poll() is None and time.monotonic() < deadline, tracer.stderr.read()
        time.sleep(0.05)
    base = vm_hwm_kb(tracer.pid)        # loaded and attached, nothing traced yet
    before = no_ports(overlay.RECEIVER_NS)
    senders = [subprocess.Popen(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst",
                                       overlay.DST_IP, "--port", str(overlay.PORT),
                                       "--start-id", str(1 + i * 100_000_000),
                                       "--count", "50000000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for i in range(2)]
    time.sleep(FLOOD_S)
    for s in senders:
        s.kill()
        s.wait()
    time.sleep(0.3)                     # the last datagrams cross the lab
    dropped = no_ports(overlay.RECEIVER_NS) - before
    hwm = vm_hwm_kb(tracer.pid)
    cpu0 = cpu = cpu_s(tracer.pid)
    got = {"o": [], "e": ""}

    def read():                         # the report is longer than a pipe holds
        for line in tracer.stdout:
            got["o"].append(line)
            got["last"] = time.monotonic()  # the report is printed whole, then the exit
        got["e"] = tracer.stderr.read()
    reader = threading.Thread(target=read)
    t0 = time.monotonic()
    tracer.send_signal(signal.SIGINT)
    reader.start()
    while tracer.poll() is None and time.monotonic() - t0 < 60:
        hwm = max(hwm or 0, vm_hwm_kb(tracer.pid) or 0)
        cpu = cpu_s(tracer.pid) or cpu
        time.sleep(0.01)
    exit_s = time.monotonic() - t0
    reader.join(60)
    tracer.wait(10)
    out, err = "".join(got["o"]), got["e"]
    stop_s = got.get("last", t0 + 99) - t0
    assert tracer.returncode == 0, err
    return out, err, dropped, stop_s, exit_s, cpu - cpu0, cpu, hwm, base


def test_flood_of_drops_reports_within_a_second_of_ctrl_c(fault, tmp_path):
    fault("no-listener")
    out, err, dropped, stop_s, exit_s, cpu_stop, cpu, hwm, base = flood_then_sigint(tmp_path)
    print("flood: %d dropped by the kernel; report printed %.2f s after SIGINT, exit after "
          "%.2f s (tracer CPU %.2f s then, %.2f s in all); peak RSS %d MB; %s"
          % (dropped, stop_s, exit_s, cpu_stop, cpu, hwm // 1024, err.strip()[-200:]))
    assert dropped > 20000, "the flood was too small to mean anything"
    m = re.search(r"^(\d+) packets?: (\d+) delivered, (\d+) dropped, (\d+) lost", out, re.M)
    assert m, out
    print(m.group(0))
    assert "lost by the tracer" not in out, out[-2000:]
    assert int(m.group(3)) == dropped, out[-3000:]
    # the drop table has the exact count, the verdict table says it shows a sample
    assert re.search(r"NO_SOCKET .* %d " % dropped, out), out[-3000:]
    assert re.search(r"showing \d+ of %d not delivered" % dropped, out), out[-3000:]
    # The goal: the report within 1 s of the signal (measured here from just before it is
    # sent to the report's last line). At the signal, the packets of the flood's last ~1.3 s
    # are not finished yet (the tracer is a flush behind a flood that fills its CPU): a flush
    # under way stops short, the ring is read for at most 0.3 s, no garbage collection, and
    # past 0.7 s the latencies of the packets left are not sorted (they are counted, and the
    # report says how many: see session.py). Measured on the loaded 2-CPU VM (~210-230k
    # drops): 0.94-1.32 s before (loop 0.04-0.54 s: the flush under way; settle 0.17-0.45;
    # report 0.19-0.82, mostly the fold of the last second's latencies); 0.74-0.88 s after (7
    # runs; settle 0.37-0.76, report 0.10-0.37, latencies of 0-199k packets left out: in 2
    # runs every packet not in the sample was finished at the stop).
    assert stop_s <= 1.0, "report %.2f s after SIGINT: %s" % (stop_s, err.strip()[-300:])
    unmeasured = re.search(r"latencies: (\d+) packets finished at the stop", out)
    print("latencies left out: %s" % (unmeasured.group(1) if unmeasured else 0))
    # (before: 3.9 GB for 335k dropped packets, all kept as dicts)
    assert hwm - base < 300 * 1024, "peak RSS %d MB, %d MB at start" % (hwm // 1024, base // 1024)


def test_events_mode_flood_stays_bounded_and_reports_within_a_second(fault, tmp_path):
    """Events mode (one event per hook, ~9 per dropped packet: ~800k events/s here, far more
    than the tracer can decode) under the same flood: the events held unfinished are bounded
    (stream.MAX_EVENTS), the rest shed and said; before the bound, a 10 s flood grew the tracer
    by ~1.5-1.6 GB and its report came 5.1-5.6 s after the signal (with it: 0.75-0.98 s,
    bench/longrun.py, docs/DESIGN.md)."""
    fault("no-listener")
    out, err, dropped, stop_s, exit_s, cpu_stop, cpu, hwm, base = flood_then_sigint(
        tmp_path, ["--mode", "events"])
    print("events-mode flood: %d dropped by the kernel; report printed %.2f s after SIGINT, "
          "exit after %.2f s (tracer CPU %.2f s then, %.2f s in all); peak RSS %d MB, %d MB at "
          "start; %s" % (dropped, stop_s, exit_s, cpu_stop, cpu, hwm // 1024, base // 1024,
                         err.strip()[-200:]))
    assert dropped > 20000, "the flood was too small to mean anything"
    m = re.search(r"^(\d+) packets?: (\d+) delivered, (\d+) dropped, (\d+) lost", out, re.M)
    assert m, out
    print(m.group(0))
    assert m.group(4) == "0" and 0 < int(m.group(3)) <= dropped, out[-3000:]
    shed = re.search(r"^(\d+) records were read past the bound", out, re.M)
    assert shed, out[-3000:]           # more than the bound arrives within the first second
    print("shed: %s events" % shed.group(1))
    assert stop_s <= 1.0, "report %.2f s after SIGINT: %s" % (stop_s, err.strip()[-300:])
    assert hwm - base < 300 * 1024, "peak RSS %d MB, %d MB at start" % (hwm // 1024, base // 1024)
