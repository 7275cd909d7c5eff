"""What several root tests share (not a test module): the tracer run around traffic on the lab,
our own receiver and sender scripts in the lab's namespaces, and the receiving namespace's
kernel counters (Udp InDatagrams, an iptables rule's packets)."""
import json
import os
import signal
import subprocess
import sys
import time

from pktpath.lab import overlay

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [sys.executable, os.path.join(ROOT, "run.py")]
# the hops that deliver a datagram: its socket's data-ready callback, or the socket's reader
# seeing it first (sock_recv_length: the reader took it before any callback's scan reached it)
DELIVERY_HOOKS = ("sk_data_ready", "sock_recv_length")
CFG = os.path.join(ROOT, "configs", "lab.yaml")
PORT = overlay.PORT + 7     # not the lab sink's: our own receiver's

# A TCP server: accepts one connection, waits `wait` s (> 0: segments wait unread in the queue,
# and coalesce), reads to the end, then writes "client_ip client_port bytes_read" to argv[1]
TCP_SERVER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %(port)d))
s.listen(1)
print("listening", flush=True)
c, a = s.accept()
time.sleep(%(wait)s)
n = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    n += len(d)
open(sys.argv[1], "w").write("%%s %%d %%d\n" %% (a[0], a[1], n))
"""


def py_in_ns(ns, script, *args):
    """The command that runs Python `script` (with `args`) in namespace `ns`."""
    return ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]


def start_listening(cmd):
    """Start `cmd`, a receiver that prints "listening" once ready; returns its Popen."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "listening", p.stderr.read()
    return p


def trace_command(tmp_path, command, extra):
    """(packets, CompletedProcess) of run.py tracing `command` with header keys on PORT."""
    out = tmp_path / "v.jsonl"
    p = subprocess.run(RUN + ["-c", CFG, "--json", str(out), "--timeline", "0", "--id-from",
                              "headers", "--port", str(PORT), *extra, "--"] + command,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], p


def tcp_exchange(tmp_path, got, client, extra, wait=0):
    """(packets, CompletedProcess) of trace_command around Python `client` run in the sender
    namespace, TCP_SERVER (waiting `wait` s, writing to `got`) listening on PORT in the
    receiving one; the server is killed if it has not ended 10 s after the client."""
    srv = start_listening(py_in_ns(overlay.RECEIVER_NS, TCP_SERVER % {"port": PORT,
                                                                        "wait": wait}, str(got)))
    try:
        traced = trace_command(tmp_path, py_in_ns(overlay.SENDER_NS, client), extra)
        srv.wait(timeout=10)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    return traced


def receiver_iptables(*args):
    """The command that runs iptables with `args` in the receiving namespace."""
    return ["ip", "netns", "exec", overlay.RECEIVER_NS, "iptables", *args]


def rule_packets(chain, *marks, table="filter", rules=1):
    """The packet counters, summed, of the `rules` rules of `chain` (in `table`, receiving
    namespace) whose listing has all of `marks` (one, unless told)."""
    out = subprocess.run(receiver_iptables("-t", table, "-nvxL", chain), capture_output=True,
                         text=True, check=True).stdout
    hits = [int(line.split()[0]) for line in out.splitlines()
            if all(m in line for m in marks)]
    assert len(hits) == rules, out
    return sum(hits)


def in_datagrams():
    """Udp InDatagrams of the receiving namespace: what its sockets read."""
    out = subprocess.run(["ip", "netns", "exec", overlay.RECEIVER_NS, "cat", "/proc/net/snmp"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")]
    return dict(zip(rows[0], map(int, rows[1])))["InDatagrams"]


def wait_ready(tracer, ready, timeout=30):
    """Wait until the tracer (a Popen with stderr piped) has written its --ready-file `ready`;
    fail with its stderr if it ended first."""
    deadline = time.time() + timeout
    while not ready.exists() and tracer.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ready.exists(), tracer.stderr.read() if tracer.poll() is not None else "no ready"


def trace_around(tmp_path, args, during):
    """(packets, report text, what `during()` returned) of a trace (run.py -c configs/lab.yaml
    --json ... --ready-file ... + `args`) around `during()`, called once the tracer is ready;
    the tracer is stopped with SIGINT when it returns."""
    out, ready = tmp_path / "p.jsonl", tmp_path / "ready"
    tracer = subprocess.Popen(RUN + ["-c", CFG, *args, "--json", str(out),
                                     "--ready-file", str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(tracer, ready)
        result = during()
        tracer.send_signal(signal.SIGINT)
        text, err = tracer.communicate(timeout=60)
        assert tracer.returncode == 0, err
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    return [json.loads(line) for line in out.read_text().splitlines()], text, result
