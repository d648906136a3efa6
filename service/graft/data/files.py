"""Reading files of a dataset without trusting the folder: nothing but a regular file is
ever opened (a FIFO would block the reader forever, a device has side effects on open),
and no symbolic link leads outside the folder being read.

Each file is lstat'ed first (special files are refused without being opened), resolved
strictly (a link loop is an error, not a crash), checked to lie inside its root, then
opened with O_NOFOLLOW | O_NONBLOCK and fstat'ed: what was opened must be the regular
file that was checked."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileProblem(Exception):
    """A path that cannot be read safely; the message is the reason, for a skip list or an
    error. `missing` tells "does not exist" from the rest (loops, special files, ...)."""

    def __init__(self, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def kind_of(mode: int) -> str:
    """A person's name for the file type in an st_mode."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _problem(e: OSError) -> FileProblem:
    if e.errno == errno.ELOOP:
        return FileProblem("symbolic link loop")
    if e.errno == errno.ENAMETOOLONG:
        return FileProblem("path or name too long")
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileProblem("does not exist", missing=True)
    if e.errno in (errno.EACCES, errno.EPERM):
        return FileProblem("permission denied")
    return FileProblem(f"cannot be read ({e.strerror or type(e).__name__})")


def real_path(path: Path | str) -> Path:
    """`path` with every symbolic link and `..` resolved, strictly: FileProblem when it
    does not exist, is a link loop, has a NUL byte or a name too long (pathlib's resolve
    raises RuntimeError on a loop in Python 3.11)."""
    text = os.fspath(path)
    if "\0" in text:
        raise FileProblem("contains a NUL byte")
    try:
        return Path(os.path.realpath(text, strict=True))
    except OSError as e:
        raise _problem(e) from None


def lexical_real_path(path: Path | str) -> Path:
    """`path` resolved as far as it exists (never raises for a missing tail, a loop or a
    long name: those are found later by `real_path`); NUL bytes are the caller's check."""
    return Path(os.path.realpath(os.fspath(path)))


def inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def check_regular(path: Path, root: Path) -> tuple[Path, os.stat_result]:
    """The resolved path and lstat of `path`, a file that must be a regular file inside
    `root` (itself resolved). Nothing is opened. FileProblem says why not."""
    if "\0" in os.fspath(path):
        raise FileProblem("contains a NUL byte")
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _problem(e) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise FileProblem(f"{kind_of(st.st_mode)}, not opened")
    target = real_path(path)  # also catches symlinked folders on the way
    if not inside(target, root):
        raise FileProblem("symbolic link pointing outside the dataset")
    if target != path:
        try:
            st = os.lstat(target)
        except OSError as e:
            raise _problem(e) from None
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(f"symbolic link to a {kind_of(st.st_mode)}, not opened")
    return target, st


def open_regular(path: Path, root: Path, max_bytes: int) -> BinaryIO:
    """`path` opened for reading, checked as `check_regular` says and at most `max_bytes`
    long. The open never follows a link and never blocks; the opened file is fstat'ed and
    must be the very file that was checked (not swapped in between)."""
    target, st = check_regular(path, root)
    if st.st_size > max_bytes:
        raise FileProblem(f"file of {st.st_size} bytes, more than the {max_bytes} allowed")
    try:
        fd = os.open(target, _OPEN_FLAGS)
    except OSError as e:
        raise _problem(e) from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
        st.st_dev,
        st.st_ino,
    ):
        os.close(fd)
        raise FileProblem("file changed while it was being opened")
    return os.fdopen(fd, "rb")


def read_regular(path: Path, root: Path, max_bytes: int) -> bytes:
    """The bytes of `path` (see `open_regular`); a file that grew past `max_bytes` while
    being read is refused too."""
    with open_regular(path, root, max_bytes) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as e:
            raise _problem(e) from None
    if len(data) > max_bytes:
        raise FileProblem(f"file of more than the {max_bytes} bytes allowed")
    return data
