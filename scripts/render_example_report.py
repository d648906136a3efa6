"""Write a model version's report into a folder, e.g. the walkthrough model's for docs/.

Usage: python scripts/render_example_report.py NAME[:VERSION|@ALIAS] --out DIR
           [--target HOST:PORT] [--figures-only] [--screenshot WIDTHxHEIGHT]

Asks a running server for the report (GetModelReport, as `graft report` does) and writes
it under DIR: report.html, report.json, figures/*.png and suspects/*.png, or with
--figures-only the figures alone (figures/*.png: the small PNGs to commit). With
--screenshot, Chromium (headless) also renders report.html into DIR/report-page.png.
Prints every file written with its size.

Example (the walkthrough's model, after `make serve` and its `graft train fashion ...`):
    python scripts/render_example_report.py fashion:1 --out docs/report-example --figures-only
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from graft_client import Client
from graft_client.reports import save_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", metavar="NAME[:VERSION|@ALIAS]")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--figures-only", action="store_true")
    parser.add_argument("--screenshot", metavar="WIDTHxHEIGHT", help="e.g. 1200x4000")
    args = parser.parse_args(argv)
    with Client(args.target) as client:
        report = client.get_model_report(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        html = save_report(report, Path(tmp) / "report")
        source = html.parent
        if args.figures_only:
            source = source / "figures"
        destination = args.out / "figures" if args.figures_only else args.out
        shutil.copytree(source, destination, dirs_exist_ok=True)
        if args.screenshot:
            width, _, height = args.screenshot.partition("x")
            _screenshot(html, args.out / "report-page.png", int(width), int(height))
    for path in sorted(p for p in args.out.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size:>9,}  {path}")
    print(f"{report.model.name} version {report.model.version}")
    return 0


def _screenshot(html: Path, out: Path, width: int, height: int) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("--screenshot needs Chromium (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"]
    shot = [f"--screenshot={out.resolve()}", html.resolve().as_uri()]
    subprocess.run([binary, *flags, *shot], check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
