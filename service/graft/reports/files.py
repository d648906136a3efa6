"""Where a version's report lives in its artifact folder, and reading it back (the API
process: standard library only, no figures computed here).

Under `<version folder>/report/`, published with the version (graft.registry: staged, then
renamed into place with the weights and the card):

- `report.html`: the page, self-contained (figures as data: URIs, no script);
- `report.json`: the same data for programs (`REPORT_FORMAT` says its shape's version);
- `figures/*.png` and `suspects/*.png`: the figures and thumbnails the page shows;
- or `failure.json` alone, `{"reason": ...}`: the worker could not make the report, and why
  (the version itself registered and serves).

A version folder without `report/` was registered before Graft made reports.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from graft.errors import FailedPrecondition, NotFound

REPORT_DIR = "report"
HTML_FILE = "report.html"
JSON_FILE = "report.json"
FAILURE_FILE = "failure.json"
REPORT_FORMAT = 1
# A report is a few hundred kB (docs/REPORTS.md); far more is not one the worker wrote, and
# must not be read into one gRPC message.
MAX_REPORT_BYTES = 32 * 1024 * 1024
MEDIA_TYPES = {".html": "text/html", ".png": "image/png", ".json": "application/json"}


@dataclass(frozen=True)
class ReportFile:
    """One file of a stored report, relative to the report's folder."""

    path: str  # '/'-separated
    data: bytes
    media_type: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class StoredReport:
    report_json: str  # report.json's text
    files: tuple[ReportFile, ...]  # report.html and the PNGs, by path


def report_path(name: str) -> str:
    """The path of report file `name` relative to the version's folder."""
    return f"{REPORT_DIR}/{name}"


def failure_files(reason: str) -> dict[str, bytes]:
    """What a version publishes instead of a report the worker could not make."""
    note = {"report_format": REPORT_FORMAT, "reason": reason}
    return {report_path(FAILURE_FILE): json.dumps(note, indent=2).encode()}


def read_report(version_dir: Path, what: str) -> StoredReport:
    """The report stored in `version_dir` (the artifact folder of the version `what`
    names, e.g. "model 'shoes' version 3"), or why there is none: NotFound for a version
    registered before reports existed, FailedPrecondition when the worker could not make
    it or the folder is damaged."""
    if not version_dir.is_dir():
        raise FailedPrecondition(
            f"artifact missing: {what} has no folder {version_dir} on this server; mount the "
            "shared artifacts directory the workers write to"
        )
    folder = version_dir / REPORT_DIR
    failure = folder / FAILURE_FILE
    if failure.is_file():
        raise FailedPrecondition(
            f"{what} has no report: the worker could not make it when it registered the "
            f"version ({_reason(failure)}). The version serves as usual; train again for a "
            "version with a report"
        )
    if not folder.is_dir():
        raise NotFound(
            f"{what} has no report: it was registered before Graft made reports; train the "
            "model again for a version with one"
        )
    try:
        text = (folder / JSON_FILE).read_text(encoding="utf-8")
        if not isinstance(json.loads(text), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"report damaged: {what} has an unreadable {REPORT_DIR}/{JSON_FILE} ({exc})"
        ) from exc
    files, total = [], len(text)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == JSON_FILE:
            continue
        total += path.stat().st_size
        if total > MAX_REPORT_BYTES:
            raise FailedPrecondition(
                f"report damaged: {what}'s report is over {MAX_REPORT_BYTES >> 20} MiB"
            )
        media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        files.append(ReportFile(rel, path.read_bytes(), media))
    if HTML_FILE not in {f.path for f in files}:
        raise FailedPrecondition(f"report damaged: {what} has no {REPORT_DIR}/{HTML_FILE}")
    return StoredReport(text, tuple(files))


def _reason(failure: Path) -> str:
    try:
        reason = json.loads(failure.read_text(encoding="utf-8")).get("reason")
    except (OSError, ValueError, AttributeError):
        reason = None
    return str(reason) if reason else "no reason was recorded"
