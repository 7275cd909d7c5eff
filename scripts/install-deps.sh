#!/bin/sh
# Install what pktpath needs on a Debian 12 machine, idempotently (run as root).
# Everything by package name: bcc and its Python module, kernel headers for bcc to compile
# against (any version: pktpath reads struct offsets from BTF), iproute2/nftables for the lab,
# the Python libraries for the system python3, iperf3 (bench/iperf3.py) and chromium (tests
# render the --html page in it), tshark (tests read the --pcap file back with it).
set -eu
PKGS="python3 python3-bpfcc bpfcc-tools libbpfcc linux-headers-amd64 bpftool iproute2 iptables
nftables python3-yaml python3-tabulate python3-pytest python3-hypothesis make procps iperf3
chromium python3-prometheus-client prometheus tshark"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "pktpath: installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # tshark: do not ask whether non-root users may capture (the answer: no)
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# bcc looks for tracing files here; harmless if already mounted
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/debug 2>/dev/null || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
exit 0
