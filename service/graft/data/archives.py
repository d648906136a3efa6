"""Extracting an archive that nobody vouches for (an upload, or an archive in a data root).

Nothing here uses `extractall` or trusts tarfile's filters: the CVE-2025-4517 family
(chains of symlinks and folders that `tarfile`'s `data` filter and a non-strict
`Path.resolve()` both miss) is closed by never creating a link at all:

- links (symbolic or hard), devices, FIFOs and sockets are refused, in tar archives and
  in zips (a zip entry's Unix mode lives in the top 16 bits of `external_attr`);
- names are checked (no absolute path, no `..`, no NUL, bounded length and depth) and
  each entry is created through folder file descriptors: every folder component opened
  with O_NOFOLLOW | O_DIRECTORY, every file created with O_CREAT | O_EXCL | O_NOFOLLOW,
  so nothing is written through a link or over an earlier entry;
- expansion is counted while writing (declared sizes are only used to refuse early):
  at most `max_extract_ratio` times the archive's size, at most `max_extract_bytes`, each
  entry counting `ENTRY_COST` bytes besides its data, at most `max_archive_members`;
  a tar stream's decompressed bytes are bounded too, so header tricks (a pax header of
  gigabytes) cannot make tarfile buffer them;
- encrypted zip entries, unknown compression methods, corrupt or truncated streams are
  refused as `UnsafeArchive`, which callers turn into INVALID_ARGUMENT.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from graft.config import Config
from graft.data.files import kind_of
from graft.errors import ResourceExhausted, quote

ENTRY_COST = 512  # bytes each entry counts against the budget besides its data (an inode)
MIN_BUDGET = 1 << 20  # a tiny archive may always expand to this much
MAX_NAME_BYTES = 255  # one path component (the file system's NAME_MAX)
MAX_PATH_BYTES = 1024  # an entry's whole relative path
MAX_DEPTH = 64  # folder levels of an entry
_HEADER_SLACK = 1 << 20  # tar: decompressed bytes read for headers (pax, long names) per entry
_CHUNK = 1 << 16
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
# zipfile's reader of the end-of-central-directory record (zip64 too); not in its stubs.
_END_RECORD: Callable[[IO[bytes]], list[Any] | None] = getattr(zipfile, "_EndRecData")  # noqa: B009
_ECD_ENTRIES_TOTAL, _ECD_SIZE = 4, 5
_MAX_DIR_BYTES_PER_ENTRY = 512  # a generous mean size of one central-directory entry
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What a corrupt or truncated compressed stream raises from the decompressors.
_STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError, zipfile.BadZipFile)


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


class _Tree:
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
                while block := _read(src, _CHUNK, name):
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
    except (*_STREAM_ERRORS, NotImplementedError, RuntimeError, ValueError) as e:
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


def _unreadable(archive: Path, kind: str, e: BaseException) -> UnsafeArchive:
    return UnsafeArchive(f"{quote(archive.name)} is not a readable {kind} archive: {e}")


def _refuse_type(name: str, what: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"archive entry {quote(name)} is a {what}: links and special files are not accepted"
    )


# --------------------------------------------------------------------------- zip


def _check_zip_directory(archive: Path, limits: ExtractLimits) -> None:
    """Refuse a zip whose central directory is too big before zipfile parses all of it
    into memory (one ZipInfo per entry): the end record says how many entries and bytes."""
    with open(archive, "rb") as fh:
        try:
            end = _END_RECORD(fh)
        except (OSError, EOFError, ValueError) as e:
            raise UnsafeArchive(
                f"{quote(archive.name)} is not a readable zip archive: {e}"
            ) from None
    if not end:
        raise UnsafeArchive(f"{quote(archive.name)} is not a zip archive (no end record)")
    entries, size = int(end[_ECD_ENTRIES_TOTAL]), int(end[_ECD_SIZE])
    if entries > limits.max_members or size > limits.max_members * _MAX_DIR_BYTES_PER_ENTRY:
        raise UnsafeArchive(
            f"archive declares {entries} entries ({size} bytes of directory), more than "
            f"{limits.max_members} (max_archive_members)"
        )


def extract_zip(archive: Path, dest: Path, limits: ExtractLimits) -> int:
    """Extract the zip `archive` into the empty folder `dest` (see the module's rules);
    returns the bytes it expanded to (as counted against the limits)."""
    _check_zip_directory(archive, limits)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise _unreadable(archive, "zip", e) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UnsafeArchive(
                f"archive has {len(infos)} entries, more than {limits.max_members} "
                "(max_archive_members)"
            )
        declared = sum(i.file_size for i in infos) + ENTRY_COST * len(infos)
        if declared > limits.max_bytes:  # refused early; the real count is while writing
            raise UnsafeArchive(
                f"archive declares {declared} bytes, more than {limits.max_bytes} (at most "
                "max_extract_ratio times its size, and at most max_extract_bytes)"
            )
        check_quota(declared, limits)
        for info in infos:
            _check_zip_entry(info)
        tree = _Tree(dest, limits)
        try:
            for info in infos:
                _extract_zip_entry(zf, info, tree)
        finally:
            tree.close()
        return tree.used


def _check_zip_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    member_parts(name)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise _refuse_type(name, kind_of(kind))
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"archive entry {quote(name)} is encrypted")
    if info.compress_type not in _ZIP_METHODS:
        raise UnsafeArchive(
            f"archive entry {quote(name)} uses compression method {info.compress_type}; "
            f"supported: {', '.join(_ZIP_METHODS.values())}"
        )


def _extract_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: _Tree) -> None:
    name = info.filename
    parts = member_parts(name)
    tree.count_entry(name)
    if not parts:
        return
    if info.is_dir() or stat.S_IFMT(info.external_attr >> 16) == stat.S_IFDIR:
        tree.mkdir(parts, name)
        return
    try:
        src = zf.open(info)
    except (*_STREAM_ERRORS, NotImplementedError, RuntimeError, ValueError) as e:
        raise UnsafeArchive(f"archive entry {quote(name)} cannot be read: {e}") from None
    with src:
        tree.write(parts, src, name)


# --------------------------------------------------------------------------- tar


class _Bounded(io.RawIOBase):
    """A decompressed tar stream that refuses to yield more than `total` bytes in all, or
    more than the current window (one entry's data plus `_HEADER_SLACK` for its headers);
    a corrupt or truncated compressed stream becomes UnsafeArchive."""

    def __init__(self, src: io.BufferedIOBase, total: int) -> None:
        super().__init__()
        self.src = src
        self.total = total
        self.count = 0
        self.window_end = _HEADER_SLACK

    def window(self, n: int) -> None:
        self.window_end = self.count + n + _HEADER_SLACK

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read what is left after the last entry (end blocks, record padding) and refuse a
        stream that was cut: tarfile takes a truncated header after the first entry for
        the end of the archive, but a whole tar stream is a multiple of 512 bytes."""
        self.window(0)
        while self.read(_CHUNK):
            pass
        if self.count % tarfile.BLOCKSIZE:
            raise UnsafeArchive("the tar archive is truncated (it ends inside a block)")

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self.src.read(size if size >= 0 else _CHUNK)
        except _STREAM_ERRORS as e:
            raise UnsafeArchive(f"corrupt or truncated compressed data: {e}") from None
        self.count += len(data)
        if self.count > self.total:
            raise UnsafeArchive(f"archive expands to more than {self.total} bytes")
        if self.count > self.window_end:
            raise UnsafeArchive(
                f"archive has more than {_HEADER_SLACK} bytes of header (pax data, a long "
                "name) or trailing data outside its entries"
            )
        return data


def _decompressed(raw: io.BufferedReader) -> io.BufferedIOBase:
    """`raw`, decompressed by its magic bytes (gzip, bzip2, xz), or `raw` itself."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def extract_tar(archive: Path, dest: Path, limits: ExtractLimits) -> int:
    """Extract the tar `archive` (plain, gzip, bzip2 or xz) into the empty folder `dest`,
    one entry at a time from the stream (see the module's rules); returns the bytes it
    expanded to (as counted against the limits)."""
    with open(archive, "rb") as raw:
        stream = _Bounded(_decompressed(raw), 2 * limits.max_bytes + _HEADER_SLACK)
        tree = _Tree(dest, limits)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for member in tf:
                    stream.window(member.size)
                    _extract_tar_entry(tf, member, tree)
                    stream.window(0)
            stream.drain()
        except tarfile.TarError as e:
            raise _unreadable(archive, "tar", e) from None
        finally:
            tree.close()
    return tree.used


def _extract_tar_entry(tf: tarfile.TarFile, member: tarfile.TarInfo, tree: _Tree) -> None:
    name = member.name
    parts = member_parts(name)
    if member.issym() or member.islnk():
        raise _refuse_type(name, "symbolic link" if member.issym() else "hard link")
    if member.ischr() or member.isblk() or member.isfifo():
        what = "FIFO (named pipe)" if member.isfifo() else "device"
        raise _refuse_type(name, what)
    if not (member.isdir() or member.isreg()):
        raise _refuse_type(name, f"entry of type {member.type!r}")
    tree.count_entry(name)
    if member.size > tree.limits.budget - tree.used:
        tree.charge(member.size)  # refused before reading a byte of it
    if not parts:
        return
    if member.isdir():
        tree.mkdir(parts, name)
        return
    src = tf.extractfile(member)
    if src is None:
        raise _refuse_type(name, f"entry of type {member.type!r}")
    with src:
        tree.write(parts, src, name)
