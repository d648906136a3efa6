"""Extracting an archive that nobody vouches for (an upload, or an archive in a data root).

Nothing here uses `extractall` or trusts tarfile's filters: the CVE-2025-4517 family
(chains of symlinks and folders that `tarfile`'s `data` filter and a non-strict
`Path.resolve()` both miss) is closed by never creating a link at all:

- links (symbolic or hard), devices, FIFOs and sockets are refused, in tar archives and
  in zips (a zip entry's Unix mode lives in the top 16 bits of `external_attr`);
- names are checked (no absolute path, no `..`, no NUL, bounded length and depth) and
  each entry is created through folder file descriptors: every folder component opened
  with O_NOFOLLOW | O_DIRECTORY, every file created with O_CREAT | O_EXCL | O_NOFOLLOW,
  so nothing is written through a link or over an earlier entry (the writer and the
  limits are graft.data.archive_writer's; this module reads the two formats);
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
import gzip
import io
import lzma
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from graft.data.archive_writer import (
    CHUNK,
    ENTRY_COST,
    STREAM_ERRORS,
    ExtractLimits,
    ExtractTree,
    UnsafeArchive,
    check_quota,
    member_parts,
)
from graft.data.files import kind_of
from graft.errors import quote

_HEADER_SLACK = 1 << 20  # tar: decompressed bytes read for headers (pax, long names) per entry
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
        tree = ExtractTree(dest, limits)
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


def _extract_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: ExtractTree) -> None:
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
    except (*STREAM_ERRORS, NotImplementedError, RuntimeError, ValueError) as e:
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
        while self.read(CHUNK):
            pass
        if self.count % tarfile.BLOCKSIZE:
            raise UnsafeArchive("the tar archive is truncated (it ends inside a block)")

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self.src.read(size if size >= 0 else CHUNK)
        except STREAM_ERRORS as e:
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
        tree = ExtractTree(dest, limits)
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


def _extract_tar_entry(tf: tarfile.TarFile, member: tarfile.TarInfo, tree: ExtractTree) -> None:
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
