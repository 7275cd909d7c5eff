"""Command-line numbers are checked like config keys: a bad value is one line
`pktpath: error: command line: KEY: problem` on stderr and exit status 2, for every numeric flag
of every subcommand."""
import os
import subprocess
import sys

import pytest

from pktpath.commands import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEND = ["send", "--dst", "192.0.2.1", "--port", "5000"]

BAD = [  # (argv, key named in the message)
    (["--duration", "-3"], "duration"), (["-d", "0"], "duration"),
    (["--duration", "inf"], "duration"), (["--duration", "x"], "duration"),
    (["--timeline", "-1"], "timeline"), (["--timeline", "1.5"], "timeline"),
    (["--grace", "-0.1"], "grace"), (["--lost-after", "0"], "lost_after"),
    (["--keep-delivered", "-5"], "keep_delivered"), (["--interval", "0"], "interval"),
    (["--interval", "nan"], "interval"), (["--vxlan-port", "-1"], "vxlan_port"),
    (["--geneve-port", "70000"], "geneve_port"), (["--id-offset", "-2"], "id_offset"),
    (["--port", "-3"], "port"), (["--udp-port", "0"], "udp_port"),
    (["drops", "--duration", "-3"], "duration"), (["drops", "--port", "0"], "port"),
    (["drops", "--interval", "-1"], "interval"), (["drops", "--limit", "-1"], "limit"),
    (["drops", "--grace", "-1"], "grace"),
    (["report", "x.jsonl", "--timeline", "-2"], "timeline"),
    (["demo", "--timeline", "-1"], "timeline"),
    (["send", "--dst", "192.0.2.1", "--port", "0"], "port"),
    (SEND + ["--count", "-1"], "count"), (SEND + ["--rate", "-1"], "rate"),
    (SEND + ["--start-id", "-1"], "start_id"), (SEND + ["--size", "2"], "size"),
    (SEND + ["--src-port", "70000"], "src_port"), (SEND + ["--geneve", "-1"], "geneve"),
    (SEND + ["--geneve-port", "0"], "geneve_port"),
    (SEND + ["--inner-sport", "-1"], "inner_sport"),
]


@pytest.mark.parametrize("argv,key", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_number_is_one_line_and_exit_2(argv, key, capsys):
    if argv[0].startswith("-"):
        argv = argv + ["--ebpf"]   # never reaches the tracer: the parser refuses first
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("pktpath: error: command line: %s: must be " % key), err
    assert "Traceback" not in err


def test_good_numbers_parse():
    import argparse
    from pktpath.commands import drops, trace
    from pktpath.lab import sender
    p = argparse.ArgumentParser()
    trace.add_arguments(p)
    a = p.parse_args(["--duration", "2.5", "--timeline", "0", "--grace", "0", "--lost-after",
                      "0.5", "--keep-delivered", "0", "--interval", "1"])
    assert (a.duration, a.timeline, a.grace, a.lost_after, a.keep_delivered, a.interval) == \
        (2.5, 0, 0.0, 0.5, 0, 1.0)
    p = argparse.ArgumentParser()
    drops.add_arguments(p)
    a = p.parse_args(["--port", "53", "--limit", "0", "-d", "1"])
    assert (a.port, a.limit, a.duration, a.interval) == (53, 0, 1.0, 5.0)
    p = argparse.ArgumentParser()
    sender.add_arguments(p)
    a = p.parse_args(SEND[1:] + ["--count", "0", "--rate", "0", "--geneve", "16777215"])
    assert (a.port, a.count, a.rate, a.geneve, a.size) == (5000, 0, 0.0, 16777215, 64)


@pytest.mark.parametrize("argv", [["--duration", "-3"], ["bench", "--seconds", "-3"],
                                  ["bench", "--rounds", "0"], ["bench", "--senders", "x"]])
def test_run_py_rejects_bad_numbers_without_traceback(argv):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "run.py")] + argv, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("pktpath: error: command line: "), p.stderr
    assert "tracing" not in p.stderr
