"""A real headless Chromium for the report tests: the DOM after scripts ran, every console
message, a screenshot. CI installs Debian's `chromium` (.ci/run) and sets
MCIR_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
# Flags for a closed network: no background connections, no sandbox (root in CI).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000"]
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\] (.*)")

# Appended to a copy of the page: after load, what a reader's phone would show.
PROBE = """<script>window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var b = document.body.dataset;
  b.probeImages = imgs.length;
  b.probeImagesOk = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  b.probeOverflow = document.documentElement.scrollWidth > window.innerWidth;
  // the smallest drawn / natural width of a chart (its text shrinks with it)
  b.probeChartScale = Math.min.apply(null, Array.prototype.map.call(document.querySelectorAll("figure.chart img"),
    function (i) { return i.getBoundingClientRect().width / i.naturalWidth; }).concat([1]));
});</script>"""


def chromium() -> str:
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("MCIR_REQUIRE_BROWSER"):
        pytest.fail("MCIR_REQUIRE_BROWSER is set but no headless Chromium is installed")
    pytest.skip("no headless Chromium here (CI installs Debian's chromium)")


@dataclass
class Rendered:
    dom: str
    console: list[str]
    screenshot: Path


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def render(page: Path, work: Path, width: int = 412, height: int = 915, probe: bool = True) -> Rendered:
    """Open `page` (a copy with `PROBE` appended) at width x height: DOM, console, PNG."""
    work.mkdir(parents=True, exist_ok=True)
    target = page
    if probe:
        target = work / f"probed-{page.name}"
        text = page.read_text(encoding="utf-8")
        target.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    url = target.resolve().as_uri()
    shot = work / f"screenshot-{width}.png"
    dom = _run([f"--window-size={width},{height}", "--dump-dom", url], work / "profile-dom")
    pic = _run([f"--window-size={width},{height}", f"--screenshot={shot}", url], work / "profile-shot")
    console = [m.group(1) for proc in (dom, pic) for line in proc.stderr.splitlines()
               if (m := _CONSOLE.search(line))]
    assert dom.returncode == 0 and dom.stdout.strip(), dom.stderr[-2000:]
    assert shot.exists(), pic.stderr[-2000:]
    return Rendered(dom.stdout, console, shot)


class Cells(HTMLParser):
    """Every element with data-kind: its data-* attributes and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self._open: list[dict | None] = []
        self.imgs: list[str] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
            return
        if tag == "body":
            self.body = a
        cell = {k[5:]: v for k, v in a.items() if k.startswith("data-")} if "data-kind" in a else None
        if cell is not None:
            cell["text"] = ""
            self.cells.append(cell)
        self._open.append(cell)

    def handle_endtag(self, tag):
        if self._open and tag not in ("img", "meta", "br"):
            self._open.pop()

    def handle_data(self, data):
        for cell in self._open:
            if cell is not None:
                cell["text"] += data


def parsed(dom: str) -> Cells:
    p = Cells()
    p.feed(dom)
    return p
