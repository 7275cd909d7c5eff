"""Render a page in a real headless browser (Debian `chromium`, scripts/install-deps.sh) and
read back what it built: the DOM after parsing and layout, and what the browser logged."""
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(path, timeout=60):
    """(rendered DOM text, browser stderr) of the file `path`, loaded with networking off (a
    proxy that does not exist: a page that fetched anything would show it in the log)."""
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + profile,
             "--proxy-server=127.0.0.1:9", "--enable-logging=stderr", "--v=0",
             "--dump-dom", "file://" + os.path.abspath(str(path))],
            capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def page_errors(log):
    """Lines of the browser's log about the page: console messages, failed loads."""
    return [line for line in log.splitlines()
            if "CONSOLE" in line or "net::ERR" in line or "Failed to load" in line]


class Elements(HTMLParser):
    """Every element as (tag, {attr: value}, text inside), of a DOM dump."""

    def __init__(self, text):
        super().__init__()
        self.elements, self._open = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        el = [tag, dict(attrs), ""]
        self.elements.append(el)
        if tag not in ("meta", "br", "img", "input", "link", "path", "line", "rect"):
            self._open.append(el)

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for el in self._open:
            el[2] += data

    def with_class(self, cls):
        return [(t, a, x) for t, a, x in self.elements if cls in (a.get("class") or "").split()]
