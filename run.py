#!/usr/bin/env python3
"""Thin entry point: `sudo ./run.py -c configs/vxlan.yaml`. See pktpath/commands/cli.py."""
import os
import sys

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which apt's python3-bpfcc/yaml/tabulate serve

try:
    import tabulate  # noqa: F401
    import yaml  # noqa: F401
except ImportError:
    # `python3` may be another interpreter (pyenv, venv) without the project's packages:
    # run under the system one, where `make deps` installed them.
    if os.path.exists(SYSTEM_PYTHON) and os.path.realpath(sys.executable) != \
            os.path.realpath(SYSTEM_PYTHON):
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON] + sys.argv)
    sys.exit("pktpath: error: python modules yaml and tabulate are missing: run `make deps`")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pktpath.commands.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
