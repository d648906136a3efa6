"""Turning a DatasetRef into a local path: confinement to data roots, an upload's folder by
its id, and the extracted-archive cache. Receiving and checking uploads is
graft.data.uploads'.

On disk: an upload is `uploads_dir/<dataset_id>/` with its archive, its meta file and its
own extracted copy (`extracted/`), so that deleting it frees all of it and what a tenant
stores is exact; an archive in a data root is extracted once into the shared cache
`cache_dir/extracted/<sha256>` (its size beside it in `<sha256>.size`, its last use the
folder's mtime: graft.data.retention evicts the least recently used)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from pathlib import Path

from graft.artifacts import verify_file
from graft.config import Config
from graft.data.archive_writer import ExtractLimits, UnsafeArchive
from graft.data.archives import extract_tar as _extract_tar
from graft.data.archives import extract_zip as _extract_zip
from graft.data.files import FileProblem, inside, kind_of, lexical_real_path, real_path
from graft.data.scan import ScannedDataset, scan_dataset
from graft.domain import DatasetRef
from graft.errors import InvalidArgument, NotFound, quote

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
UPLOAD_META = "upload.json"
UPLOAD_EXTRACTED = "extracted"  # an upload's own extracted copy, inside its folder
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20
MAX_URI_CHARS = 1024  # a dataset.uri longer than this is refused before touching the disk


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
                return upload_root(path, config, known_sha)
            return extracted_root(path, config, known_sha)
        except UnsafeArchive as e:
            raise InvalidArgument.of(field, str(e)) from None
    return path


def open_dataset(ref: DatasetRef, config: Config) -> ScannedDataset:
    """`ref` resolved (`resolve_dataset`) and scanned within the server's limits on image
    pixels and classes: what a job, an Advise, a comparison or an export's check reads."""
    return scan_dataset(
        resolve_dataset(ref, config),
        max_pixels=config.max_image_pixels,
        max_classes=config.max_classes,
    )


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


# --------------------------------------------------------------------------- an upload's folder


def upload_dir(dataset_id: str, config: Config) -> Path:
    """The folder of the upload `dataset_id` (InvalidArgument for a malformed id)."""
    if not _ID_RE.match(dataset_id):
        raise InvalidArgument.of(
            "dataset.dataset_id",
            "must be 1-64 letters, digits, '-' or '_' (as UploadDataset returned)",
        )
    return config.uploads_dir / dataset_id


def _upload_archive(dataset_id: str, config: Config) -> tuple[Path, str]:
    """The upload's archive and its sha256 (recorded when it was received)."""
    d = upload_dir(dataset_id, config)
    try:
        meta = json.loads((d / UPLOAD_META).read_text())
        path = d / sanitise_filename(meta["filename"])
        sha = str(meta.get("sha256", ""))
    except (OSError, ValueError, KeyError, TypeError):
        raise NotFound(f"no uploaded dataset with id {quote(dataset_id)}") from None
    if not path.is_file():
        raise NotFound(f"uploaded dataset {quote(dataset_id)} has lost its archive")
    return path, sha if SHA256_RE.match(sha) else ""


def sanitise_filename(filename: str) -> str:
    """The base name with anything but letters, digits, '.', '-' and '_' replaced."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    safe = _SAFE_NAME_RE.sub("_", base).lstrip(".")
    suffix = archive_suffix(safe)
    if not safe or safe.lower() == suffix:
        safe = "upload" + suffix
    return safe[-200:]


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
        if SHA256_RE.match(digest):
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
        size = extract_archive(archive, target, limits)
        if size:
            write_atomically(target.parent / f"{digest}.size", str(size))
    return dataset_folder(target).resolve()


def upload_root(archive: Path, config: Config, sha256: str = "") -> Path:
    """The dataset folder of the upload whose archive is `archive`: its own extracted copy
    (made by `check_upload`; an upload older than that is extracted now, once its bytes
    match `sha256`, the digest recorded when it was received, when one was)."""
    target = archive.parent / UPLOAD_EXTRACTED
    if not target.is_dir():
        if sha256:
            verify_file(archive, sha256, "its upload record says")
        extract_archive(archive, target, ExtractLimits.for_archive(archive.stat().st_size, config))
    return dataset_folder(target).resolve()


def extract_archive(archive: Path, target: Path, limits: ExtractLimits) -> int:
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


def dataset_folder(target: Path) -> Path:
    """The dataset inside the extraction `target`: its single top-level folder when the
    archive wraps one (dotfiles and __MACOSX aside), else `target` itself."""
    entries = [p for p in target.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target
