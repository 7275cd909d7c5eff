#!/usr/bin/env python3
"""Long-run memory: trace the lab at a steady rate and sample the tracer's RSS.

Usage: sudo python3 bench/longrun.py [--seconds 600] [--rate 5000]
Prints RSS (MiB) every 10% of the run and the growth from the first sample to the last.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from pktpath.lab import overlay  # noqa: E402

RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=int, default=5000)
    args = ap.parse_args()
    overlay.up()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ready = os.path.join(tmp, "ready")
            tracer = subprocess.Popen(RUN + ["-c", os.path.join(ROOT, "configs", "lab.yaml"),
                                             "--ready-file", ready, "-q", "--timeline", "0",
                                             "--json", os.devnull, "--keep-delivered", "1000"],
                                      stdout=subprocess.DEVNULL)
            while not os.path.exists(ready):
                time.sleep(0.05)
            count = int(args.seconds * args.rate)
            sender = subprocess.Popen(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst",
                                             overlay.DST_IP, "--port", str(overlay.PORT), "--count",
                                             str(count), "--rate", str(args.rate)],
                                      stdout=subprocess.DEVNULL)
            samples, t0 = [], time.monotonic()
            while sender.poll() is None:
                time.sleep(args.seconds / 10)
                samples.append((time.monotonic() - t0, rss_mib(tracer.pid)))
                print("t=%5.0fs  tracer RSS %.1f MiB" % samples[-1], flush=True)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(600)
            print("packets %d; RSS first %.1f MiB, last %.1f MiB, growth %.1f MiB"
                  % (count, samples[0][1], samples[-1][1], samples[-1][1] - samples[0][1]))
    finally:
        overlay.down()


if __name__ == "__main__":
    main()
