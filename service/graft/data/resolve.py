"""Turning a DatasetRef into a local path: confinement to data roots, uploads, and the
extracted-archive cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from graft.config import Config
from graft.data.scan import scan_dataset
from graft.domain import DatasetRef
from graft.errors import InvalidArgument, NotFound, ResourceExhausted

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
UPLOAD_META = "upload.json"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20
# An archive may expand to at most this many times the upload limit (zip bombs), and hold
# at most this many entries.
_EXPANSION_FACTOR = 8
_MAX_MEMBERS = 2_000_000


class UnsafeArchive(Exception):
    """An archive that is corrupt, too big once expanded, or tries to write outside its
    target; callers turn it into InvalidArgument on their own field."""


@dataclass(frozen=True)
class UploadInfo:
    """What UploadDataset reports back."""

    dataset_id: str
    size_bytes: int
    images: int
    classes: int
    skipped_files: int


def archive_suffix(name: str) -> str:
    """The supported archive suffix `name` ends with (lower-cased), or ""."""
    low = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if low.endswith(s)), "")


# --------------------------------------------------------------------------- resolving


def locate_dataset(ref: DatasetRef, config: Config) -> tuple[Path, str, str]:
    """Where `ref` points, checked cheaply (a few stat calls, no reading): the path, the
    request field it came from, and the upload's recorded sha256 ("" if none or a uri).

    `uri` must lie inside one of `config.data_roots` after resolving symlinks and `..`;
    a relative `uri` is looked up under each data root in turn. `dataset_id` names an
    upload. The path is a folder, a .csv manifest or an archive; anything else is rejected.
    This is all the API server does with a dataset: scanning is a worker's."""
    if bool(ref.uri) == bool(ref.dataset_id):
        raise InvalidArgument.of("dataset", "set exactly one of uri or dataset_id")
    known_sha = ""
    if ref.uri:
        path = _confined(ref.uri, config)
        field = "dataset.uri"
    else:
        path, known_sha = _upload_archive(ref.dataset_id, config)
        field = "dataset.dataset_id"
    if path.is_dir() or path.suffix.lower() == ".csv" or archive_suffix(path.name):
        return path, field, known_sha
    raise InvalidArgument.of(
        field,
        f"{path.name} is not a folder, a .zip/.tar/.tar.gz/.tgz archive or a .csv manifest",
    )


def resolve_dataset(ref: DatasetRef, config: Config) -> Path:
    """A local path for `ref` to scan: a folder, or a CSV manifest (see `locate_dataset`).
    Archives are extracted once into `config.cache_dir/extracted/<sha256>`."""
    path, field, known_sha = locate_dataset(ref, config)
    if archive_suffix(path.name) and not path.is_dir():
        try:
            return extracted_root(path, config, known_sha)
        except UnsafeArchive as e:
            raise InvalidArgument.of(field, str(e)) from None
    return path


def _confined(uri: str, config: Config) -> Path:
    raw = uri.removeprefix("file://")
    roots = [Path(r).resolve() for r in config.data_roots]
    allowed = ", ".join(str(r) for r in config.data_roots)  # as the operator named them
    if not roots:
        raise InvalidArgument.of(
            "dataset.uri",
            "no data roots are configured on this server (start it with --data-root DIR), "
            "so only uploads (dataset_id) can be used",
        )
    if Path(raw).is_absolute():
        options = [Path(raw)]
    else:
        options = [r / raw for r in roots]
        options = [p for p in options if p.exists()] or options[:1]
    path = options[0].resolve()  # follows symlinks: a link out of a root is outside
    if not any(path.is_relative_to(r) for r in roots):
        raise InvalidArgument.of(
            "dataset.uri", f"{uri!r} is outside the allowed data roots ({allowed})"
        )
    if not path.exists():
        raise NotFound(f"dataset {uri!r} does not exist")
    return path


def _upload_dir(dataset_id: str, config: Config) -> Path:
    if not _ID_RE.match(dataset_id):
        raise InvalidArgument.of(
            "dataset.dataset_id",
            "must be 1-64 letters, digits, '-' or '_' (as UploadDataset returned)",
        )
    return config.uploads_dir / dataset_id


def _upload_archive(dataset_id: str, config: Config) -> tuple[Path, str]:
    """The upload's archive and its sha256 (recorded when it was received)."""
    d = _upload_dir(dataset_id, config)
    try:
        meta = json.loads((d / UPLOAD_META).read_text())
        path = d / sanitise_filename(meta["filename"])
        sha = str(meta.get("sha256", ""))
    except (OSError, ValueError, KeyError, TypeError):
        raise NotFound(f"no uploaded dataset with id {dataset_id!r}") from None
    if not path.is_file():
        raise NotFound(f"uploaded dataset {dataset_id!r} has lost its archive")
    return path, sha if _SHA_RE.match(sha) else ""


# --------------------------------------------------------------------------- archives


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _archive_sha256(path: Path, config: Config) -> str:
    """sha256 of the archive, remembered by (path, size, mtime) so that a big archive is
    not hashed again on every request."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    memo = config.cache_dir / "extracted" / "by-stat" / key
    try:
        digest = memo.read_text().strip()
        if _SHA_RE.match(digest):
            return digest
    except OSError:
        pass
    digest = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{key}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest


def extracted_root(archive: Path, config: Config, sha256: str = "") -> Path:
    """Extract `archive` once into `cache_dir/extracted/<sha256>` and return the dataset
    folder inside it (the single top-level folder when the archive wraps one)."""
    digest = sha256 or _archive_sha256(archive, config)
    target = config.cache_dir / "extracted" / digest
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{digest[:16]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            limit = _EXPANSION_FACTOR * config.max_upload_bytes
            if archive_suffix(archive.name) == ".zip":
                _extract_zip(archive, tmp, limit)
            else:
                _extract_tar(archive, tmp, limit)
            try:
                os.rename(tmp, target)  # atomic; another process may have won the race
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _descend(target).resolve()


def _descend(target: Path) -> Path:
    entries = [p for p in target.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


def _check_member_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (parts and re.match(r"^[A-Za-z]:", parts[0])):
        raise UnsafeArchive(f"archive entry {name!r} has an absolute path")
    if ".." in parts:
        raise UnsafeArchive(f"archive entry {name!r} points outside the archive ('..')")


def _extract_zip(archive: Path, dest: Path, limit: int) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnsafeArchive(f"{archive.name} is not a readable zip archive: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise UnsafeArchive(f"archive has {len(infos)} entries, more than {_MAX_MEMBERS}")
        total = 0
        for info in infos:
            _check_member_name(info.filename)
            total += info.file_size
        if total > limit:
            raise UnsafeArchive(f"archive expands to {total} bytes, more than {limit}")
        root = dest.resolve()
        for info in infos:
            out = (dest / info.filename).resolve()
            if not out.is_relative_to(root):
                raise UnsafeArchive(f"archive entry {info.filename!r} points outside the archive")
            try:
                # Symlink entries are written as small regular files, never as links.
                zf.extract(info, dest)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise UnsafeArchive(f"cannot extract {info.filename!r}: {e}") from None


def _extract_tar(archive: Path, dest: Path, limit: int) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            if len(members) > _MAX_MEMBERS:
                raise UnsafeArchive(f"archive has {len(members)} entries, more than {_MAX_MEMBERS}")
            total = 0
            for m in members:
                _check_member_name(m.name)
                tarfile.data_filter(m, str(dest))  # absolute, '..', escaping links, devices
                total += m.size
            if total > limit:
                raise UnsafeArchive(f"archive expands to {total} bytes, more than {limit}")
            tf.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise UnsafeArchive(f"unsafe archive entry: {e}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UnsafeArchive(f"{archive.name} is not a readable tar archive: {e}") from None


# --------------------------------------------------------------------------- uploads


def sanitise_filename(filename: str) -> str:
    """The base name with anything but letters, digits, '.', '-' and '_' replaced."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    safe = _SAFE_NAME_RE.sub("_", base).lstrip(".")
    suffix = archive_suffix(safe)
    if not safe or safe.lower() == suffix:
        safe = "upload" + suffix
    return safe[-200:]


class UploadReceiver:
    """The API's part of an upload: write the streamed archive under
    `uploads_dir/<new id>/` and hash it, bounded by `config.max_upload_bytes`. Checking what
    the archive holds (extracting, scanning) is a worker's (`check_upload`). Blocking file
    I/O: the asyncio API calls it off its event loop, one chunk at a time."""

    def __init__(self, config: Config, filename: str, sha256: str = "") -> None:
        if not archive_suffix(filename):
            raise InvalidArgument.of(
                "filename", f"{filename!r} is not a .zip, .tar, .tar.gz or .tgz archive"
            )
        if sha256 and not _SHA_RE.match(sha256):
            raise InvalidArgument.of("sha256", "must be 64 hexadecimal digits")
        self.filename, self.expected_sha = filename, sha256.lower()
        self.name = sanitise_filename(filename)
        self.limit = config.max_upload_bytes
        self.dataset_id = uuid.uuid4().hex
        self.dir = config.uploads_dir / self.dataset_id
        self.dir.mkdir(parents=True)
        self._part = self.dir / (self.name + ".part")
        self._file = open(self._part, "wb")  # noqa: SIM115 (closed by finish or abort)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ResourceExhausted(
                f"upload exceeds the limit of {self.limit} bytes (max_upload_bytes)"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> dict[str, object]:
        """Close and check the archive; the request of its CHECK_UPLOAD task."""
        self._file.close()
        digest = self._hash.hexdigest()
        if self.size == 0:
            raise InvalidArgument.of("chunk", "the upload is empty")
        if self.expected_sha and digest != self.expected_sha:
            raise InvalidArgument.of(
                "sha256",
                f"the received {self.size} bytes hash to {digest}, not {self.expected_sha}",
            )
        os.replace(self._part, self.dir / self.name)
        return {
            "dataset_id": self.dataset_id,
            "filename": self.name,
            "original_filename": self.filename,
            "size_bytes": self.size,
            "sha256": digest,
        }

    def abort(self) -> None:
        """Nothing is kept of a rejected or abandoned upload."""
        self._file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def check_upload(config: Config, received: dict[str, object]) -> UploadInfo:
    """The worker's part of an upload: extract and scan the archive `UploadReceiver` wrote,
    then record it (its meta file makes it usable as a `dataset_id`).

    Raises InvalidArgument (`chunk`) for an unsafe archive, FailedPrecondition when it holds
    no usable dataset. Nothing is kept of a rejected upload."""
    dataset_id, name, digest = (str(received[k]) for k in ("dataset_id", "filename", "sha256"))
    d = _upload_dir(dataset_id, config)
    try:
        extracted = config.cache_dir / "extracted" / digest
        fresh = not extracted.is_dir()
        try:
            ds = scan_dataset(extracted_root(d / name, config, digest))
        except UnsafeArchive as e:
            raise InvalidArgument.of("chunk", str(e)) from None
        except BaseException:
            if fresh:  # don't let rejected uploads fill the cache
                shutil.rmtree(extracted, ignore_errors=True)
            raise
        meta = {
            "filename": name,
            "original_filename": received["original_filename"],
            "size_bytes": received["size_bytes"],
            "sha256": digest,
            "fingerprint": ds.fingerprint,
        }
        (d / (UPLOAD_META + ".tmp")).write_text(json.dumps(meta, indent=1))
        os.replace(d / (UPLOAD_META + ".tmp"), d / UPLOAD_META)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return UploadInfo(
        dataset_id=dataset_id,
        size_bytes=int(str(received["size_bytes"])),
        images=len(ds.samples),
        classes=len(ds.classes),
        skipped_files=len(ds.skipped),
    )


def save_upload(
    config: Config, filename: str, chunks: Iterable[bytes], sha256: str = ""
) -> UploadInfo:
    """Receive and check an upload in one call (scripts and tests; the service splits it
    between the API and a worker)."""
    receiver = UploadReceiver(config, filename, sha256)
    try:
        for chunk in chunks:
            receiver.write(chunk)
        received = receiver.finish()
    except BaseException:
        receiver.abort()
        raise
    return check_upload(config, received)


def delete_upload(dataset_id: str, config: Config) -> None:
    """Remove an upload (its extracted copy stays in the cache, shared by content)."""
    d = _upload_dir(dataset_id, config)
    if not (d / UPLOAD_META).is_file():
        raise NotFound(f"no uploaded dataset with id {dataset_id!r}")
    shutil.rmtree(d)
