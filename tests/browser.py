"""A real browser for the tests: Debian's Chromium, headless, rendering a page from a file.

`load` renders a page twice: once for a screenshot, and once, from a copy with a probe
script appended, to count the images the browser could not decode (the report itself has
no script; the probe is the test's). Console messages of both runs (a script error, a
`console.error`) are collected from Chromium's log (`--enable-logging=stderr`): Chromium
logs them as `INFO:CONSOLE` lines.

Chromium runs as root here only with `--no-sandbox`; `--disable-gpu` keeps it off any GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "Chromium is not installed (Debian: apt-get install chromium; make test installs it)"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0")
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0));
  document.body.setAttribute("data-probe-images", images.length + " " + broken.length);
  broken.forEach((i) => console.error("broken image: " + i.alt));
});
</script>"""
_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)")
_PROBED = re.compile(r'data-probe-images="(\d+) (\d+)"')


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Rendered:
    screenshot: Path
    console: list[str]  # console messages, both runs
    images: int  # <img> elements the probe found
    broken_images: int  # of which the browser could not decode


def _run(binary: str, *args: str) -> tuple[str, str]:
    done = subprocess.run(
        [binary, *FLAGS, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-3000:]}")
    return done.stdout, done.stderr


def load(binary: str, page: Path, screenshot: Path, size: tuple[int, int]) -> Rendered:
    """Render `page` (a file) at `size` (width, height) into `screenshot` (PNG)."""
    _, log = _run(
        binary,
        f"--screenshot={screenshot}",
        f"--window-size={size[0]},{size[1]}",
        page.resolve().as_uri(),
    )
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    try:
        dom, probe_log = _run(binary, "--dump-dom", "--virtual-time-budget=5000", probed.as_uri())
    finally:
        probed.unlink()
    found = _PROBED.search(dom)
    if found is None:
        raise AssertionError("the probe did not run: the page never finished loading")
    console = [m.group(1) for m in _CONSOLE.finditer(log + probe_log)]
    return Rendered(screenshot, console, int(found.group(1)), int(found.group(2)))
