"""`run.py bench [ARGS]`: runs bench/bench.py (the overhead benchmark) with ARGS."""
import os
import subprocess
import sys

from pktpath.errors import UserError
from pktpath.paths import data_dir

PASSTHROUGH = True   # `run.py bench --help` is bench.py's help


def run(args):
    script = os.path.join(os.path.dirname(data_dir("bpf")), "bench", "bench.py")
    if not os.path.exists(script):
        raise UserError("bench/bench.py not found (the benchmark runs from a checkout)")
    return subprocess.call([sys.executable, script] + args.args)
