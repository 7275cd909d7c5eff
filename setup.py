"""pktpath: per-packet path tracer for UDP and VXLAN overlays (eBPF via bcc).

bcc itself is not on PyPI: install Debian's python3-bpfcc (scripts/install-deps.sh does).
"""
import glob

from setuptools import setup

from pktpath import __version__

setup(
    name="pktpath",
    version=__version__,
    description="Follow every UDP/VXLAN packet by its payload ID through the Linux stack",
    packages=["pktpath"] + ["pktpath." + p for p in
              ("kernel", "collect", "events", "process", "output", "commands", "lab")],
    python_requires=">=3.9",
    install_requires=["PyYAML", "tabulate"],
    data_files=[("share/pktpath/bpf", glob.glob("bpf/*")),
                ("share/pktpath/configs", glob.glob("configs/*.yaml"))],
    entry_points={"console_scripts": ["pktpath = pktpath.commands.cli:main"]},
)
