"""Where a dataset's labelled images are: the candidate files of each layout, before any
is decoded (graft.data.scan checks them).

Layouts (see docs/DATA.md):

- class per folder: `root/<class>/<images, possibly nested>`;
- split folders: `root/train/<class>/...` plus `val`, `valid`, `validation` or `test`
  (all four mean the validation split);
- a CSV manifest with rows `path,label[,split]`, paths relative to the manifest's folder
  (a folder whose top level holds one .csv starting with that header is read through it).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from graft.data.files import (
    FileProblem,
    check_regular,
    lexical_real_path,
    open_regular,
    read_regular,
    real_path,
)
from graft.errors import FailedPrecondition, InvalidArgument, quote

TRAIN_NAMES = frozenset({"train"})
VAL_NAMES = frozenset({"val", "valid", "validation", "test"})
IGNORED_DIRS = frozenset({"__MACOSX"})
MANIFEST_HEADER = ("path", "label")
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Candidate:
    """A file that should be an image of class `label`, not yet read."""

    path: Path  # absolute
    rel: str  # posix path relative to the scan root, for fingerprint and messages
    label: str
    split: str


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _walk_files(top: Path, root: Path, skipped: list[tuple[str, str]]) -> Iterator[Path]:
    """Non-hidden files under `top`, sorted; symlinks leaving `root` are skipped."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if _hidden(d) or d in IGNORED_DIRS:
                continue
            if (here / d).is_symlink():
                rel = (here / d).relative_to(root).as_posix()
                skipped.append((rel, "symbolic link to a folder, not followed"))
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in sorted(filenames):
            if not _hidden(f):
                yield here / f


def _class_dirs(top: Path, root: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    out = []
    for p in sorted(top.iterdir()):
        if _hidden(p.name) or p.name in IGNORED_DIRS:
            continue
        rel = p.relative_to(root).as_posix()
        problem = _link_problem(p, root) if p.is_symlink() else ""
        if problem:
            skipped.append((rel, problem))
        elif p.is_dir():
            out.append(p)
        else:
            skipped.append((rel, "file outside any class folder"))
    return out


def _link_problem(link: Path, root: Path) -> str:
    """Why the symbolic link `link` must not be followed ("" when it may: it resolves to
    something inside `root`)."""
    try:
        target = real_path(link)
    except FileProblem as e:
        return f"symbolic link: {e.reason}"
    return "" if _inside(target, root) else "symbolic link pointing outside the dataset"


def _folder_candidates(
    top: Path, root: Path, split: str, skipped: list[tuple[str, str]]
) -> list[Candidate]:
    out = []
    for class_dir in _class_dirs(top, root, skipped):
        for f in _walk_files(class_dir, root, skipped):
            out.append(Candidate(f, f.relative_to(root).as_posix(), class_dir.name, split))
    return out


def _split_of(name: str) -> str | None:
    low = name.lower()
    if low in TRAIN_NAMES:
        return "train"
    if low in VAL_NAMES:
        return "val"
    return None


def _is_split_layout(root: Path) -> bool:
    names = [
        p.name
        for p in root.iterdir()
        if p.is_dir() and not _hidden(p.name) and p.name not in IGNORED_DIRS
    ]
    return any(n.lower() == "train" for n in names) and all(_split_of(n) for n in names)


def _manifest_in(root: Path) -> Path | None:
    """The single top-level CSV of `root` when it starts with the manifest header."""
    csvs = [p for p in root.iterdir() if p.suffix.lower() == ".csv" and not _hidden(p.name)]
    if len(csvs) != 1 or not csvs[0].is_file():
        return None
    try:
        raw = open_regular(csvs[0], root, _MAX_MANIFEST_BYTES)
    except FileProblem:
        return None  # a FIFO, a link out of the folder...: not a manifest
    with io.TextIOWrapper(raw, newline="", encoding="utf-8-sig", errors="replace") as fh:
        first = next(csv.reader(fh), [])
    return csvs[0] if _is_header(first) else None


def _is_header(row: Sequence[str]) -> bool:
    cells = [c.strip().lower() for c in row]
    return tuple(cells[:2]) == MANIFEST_HEADER and (len(cells) == 2 or cells[2:] == ["split"])


def _manifest_candidates(manifest: Path, skipped: list[tuple[str, str]]) -> list[Candidate]:
    base = manifest.parent.resolve()
    out = []
    try:
        text = read_regular(manifest, base, _MAX_MANIFEST_BYTES).decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except FileProblem as e:
        raise FailedPrecondition(f"manifest {quote(manifest.name)}: {e.reason}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise FailedPrecondition(
            f"manifest {quote(manifest.name)} is not a UTF-8 CSV file: {e}"
        ) from None
    for lineno, row in enumerate(rows, start=1):
        where = f"{manifest.name}:{lineno}"
        if lineno == 1 and _is_header(row):
            continue
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) not in (2, 3):
            skipped.append((where, f"expected path,label[,split], got {len(row)} columns"))
            continue
        raw, label = row[0].strip().replace("\\", "/"), row[1].strip()
        split_cell = row[2].strip() if len(row) == 3 else ""
        split = "" if not split_cell else _split_of(split_cell)
        if not raw or not label:
            skipped.append((where, "empty path or label"))
            continue
        if split is None:
            skipped.append((where, f"unknown split {quote(split_cell)} (use train, val or test)"))
            continue
        if "\0" in raw:
            skipped.append((where, "path has a NUL byte"))
            continue
        if raw.startswith("/") or ":" in raw.split("/")[0]:
            skipped.append(
                (where, f"absolute path {quote(raw)} not allowed; use one relative to it")
            )
            continue
        path = lexical_real_path(base / raw)
        if not _inside(path, base):
            skipped.append((where, f"path {quote(raw)} escapes the manifest's folder"))
            continue
        if _hidden(path.name):
            continue
        rel = path.relative_to(base).as_posix()
        try:
            check_regular(path, base)
        except FileProblem as e:
            skipped.append((rel, "file not found" if e.missing else e.reason))
            continue
        out.append(Candidate(path, rel, label, split))
    return out


def list_candidates(root: Path, skipped: list[tuple[str, str]]) -> tuple[list[Candidate], str]:
    """The candidate files of the dataset at the real path `root` (a folder or a CSV
    manifest) and its layout ("folders", "split-folders" or "manifest"); what cannot be a
    candidate is appended to `skipped`."""
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise InvalidArgument.of(
                "dataset", f"{root.name} is neither a folder nor a .csv manifest"
            )
        return _manifest_candidates(root, skipped), "manifest"
    if not root.is_dir():
        raise FailedPrecondition(f"dataset path {root.name} is not a folder or a file")
    manifest = _manifest_in(root)
    if manifest is not None:
        return _manifest_candidates(manifest, skipped), "manifest"
    if _is_split_layout(root):
        out = []
        for d in sorted(root.iterdir()):
            if _hidden(d.name) or d.name in IGNORED_DIRS:
                continue
            split = _split_of(d.name) if d.is_dir() else None
            if split is None:
                skipped.append((d.name, "file outside the split folders"))
            else:
                out += _folder_candidates(d, root, split, skipped)
        return out, "split-folders"
    return _folder_candidates(root, root, "", skipped), "folders"
