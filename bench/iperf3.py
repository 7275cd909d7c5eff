#!/usr/bin/env python3
"""iperf3 accounting (root, builds the lab): does pktpath account for every datagram a real
client sends when it saturates both CPUs?

iperf3's server runs in the receiving container (pp-ctrB), its client in pp-ctrA: UDP, 100-byte
datagrams, unlimited rate (-b 0), 5 s. pktpath traces the lab keyed on iperf3's own packet
counter: iperf3's UDP payload starts with tv_sec (u32), tv_usec (u32), then the packet count
(u32, network order; 64-bit only with --udp-counters-64bit, not used here), so
`--id-offset 8 --id-byteorder big`. Prints iperf3's sent and lost counts next to pktpath's
packets / delivered / dropped / lost / incomplete and the events the tracer lost.

Usage: sudo python3 bench/iperf3.py [--seconds 5] [--length 100] [--json] [--keep-lab]
Run it through /work/tools/roottest.sh (one lab and one tracer per machine).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pktpath.lab import overlay  # noqa: E402

PORT = 5201                     # iperf3's port (the lab's sink has 5000)


def ns(name, *cmd):
    return ["ip", "netns", "exec", name, *cmd]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--length", type=int, default=100, help="UDP datagram payload (bytes)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("iperf3 bench: run as root")
    if not shutil.which("iperf3"):
        subprocess.run(["sh", os.path.join(ROOT, "scripts", "install-deps.sh")], check=True)
    overlay.up()
    tmp = tempfile.mkdtemp(prefix="pp-iperf3-")
    server = tracer = None
    try:
        server = subprocess.Popen(ns(overlay.RECEIVER_NS, "iperf3", "-s", "-1", "-p", str(PORT),
                                     "-J"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        ready, stats = os.path.join(tmp, "ready"), os.path.join(tmp, "stats.json")
        tracer = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run.py"), "-c",
             os.path.join(ROOT, "configs", "lab.yaml"), "--udp-port", str(PORT),
             "--id-offset", "8", "--id-byteorder", "big", "--ready-file", ready,
             "--stats-file", stats, "--timeline", "0", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PKTPATH_TIMES="1"))
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if tracer.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("tracer failed: %s" % tracer.stderr.read().strip())
            time.sleep(0.05)
        time.sleep(0.5)                 # the server is listening by now
        client = subprocess.run(ns(overlay.SENDER_NS, "iperf3", "-c", overlay.DST_IP, "-p",
                                   str(PORT), "-u", "-b", "0", "-l", str(args.length), "-t",
                                   str(args.seconds), "-J"),
                                capture_output=True, text=True, timeout=args.seconds + 60)
        time.sleep(2.5)                 # > --lost-after: paths still open are swept
        t0 = time.monotonic()
        tracer.send_signal(signal.SIGINT)
        out, err = tracer.communicate(timeout=300)
        stop_s = time.monotonic() - t0
        srv_out, _ = server.communicate(timeout=30)
        server = None
    finally:
        for p in (server, tracer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if not args.keep_lab:
            overlay.down()
    c = json.loads(client.stdout or "{}")
    if "error" in c:
        raise SystemExit("iperf3 client: %s" % c["error"])
    end = c.get("end", {})
    s = json.loads(srv_out or "{}").get("end", {}).get("sum", {})
    res = {"iperf3_sent": end.get("sum", {}).get("packets"),
           "iperf3_received_lost": s.get("lost_packets"),
           "iperf3_server_packets": s.get("packets"),
           "iperf3_lost_percent": s.get("lost_percent")}
    m = re.search(r"^(\d+) packets?: (\d+) delivered, (\d+) dropped, (\d+) lost"
                  r"(?:, (\d+) incomplete)?", out, re.M)
    if not m:
        raise SystemExit("no summary in pktpath's report:\n%s\n%s" % (out[-2000:], err))
    res.update(zip(("packets", "delivered", "dropped", "lost", "incomplete"),
                   (int(x or 0) for x in m.groups())))
    with open(stats) as f:
        st = json.load(f)
    res.update(events=st.get("events"), events_lost_by_tracer=st.get("lost"),
               stop_s=round(stop_s, 2))
    drops = re.findall(r"^(\S+)\s+(\S+\+0x[0-9a-f]+)\s+(.+?)\s{2,}(\d+)\s", out, re.M)
    res["drop_rows"] = [" ".join((r, loc, nsn, n)) for r, loc, nsn, n in drops][:8]
    if res["iperf3_sent"] is not None:
        res["missing_from_pktpath"] = res["iperf3_sent"] - res["packets"]
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print("%-24s %s" % (k, v))
        print("pktpath stderr: %s" % err.strip()[-300:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
