#!/usr/bin/env python3
"""Thin entry point: `sudo ./run.py -c configs/vxlan.yaml`. See pktpath/cli.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pktpath.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
