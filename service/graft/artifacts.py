"""Files that several processes, on several hosts, write and read (docs/SCALING.md § Shared
artifacts): checkpoints and feature caches, imported backbone weights, upload archives, the
registry's weights. Two guarantees, whatever the file system (a local disk or a shared
volume):

- **Atomic, durable writes.** `write_artifact` writes into a temporary file in the
  destination's own folder, fsyncs it, renames it over the destination and fsyncs the
  folder. A reader on any host sees the previous file or the new one, whole; a crash, a
  SIGKILL or a power cut leaves one of the two.
- **Content hashes checked on read.** The sha256 of what was written is recorded, and
  `verify_file` / `read_verified` compare it with what is read. A mismatch raises
  `CorruptArtifact` (a FailedPrecondition) naming the file and both digests, never hands the
  bytes on: a torn copy, a bad disk, or another volume mounted where the shared one should
  be. Where the digest is recorded: the registry's weights in the store, an upload's archive
  in its request and its meta file, everything `write_artifact` writes in a sidecar
  `<name>.sha256`.

The sidecar is JSON, `{"file": name, "sha256": new, "replaces": previous}`, and is written
(atomically, durably) *before* the rename: a writer that dies between the two leaves the
previous file in place, whose digest the sidecar still accepts as `replaces`. So no window
exists in which a whole file fails its check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from graft.errors import FailedPrecondition

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
_BLOCK = 1 << 20


class CorruptArtifact(FailedPrecondition):
    """A shared file is not what was written: its sha256 differs from the recorded one, or
    none was recorded."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    try:
        fsync_file(path)
    except OSError:  # some file systems cannot fsync a directory; the rename still happened
        log.debug("could not fsync directory %s", path)


def sidecar(path: Path) -> Path:
    """Where the sha256 of `path` is recorded."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_artifact(path: Path, write: Callable[[Path], object]) -> str:
    """Write `path` through `write(tmp)`, which fills the (existing, empty) temporary file
    `tmp`, atomically and durably, and record its sha256 beside it; returns the digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fsync_file(tmp)
        digest = sha256_file(tmp)
        try:
            previous = recorded_digests(path, missing_ok=True)
        except CorruptArtifact:  # an unreadable record is replaced; its file is not accepted
            previous = ()
        record = {"file": path.name, "sha256": digest, "replaces": previous[0] if previous else ""}
        _replace_text(sidecar(path), json.dumps(record) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest


def write_text_durably(path: Path, text: str) -> None:
    """`path` holds `text` in full, durably, or keeps what it held (no sidecar: for files
    that are themselves a record, such as an upload's meta file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_text(path, text)


def _replace_text(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def recorded_digests(path: Path, *, missing_ok: bool = False) -> tuple[str, ...]:
    """The digests the sidecar of `path` accepts: the one last written first, then the one
    it replaced (if any). No sidecar: () when `missing_ok`, else CorruptArtifact."""
    record_path = sidecar(path)
    try:
        record = json.loads(record_path.read_text())
        digests = (str(record["sha256"]), str(record.get("replaces") or ""))
    except FileNotFoundError:
        if missing_ok:
            return ()
        raise CorruptArtifact(
            f"artifact unverifiable: {path} has no recorded sha256 ({record_path.name} is"
            " missing); it was not written by this release's Graft, or its record was lost"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptArtifact(f"artifact corrupted: {record_path} is unreadable ({e})") from e
    return tuple(d for d in digests if d)


def check_digest(path: Path, digest: str, expected: Iterable[str], whose: str = "") -> None:
    """Raise CorruptArtifact unless `digest` (of what was read from `path`) is one of the
    `expected` ones. `whose` completes "..., but {whose} <digest>" in the message (default:
    "its record says")."""
    accepted = tuple(expected)
    if digest not in accepted:
        raise CorruptArtifact(
            f"artifact corrupted: {path} has sha256 {digest}, but {whose or 'its record says'}"
            f" {' or '.join(accepted) or 'nothing'}"
        )


def verify_file(path: Path, expected: str = "", whose: str = "") -> str:
    """Hash `path` and check it against `expected`, or when that is empty against its
    sidecar; returns the digest. CorruptArtifact on a mismatch or a missing record."""
    accepted = (expected,) if expected else recorded_digests(path)
    digest = sha256_file(path)
    check_digest(path, digest, accepted, whose)
    return digest


def read_verified(path: Path, expected: str = "", whose: str = "") -> bytes:
    """The bytes of `path`, checked as `verify_file` does: the very bytes hashed are the
    ones returned, so nothing can change between the check and the use."""
    accepted = (expected,) if expected else recorded_digests(path)
    data = path.read_bytes()
    check_digest(path, hashlib.sha256(data).hexdigest(), accepted, whose)
    return data
