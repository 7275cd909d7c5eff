"""Where the kernel-side C (bpf/) and the shipped YAML (configs/) live.

In a checkout they sit beside the package; `setup.py install` puts them under
<prefix>/share/pktpath/.
"""
import os
import sys

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir(name):
    """Path of the `bpf` or `configs` directory."""
    for base in (_CHECKOUT, os.path.join(sys.prefix, "share", "pktpath"),
                 os.path.join("/usr/local/share/pktpath")):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            return path
    return os.path.join(_CHECKOUT, name)
