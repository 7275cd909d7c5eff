#!/usr/bin/env python3
"""Long-run memory: trace the lab at a steady rate and sample the tracer's RSS.

Usage: sudo python3 bench/longrun.py [--seconds 600] [--rate 5000] [--flood K]
                                     [--fault no-listener] [--checkout DIR]
                                     [--mode summary|events]
Prints RSS (MiB) every 10% of the run and the growth from the first sample to the last, then
the peak RSS (VmHWM), the time from SIGINT to the tracer's exit and its own stop times
(PKTPATH_TIMES: signal to report).
--flood K: K senders as fast as they go (bench/bench.py's load) instead of one paced sender;
--fault: a lab fault during the run (no-listener: every datagram dropped, NO_SOCKET);
--checkout: the run.py of another checkout (e.g. an older commit, to compare);
--mode: the tracer's --mode (default summary).
(run it through /work/tools/roottest.sh on shared machines: it uses the lab)
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from pktpath.lab import overlay  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench  # noqa: E402  (the lab load generator)

RUN = [sys.executable, os.path.join(ROOT, "run.py")]


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def peak_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--flood", type=int, default=0, metavar="K")
    ap.add_argument("--fault")
    ap.add_argument("--checkout", default=ROOT)
    ap.add_argument("--mode", choices=("summary", "events"), default="summary")
    ap.add_argument("--no-json", action="store_true", help="no --json output (the report only)")
    args = ap.parse_args()
    overlay.up()
    if args.fault:
        overlay.apply_fault(args.fault)
    run = [sys.executable, os.path.join(args.checkout, "run.py")]
    try:
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as err, \
                tempfile.TemporaryFile("w+") as out:
            ready = os.path.join(tmp, "ready")
            tracer = subprocess.Popen(run + ["-c", os.path.join(ROOT, "configs", "lab.yaml"),
                                             "--ready-file", ready, "-q", "--timeline", "0",
                                             "--keep-delivered", "1000",
                                             "--mode", args.mode] +
                                      ([] if args.no_json else ["--json", os.devnull]),
                                      stdout=out, stderr=err,
                                      env=dict(os.environ, PKTPATH_TIMES="1"))
            while not os.path.exists(ready):
                time.sleep(0.05)
            if args.flood:
                rate = []
                sender = threading.Thread(target=lambda: rate.append(
                    bench.load(args.seconds, args.flood, 1)))
                sender.start()
                running = sender.is_alive
            else:
                count = int(args.seconds * args.rate)
                sender = subprocess.Popen(RUN + ["send", "--netns", overlay.SENDER_NS, "--dst",
                                                 overlay.DST_IP, "--port", str(overlay.PORT),
                                                 "--count", str(count), "--rate", str(args.rate)],
                                          stdout=subprocess.DEVNULL)
                running = lambda: sender.poll() is None     # noqa: E731
            samples, t0 = [], time.monotonic()
            while running():
                time.sleep(args.seconds / 10)
                samples.append((time.monotonic() - t0, rss_mib(tracer.pid)))
                print("t=%5.0fs  tracer RSS %.1f MiB" % samples[-1], flush=True)
            hwm = peak_mib(tracer.pid)
            t_sig = time.monotonic()
            tracer.send_signal(signal.SIGINT)
            while tracer.poll() is None:
                hwm = max(hwm, peak_mib(tracer.pid))
                time.sleep(0.01)
            exit_s = time.monotonic() - t_sig
            if args.flood:
                sender.join()
                count = int(rate[0] * args.seconds)
            print("packets %d; RSS first %.1f MiB, last %.1f MiB, growth %.1f MiB"
                  % (count, samples[0][1], samples[-1][1], samples[-1][1] - samples[0][1]))
            err.seek(0)
            times = [line.strip() for line in err if "signal to report" in line]
            print("peak RSS %.1f MiB; SIGINT to exit %.2f s; %s"
                  % (hwm, exit_s, times[-1] if times else "(no stop times)"))
            out.seek(0)
            for line in out:    # the report's verdict counts and its notes on what it missed
                if re.match(r"\d+ packets?: ", line) or "records were" in line or \
                        "lost by the tracer" in line:
                    print("report: " + line.strip())
    finally:
        if args.fault:
            overlay.clear_faults()
        overlay.down()


if __name__ == "__main__":
    main()
