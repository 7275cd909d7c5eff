"""The `--json` output file (live and `report`): written as PATH.tmp and renamed when complete,
so a run that dies never leaves a file that looks complete; "-" is stdout; a device or fifo
(/dev/null) is written in place, never renamed over."""
import os
import sys

from pktpath.errors import UserError


def open_json(path):
    """Open the --json output (None: no output) or raise UserError."""
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    # a device or fifo (/dev/null) is written in place: never rename over it
    tmp = path if os.path.exists(path) and not os.path.isfile(path) else path + ".tmp"
    try:
        return open(tmp, "w")
    except OSError as e:
        raise UserError("cannot write --json %s: %s" % (path, e.strerror)) from None


def close_json(fh, path):
    """Close an output of open_json(path) and rename PATH.tmp -> PATH (stdout stays open)."""
    if fh is None or fh is sys.stdout:
        return
    fh.close()
    if fh.name != path and fh.name.endswith(".tmp"):
        os.replace(fh.name, path)
