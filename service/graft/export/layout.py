"""Where exports live and what records them, without torch: the API reads this much to
stream an export that a worker made (graft.export.exporter).

An export of tenant T's model N, version V, to format F is the folder
`<artifacts>/exports/T/N/V/F/`, shared by every host like the registry. Its files are
written with graft.artifacts.write_artifact (atomic, with a sha256 sidecar each) into a
staging folder that is renamed into place whole, with `export.json` last: the record of
what the export holds (each file's path, size, sha256 and media type, in the order they
are sent), the weights it was made from and how it was verified. An export is reused only
when its record verifies against its sidecar, names the same weights and format version,
and every file it lists has the recorded size and sha256; anything else is made again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from graft.artifacts import CorruptArtifact, read_verified, verify_file

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "triton")
EXPORTS_DIR = "exports"
RECORD_FILE = "export.json"
# Bumped whenever what an export holds changes: older exports are then made again.
EXPORT_VERSION = 1

_MEDIA_TYPES = {
    ".json": "application/json",
    ".txt": "text/plain",
    ".pbtxt": "text/plain",
    ".onnx": "application/octet-stream",
    ".pt": "application/octet-stream",
}


def media_type(path: str) -> str:
    return _MEDIA_TYPES.get(Path(path).suffix, "application/octet-stream")


def exports_root(artifacts_root: Path) -> Path:
    """The folder of every export (`Config.artifacts_root / "exports"`)."""
    return Path(artifacts_root) / EXPORTS_DIR


def export_folder(tenant: str, name: str, version: int, fmt: str) -> str:
    """An export's folder relative to `exports_root`, '/'-separated. Tenants and model
    names are validated names (never '.' or '..', never starting with '.'), so the path
    stays inside the root and meets none of its hidden folders."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    return f"{tenant}/{name}/{int(version)}/{fmt}"


@dataclass(frozen=True)
class ExportedFile:
    path: str  # relative to the export's folder, '/'-separated
    size: int
    sha256: str
    media_type: str


@dataclass(frozen=True)
class ExportRecord:
    """What an export holds and how it was checked (`export.json`)."""

    name: str
    version: int
    tenant: str
    format: str
    weights_sha256: str  # the registered weights it was made from
    verification: str  # e.g. "ONNX Runtime on 32 validation images ...: same top-1 32/32, ..."
    files: tuple[ExportedFile, ...]
    export_version: int = EXPORT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportRecord:
        """The record `to_dict` wrote; ValueError (or KeyError, TypeError) if it is not."""
        files = tuple(
            ExportedFile(str(f["path"]), int(f["size"]), str(f["sha256"]), str(f["media_type"]))
            for f in d["files"]
        )
        for f in files:
            if not is_safe_path(f.path):
                raise ValueError(f"export record lists an unsafe path {f.path!r}")
        return cls(
            name=str(d["name"]),
            version=int(d["version"]),
            tenant=str(d["tenant"]),
            format=str(d["format"]),
            weights_sha256=str(d["weights_sha256"]),
            verification=str(d["verification"]),
            files=files,
            export_version=int(d["export_version"]),
        )


def is_safe_path(path: str) -> bool:
    """A relative '/'-separated path with no empty, '.' or '..' part."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def file_entry(folder: Path, relative: str, sha256: str) -> ExportedFile:
    """The record entry of a file just written under `folder`."""
    size = (folder / relative).stat().st_size
    return ExportedFile(relative, size, sha256, media_type(relative))


def read_valid(folder: Path, weights_sha256: str, fmt: str) -> ExportRecord | None:
    """The record of the export in `folder` if it can be reused as it is (see the module
    doc), else None (there is none, or it is stale, torn or corrupted: logged)."""
    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        return None
    try:
        record = ExportRecord.from_dict(json.loads(read_verified(record_path)))
        if (record.weights_sha256, record.export_version, record.format) != (
            weights_sha256,
            EXPORT_VERSION,
            fmt,
        ):
            log.info("export %s is stale (other weights or format version); remaking it", folder)
            return None
        for f in record.files:
            path = folder / f.path
            if path.stat().st_size != f.size:
                raise CorruptArtifact(f"artifact corrupted: {path} is not {f.size} bytes")
            verify_file(path, f.sha256, "the export record says")
    except (OSError, ValueError, KeyError, TypeError, CorruptArtifact) as exc:
        log.warning("export %s cannot be reused (%s); remaking it", folder, exc)
        return None
    return record
