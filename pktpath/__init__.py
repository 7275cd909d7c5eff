"""pktpath: per-packet path tracer for UDP and VXLAN overlays (eBPF/bcc)."""

__version__ = "0.1.0"
