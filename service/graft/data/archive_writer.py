"""Writing the entries of an archive that nobody vouches for, and the limits on it
(graft.data.archives reads the zip and tar formats and hands each entry here).

- names are checked (`member_parts`: no absolute path, no `..`, no NUL, bounded length
  and depth) and each entry is created through folder file descriptors: every folder
  component opened with O_NOFOLLOW | O_DIRECTORY, every file created with
  O_CREAT | O_EXCL | O_NOFOLLOW, so nothing is written through a link or over an earlier
  entry;
- expansion is counted while writing against `ExtractLimits`: each entry counts
  `ENTRY_COST` bytes besides its data, at most `max_archive_members` entries, and what
  passes a tenant's upload quota is ResourceExhausted (`check_quota`).
"""

from __future__ import annotations

import contextlib
import errno
import lzma
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from graft.config import Config
from graft.errors import ResourceExhausted, quote

ENTRY_COST = 512  # bytes each entry counts against the budget besides its data (an inode)
MIN_BUDGET = 1 << 20  # a tiny archive may always expand to this much
MAX_NAME_BYTES = 255  # one path component (the file system's NAME_MAX)
MAX_PATH_BYTES = 1024  # an entry's whole relative path
MAX_DEPTH = 64  # folder levels of an entry
CHUNK = 1 << 16  # bytes of an entry read and written at a time
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What a corrupt or truncated compressed stream raises from the decompressors.
STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError, zipfile.BadZipFile)


class UnsafeArchive(Exception):
    """An archive that is corrupt, too big once expanded, holds links or special files, or
    tries to write outside its target; callers turn it into InvalidArgument on their own
    field."""


@dataclass(frozen=True)
class ExtractLimits:
    """How much one archive may expand to: bytes (data plus ENTRY_COST per entry) and
    entries. `quota_bytes`, when set, is what is left of the upload quota of the tenant whose
    archive this is: passing it is ResourceExhausted (the archive is not at fault)."""

    max_bytes: int
    max_members: int
    quota_bytes: int | None = None

    @property
    def budget(self) -> int:
        """The bytes it may expand to before one limit or the other refuses it."""
        return self.max_bytes if self.quota_bytes is None else min(self.max_bytes, self.quota_bytes)

    @classmethod
    def for_archive(cls, archive_bytes: int, config: Config) -> ExtractLimits:
        by_ratio = max(MIN_BUDGET, int(config.max_extract_ratio * archive_bytes))
        return cls(min(config.max_extract_bytes, by_ratio), config.max_archive_members)


def member_parts(name: str) -> list[str]:
    """The path components of an archive entry's name ([] for the archive's own root),
    or UnsafeArchive for an absolute name, `..`, a NUL byte, or a name too long or deep.
    Both '/' and '\\' separate components."""
    if "\0" in name:
        raise UnsafeArchive(f"archive entry {quote(name)} has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchive(f"archive entry {quote(name)} has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"archive entry {quote(name)} points outside the archive ('..')")
    try:
        sizes = [len(os.fsencode(p)) for p in parts]
    except UnicodeError:
        raise UnsafeArchive(f"archive entry {quote(name)} has an unusable name") from None
    if any(s > MAX_NAME_BYTES for s in sizes) or sum(sizes) + len(sizes) > MAX_PATH_BYTES:
        raise UnsafeArchive(
            f"archive entry {quote(name)} has a name longer than {MAX_NAME_BYTES} bytes or "
            f"a path longer than {MAX_PATH_BYTES} bytes"
        )
    if len(parts) > MAX_DEPTH:
        raise UnsafeArchive(f"archive entry {quote(name)} is nested deeper than {MAX_DEPTH}")
    return parts


def check_quota(expanded: int, limits: ExtractLimits) -> None:
    """ResourceExhausted when `expanded` bytes pass what is left of the upload quota."""
    if limits.quota_bytes is not None and expanded > limits.quota_bytes:
        raise ResourceExhausted(
            f"the extracted archive takes more than the {max(0, limits.quota_bytes)} bytes"
            " left of this tenant's upload quota (upload_quota_bytes); delete unused"
            " uploads (graft datasets delete) or ask for a larger quota"
        )


class ExtractTree:
    """Writes entries under one folder through folder file descriptors (never a path
    string that could pass through a link), and keeps the expansion count."""

    def __init__(self, dest: Path, limits: ExtractLimits) -> None:
        self.limits = limits
        self.used = 0
        self.members = 0
        self._root = os.open(dest, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self._root)

    def count_entry(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeArchive(
                f"archive has more than {self.limits.max_members} entries (max_archive_members)"
            )
        self.charge(ENTRY_COST)

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.limits.max_bytes:
            raise UnsafeArchive(
                f"archive expands to more than {self.limits.max_bytes} bytes (at most "
                "max_extract_ratio times its size, and at most max_extract_bytes)"
            )
        check_quota(self.used, self.limits)

    def mkdir(self, parts: list[str], name: str) -> None:
        with _entry_errors(name):
            os.close(self._folder(parts))

    def write(self, parts: list[str], src: IO[bytes], name: str) -> None:
        with _entry_errors(name):
            folder = self._folder(parts[:-1])
            try:
                fd = os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=folder)
            finally:
                os.close(folder)
            with os.fdopen(fd, "wb") as out:
                while block := _read(src, CHUNK, name):
                    self.charge(len(block))
                    out.write(block)

    def _folder(self, parts: list[str]) -> int:
        """A descriptor of folder `parts`, each component created if missing and opened
        without following a link (ELOOP/ENOTDIR when one is a link or a file)."""
        fd = os.dup(self._root)
        try:
            for part in parts:
                # An earlier entry may have made it; opening it checks it is a folder.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd


def _read(src: IO[bytes], n: int, name: str) -> bytes:
    try:
        return src.read(n)
    except (*STREAM_ERRORS, NotImplementedError, RuntimeError, ValueError) as e:
        raise UnsafeArchive(f"archive entry {quote(name)} is corrupt: {e}") from None


@contextmanager
def _entry_errors(name: str) -> Iterator[None]:
    """File-system errors while creating entry `name`, as the archive's fault where it is."""
    try:
        yield
    except FileExistsError:
        raise UnsafeArchive(f"archive entry {quote(name)} appears twice") from None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EISDIR):
            raise UnsafeArchive(
                f"archive entry {quote(name)} conflicts with another entry of the same name"
            ) from None
        if e.errno == errno.ENAMETOOLONG:
            raise UnsafeArchive(f"archive entry {quote(name)} has a path too long") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted("not enough disk space to extract the archive") from None
        raise
