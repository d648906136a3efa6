"""Uploaded datasets: receiving the streamed archive (the API's part), checking it by
extracting and scanning it (a worker's part), and removing it. Where an upload lives on
disk is graft.data.resolve's (see its docstring)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from graft.artifacts import fsync_dir, verify_file, write_text_durably
from graft.config import Config
from graft.data.archive_writer import ExtractLimits, UnsafeArchive
from graft.data.resolve import (
    MAX_URI_CHARS,
    SHA256_RE,
    UPLOAD_EXTRACTED,
    UPLOAD_META,
    archive_suffix,
    dataset_folder,
    extract_archive,
    sanitise_filename,
    upload_dir,
)
from graft.data.scan import scan_dataset
from graft.errors import Cancelled, InvalidArgument, ResourceExhausted, quote

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
        if sha256 and not SHA256_RE.match(sha256):
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
        """Close and check the archive, durably in place (a worker on another host reads
        it next); the request of its CHECK_UPLOAD task, which carries its sha256."""
        self._file.flush()
        os.fsync(self._file.fileno())
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
        fsync_dir(self.dir)
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
    d = upload_dir(dataset_id, config)
    quota_left = received.get("quota_left_bytes")
    try:
        archive = d / name
        # The API (maybe another replica, on another host) hashed what it received: what
        # is read here from the shared volume must be those bytes.
        verify_file(archive, digest, "the server received")
        limits = ExtractLimits.for_archive(archive.stat().st_size, config)
        if quota_left is not None:
            limits = dataclasses.replace(limits, quota_bytes=int(str(quota_left)))
        try:
            extracted_bytes = extract_archive(archive, d / UPLOAD_EXTRACTED, limits)
            root = dataset_folder(d / UPLOAD_EXTRACTED).resolve()
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
        write_text_durably(d / UPLOAD_META, json.dumps(meta, indent=1))
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


def remove_upload(dataset_id: str, config: Config) -> bool:
    """Remove an upload's folder (archive, extracted copy, meta); False if it had none.
    The folder is renamed away first, so a half-removed one is never taken for an upload
    (graft.data.retention clears what a crash leaves of it)."""
    d = upload_dir(dataset_id, config)
    doomed = d.with_name(f"{DELETING_PREFIX}{dataset_id}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(d, doomed)
    except FileNotFoundError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True
