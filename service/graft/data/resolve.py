"""Turning a DatasetRef into a local path: confinement to data roots, uploads, and the
extracted-archive cache.

On disk: an upload is `uploads_dir/<dataset_id>/` with its archive, its meta file and its
own extracted copy (`extracted/`), so that deleting it frees all of it and what a tenant
stores is exact; an archive in a data root is extracted once into the shared cache
`cache_dir/extracted/<sha256>` (its size beside it in `<sha256>.size`, its last use the
folder's mtime: graft.data.retention evicts the least recently used)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.config import Config
from graft.data.archives import ExtractLimits, UnsafeArchive
from graft.data.archives import extract_tar as _extract_tar
from graft.data.archives import extract_zip as _extract_zip
from graft.data.files import FileProblem, inside, kind_of, lexical_real_path, real_path
from graft.data.scan import scan_dataset
from graft.domain import DatasetRef
from graft.errors import Cancelled, InvalidArgument, NotFound, ResourceExhausted, quote

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
UPLOAD_META = "upload.json"
UPLOAD_EXTRACTED = "extracted"  # an upload's own extracted copy, inside its folder
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20
MAX_URI_CHARS = 1024  # a dataset.uri longer than this is refused before touching the disk
DELETING_PREFIX = ".deleting-"  # an upload folder being removed (renamed away first)


@dataclass(frozen=True)
class UploadInfo:
    """What UploadDataset reports back."""

    dataset_id: str
    size_bytes: int
    images: int
    classes: int
    skipped_files: int
    extracted_bytes: int = 0  # its extracted copy, as counted while extracting


@dataclass(frozen=True)
class UploadQuota:
    """A tenant's upload quota in bytes (0: none) and what its uploads store already."""

    limit: int
    used: int

    @property
    def left(self) -> int | None:
        """Bytes it may still store (None: no quota)."""
        return self.limit - self.used if self.limit else None

    def exceeded(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the upload passes this tenant's upload quota: its uploads store {self.used} of"
            f" {self.limit} bytes (upload_quota_bytes); delete unused ones (graft datasets"
            " delete) or ask for a larger quota"
        )


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
    mode = path.stat().st_mode  # `path` is resolved: no link left to follow
    if stat.S_ISDIR(mode):
        return path, field, known_sha
    if not stat.S_ISREG(mode):
        raise InvalidArgument.of(field, f"{quote(path.name)} is a {kind_of(mode)}, not a dataset")
    if path.suffix.lower() == ".csv" or archive_suffix(path.name):
        return path, field, known_sha
    raise InvalidArgument.of(
        field,
        f"{quote(path.name)} is not a folder, a .zip/.tar/.tar.gz/.tgz archive or a .csv manifest",
    )


def resolve_dataset(ref: DatasetRef, config: Config) -> Path:
    """A local path for `ref` to scan: a folder, or a CSV manifest (see `locate_dataset`).
    Archives are extracted once into `config.cache_dir/extracted/<sha256>`."""
    path, field, known_sha = locate_dataset(ref, config)
    if archive_suffix(path.name) and path.is_file():
        try:
            if ref.dataset_id:
                return upload_root(path, config)
            return extracted_root(path, config, known_sha)
        except UnsafeArchive as e:
            raise InvalidArgument.of(field, str(e)) from None
    return path


def _confined(uri: str, config: Config) -> Path:
    """The real path `uri` names inside a data root: links and `..` resolved strictly (a
    link out of a root is outside; a loop, a NUL byte or an over-long name is refused)."""
    raw = uri.removeprefix("file://")
    if "\0" in raw:
        raise InvalidArgument.of("dataset.uri", "contains a NUL byte")
    if len(raw) > MAX_URI_CHARS:
        raise InvalidArgument.of(
            "dataset.uri", f"is {len(raw)} characters long, more than {MAX_URI_CHARS}"
        )
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
        options = [p for p in options if os.path.lexists(p)] or options[:1]
    # Confinement first, on the path resolved as far as it exists, so that a missing path
    # outside the roots is "outside", not "not found"; then strictly.
    if not any(inside(lexical_real_path(options[0]), r) for r in roots):
        raise InvalidArgument.of(
            "dataset.uri", f"{quote(uri)} is outside the allowed data roots ({allowed})"
        )
    try:
        path = real_path(options[0])
    except FileProblem as e:
        if e.missing:
            raise NotFound(f"dataset {quote(uri)} does not exist") from None
        raise InvalidArgument.of("dataset.uri", f"{quote(uri)}: {e.reason}") from None
    if not any(inside(path, r) for r in roots):
        raise InvalidArgument.of(
            "dataset.uri", f"{quote(uri)} is outside the allowed data roots ({allowed})"
        )
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
        raise NotFound(f"no uploaded dataset with id {quote(dataset_id)}") from None
    if not path.is_file():
        raise NotFound(f"uploaded dataset {quote(dataset_id)} has lost its archive")
    return path, sha if _SHA_RE.match(sha) else ""


# --------------------------------------------------------------------------- archives


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def archive_sha256(path: Path, config: Config) -> str:
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
    """Extract the data-root archive `archive` once into `cache_dir/extracted/<sha256>` and
    return the dataset folder inside it (the single top-level folder when the archive wraps
    one). Each use sets the folder's mtime: the cache evicts the least recently used."""
    digest = sha256 or archive_sha256(archive, config)
    target = config.cache_dir / "extracted" / digest
    try:
        os.utime(target)  # the cache's clock of last use
        extracted = target.is_dir()
    except FileNotFoundError:  # not extracted yet (or evicted this instant)
        extracted = False
    if not extracted:
        target.parent.mkdir(parents=True, exist_ok=True)
        limits = ExtractLimits.for_archive(archive.stat().st_size, config)
        size = _extract(archive, target, limits)
        if size:
            write_atomically(target.parent / f"{digest}.size", str(size))
    return _descend(target).resolve()


def upload_root(archive: Path, config: Config) -> Path:
    """The dataset folder of the upload whose archive is `archive`: its own extracted copy
    (made by `check_upload`; an upload older than that is extracted now)."""
    target = archive.parent / UPLOAD_EXTRACTED
    if not target.is_dir():
        _extract(archive, target, ExtractLimits.for_archive(archive.stat().st_size, config))
    return _descend(target).resolve()


def _extract(archive: Path, target: Path, limits: ExtractLimits) -> int:
    """Extract `archive` into the new folder `target` (through a temporary sibling renamed
    into place, so `target` is complete or absent); the bytes written, 0 when another
    process extracted it first. `target`'s parent must exist."""
    tmp = target.parent / f".tmp-{target.name[:16]}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        if archive_suffix(archive.name) == ".zip":
            size = _extract_zip(archive, tmp, limits)
        else:
            size = _extract_tar(archive, tmp, limits)
        try:
            os.rename(tmp, target)  # atomic; another process may have won the race
        except OSError:
            if not target.is_dir():
                raise
            return 0
        return size
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """`path` holds `text` in full or keeps what it held (a temporary file renamed)."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _descend(target: Path) -> Path:
    entries = [p for p in target.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


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
    `uploads_dir/<new id>/` and hash it, bounded by `config.max_upload_bytes` and by what is
    left of the tenant's `quota` (RESOURCE_EXHAUSTED at the first byte past either). Checking
    what the archive holds (extracting, scanning) is a worker's (`check_upload`). Blocking
    file I/O: the asyncio API calls it off its event loop, one chunk at a time."""

    def __init__(
        self, config: Config, filename: str, sha256: str = "", quota: UploadQuota | None = None
    ) -> None:
        if len(filename) > MAX_URI_CHARS:
            raise InvalidArgument.of(
                "filename", f"is {len(filename)} characters long, more than {MAX_URI_CHARS}"
            )
        if not archive_suffix(filename):
            raise InvalidArgument.of(
                "filename", f"{quote(filename)} is not a .zip, .tar, .tar.gz or .tgz archive"
            )
        if sha256 and not _SHA_RE.match(sha256):
            raise InvalidArgument.of("sha256", "must be 64 hexadecimal digits")
        self.filename, self.expected_sha = filename, sha256.lower()
        self.name = sanitise_filename(filename)
        self.limit = config.max_upload_bytes
        self.quota = quota
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
        if self.quota is not None:
            left = self.quota.left
            if left is not None and self.size > left:
                raise self.quota.exceeded()
        self._hash.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhausted(
                    "not enough disk space on the server for the upload"
                ) from None
            raise

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
    """The worker's part of an upload: extract the archive `UploadReceiver` wrote into the
    upload's own folder and scan it, then record it (its meta file makes it usable as a
    `dataset_id`). `received["quota_left_bytes"]`, when set, bounds the extracted copy.

    Raises InvalidArgument (`chunk`) for an unsafe archive, ResourceExhausted past the
    quota, FailedPrecondition when it holds no usable dataset. Nothing is kept of a
    rejected upload."""
    dataset_id, name, digest = (str(received[k]) for k in ("dataset_id", "filename", "sha256"))
    d = _upload_dir(dataset_id, config)
    quota_left = received.get("quota_left_bytes")
    try:
        archive = d / name
        limits = ExtractLimits.for_archive(archive.stat().st_size, config)
        if quota_left is not None:
            limits = dataclasses.replace(limits, quota_bytes=int(str(quota_left)))
        try:
            extracted_bytes = _extract(archive, d / UPLOAD_EXTRACTED, limits)
            root = _descend(d / UPLOAD_EXTRACTED).resolve()
            ds = scan_dataset(
                root, max_pixels=config.max_image_pixels, max_classes=config.max_classes
            )
        except UnsafeArchive as e:
            raise InvalidArgument.of("chunk", str(e)) from None
        meta = {
            "filename": name,
            "original_filename": received["original_filename"],
            "size_bytes": received["size_bytes"],
            "sha256": digest,
            "fingerprint": ds.fingerprint,
            "extracted_bytes": extracted_bytes,
        }
        if "tenant" in received:  # an upload the store records (graft.advisor.housekeeping)
            meta["tenant"] = received["tenant"]
        (d / (UPLOAD_META + ".tmp")).write_text(json.dumps(meta, indent=1))
        os.replace(d / (UPLOAD_META + ".tmp"), d / UPLOAD_META)
    except FileNotFoundError:
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
            raise
        # The API removed it: its caller went away or ran out of time (not a bug).
        raise Cancelled(f"upload {dataset_id} was withdrawn while it was checked") from None
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return UploadInfo(
        dataset_id=dataset_id,
        size_bytes=int(str(received["size_bytes"])),
        images=len(ds.samples),
        classes=len(ds.classes),
        skipped_files=len(ds.skipped),
        extracted_bytes=extracted_bytes,
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


def read_upload_meta(dataset_id: str, config: Config) -> dict[str, Any] | None:
    """The meta file of a checked upload (None: none, or unreadable)."""
    try:
        meta = json.loads((_upload_dir(dataset_id, config) / UPLOAD_META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def remove_upload(dataset_id: str, config: Config) -> bool:
    """Remove an upload's folder (archive, extracted copy, meta); False if it had none.
    The folder is renamed away first, so a half-removed one is never taken for an upload
    (graft.data.retention clears what a crash leaves of it)."""
    d = _upload_dir(dataset_id, config)
    doomed = d.with_name(f"{DELETING_PREFIX}{dataset_id}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(d, doomed)
    except FileNotFoundError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True
