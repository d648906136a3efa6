"""Finding a dataset's labelled images, checking each one decodes, and splitting them.

Layouts (see docs/DATA.md):

- class per folder: `root/<class>/<images, possibly nested>`;
- split folders: `root/train/<class>/...` plus `val`, `valid`, `validation` or `test`
  (all four mean the validation split);
- a CSV manifest with rows `path,label[,split]`, paths relative to the manifest's folder
  (a folder whose top level holds one .csv starting with that header is read through it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from graft.data.files import (
    FileProblem,
    check_regular,
    lexical_real_path,
    open_regular,
    read_regular,
    real_path,
)
from graft.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_IMAGE_FILE_BYTES,
    ImageDecodeError,
    decode,
)
from graft.errors import FailedPrecondition, InvalidArgument, quote

TRAIN_NAMES = frozenset({"train"})
VAL_NAMES = frozenset({"val", "valid", "validation", "test"})
IGNORED_DIRS = frozenset({"__MACOSX"})
MANIFEST_HEADER = ("path", "label")

# Decoding releases the GIL inside Pillow, so a few threads keep the cores busy while
# others wait on file reads; used when the files are big enough to be worth it.
_DECODE_THREADS = min(8, (os.cpu_count() or 1) + 1)
_THREADS_MIN_BYTES = 32 * 1024
_MAX_SKIPPED_IN_MESSAGE = 3
# Config.max_classes' default: ImageNet's 1,000. At 10,000 one evaluation's confusion
# matrix alone is 10^8 counts.
DEFAULT_MAX_CLASSES = 1000
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One usable image: its absolute path, class index, split ("train", "val" or "") and
    the sha256 (hex) of the file's bytes ("" when not scanned, e.g. built by hand)."""

    path: Path
    label: int
    split: str = ""
    digest: str = ""


@dataclass
class ScannedDataset:
    """The usable images of a dataset plus what was learned while decoding every one."""

    root: Path  # the folder, or the CSV manifest, that was scanned
    classes: list[str]  # sorted class names; Sample.label indexes this list
    samples: list[Sample]
    skipped: list[tuple[str, str]]  # (path relative to root, reason)
    fingerprint: str  # see fingerprint() below
    median_size: tuple[int, int]  # (width, height)
    mode_counts: dict[str, int]  # original PIL modes seen, e.g. {"RGB": 90, "L": 10}
    layout: str = "folders"  # "folders" | "split-folders" | "manifest"
    sampled: bool = False  # True when max_per_class limited the scan
    total_candidates: dict[str, int] = field(default_factory=dict)  # files per class seen
    # (width, height) extremes, each taken over all usable images on its own: the widest
    # image need not be the tallest.
    min_size: tuple[int, int] = (0, 0)
    max_size: tuple[int, int] = (0, 0)

    def counts(self) -> dict[str, int]:
        """Usable images per class name (all splits together)."""
        c = Counter(s.label for s in self.samples)
        return {name: c[i] for i, name in enumerate(self.classes)}

    @property
    def has_explicit_split(self) -> bool:
        """Whether the dataset names its own validation images."""
        return any(s.split == "val" for s in self.samples)


@dataclass(frozen=True)
class _Candidate:
    path: Path  # absolute
    rel: str  # posix path relative to the scan root, for fingerprint and messages
    label: str
    split: str


# --------------------------------------------------------------------------- listing


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(Image.registered_extensions())


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
) -> list[_Candidate]:
    out = []
    for class_dir in _class_dirs(top, root, skipped):
        for f in _walk_files(class_dir, root, skipped):
            out.append(_Candidate(f, f.relative_to(root).as_posix(), class_dir.name, split))
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


def _manifest_candidates(manifest: Path, skipped: list[tuple[str, str]]) -> list[_Candidate]:
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
        out.append(_Candidate(path, rel, label, split))
    return out


def _list_candidates(root: Path, skipped: list[tuple[str, str]]) -> tuple[list[_Candidate], str]:
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


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _Checked:
    candidate: _Candidate
    error: str = ""
    digest: str = ""
    size: tuple[int, int] = (0, 0)
    mode: str = ""


def _check(c: _Candidate, root: Path, image_exts: frozenset[str], max_pixels: int) -> _Checked:
    """Read and fully decode one file once: bytes hash, size and original mode. Only a
    regular file inside `root` is opened (see graft.data.files), and only decoded when its
    header declares at most `max_pixels`."""
    suffix = c.path.suffix.lower()
    if suffix and suffix not in image_exts:
        return _Checked(c, error=f"not an image file ({quote(suffix, 16)})")
    try:
        data = read_regular(c.path, root, MAX_IMAGE_FILE_BYTES)
    except FileProblem as e:
        return _Checked(c, error=e.reason)
    try:
        image, mode = decode(data, max_pixels)
    except ImageDecodeError as e:
        return _Checked(c, error=e.message)
    return _Checked(c, digest=hashlib.sha256(data).hexdigest(), size=image.size, mode=mode)


def _check_all(
    candidates: Sequence[_Candidate],
    root: Path,
    image_exts: frozenset[str],
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[_Checked]:
    """Check every candidate, in order. Threads pay off only for larger files: Pillow
    releases the GIL while decoding, but for tiny images the Python overhead dominates
    (measured: 1000 28x28 PNGs 0.08 s on one thread, slower on two; 640x427 JPEGs 1.7x
    faster on two)."""
    if len(candidates) < 16 or _mean_size(candidates[:32]) < _THREADS_MIN_BYTES:
        return [_check(c, root, image_exts, max_pixels) for c in candidates]
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        return list(pool.map(lambda c: _check(c, root, image_exts, max_pixels), candidates))


def _mean_size(candidates: Sequence[_Candidate]) -> float:
    sizes = []
    for c in candidates:
        with contextlib.suppress(OSError):
            sizes.append(c.path.stat().st_size)
    return sum(sizes) / max(1, len(sizes))


def _check_sampled(
    candidates: list[_Candidate],
    root: Path,
    image_exts: frozenset[str],
    max_per_class: int,
    seed: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[_Checked]:
    """Decode a seeded random subset: up to `max_per_class` good images per class,
    drawing further candidates only to replace files that failed."""
    by_class: dict[str, list[_Candidate]] = defaultdict(list)
    for c in candidates:
        by_class[c.label].append(c)
    rng = random.Random(seed)
    queues = {}
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda c: c.rel)
        rng.shuffle(items)
        queues[label] = items
    good: dict[str, int] = dict.fromkeys(queues, 0)
    out: list[_Checked] = []
    while True:
        batch = []
        for label, queue in queues.items():
            need = max(0, max_per_class - good[label])
            batch += queue[:need]
            del queue[:need]
        if not batch:
            return out
        for r in _check_all(batch, root, image_exts, max_pixels):
            out.append(r)
            if not r.error:
                good[r.candidate.label] += 1


def fingerprint(entries: Sequence[tuple[str, str, str]]) -> str:
    """sha256 (hex) over sorted (relative path, label name, sha256 of the file's bytes).

    It does not depend on where the dataset lives (a copy or another extraction of the same
    archive has the same fingerprint) and changes when any image, name or label changes."""
    h = hashlib.sha256()
    for rel, label, digest in sorted(entries):
        h.update(f"{rel}\0{label}\0{digest}\n".encode())
    return h.hexdigest()


def scan_dataset(
    path: Path,
    *,
    max_per_class: int | None = None,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_classes: int = DEFAULT_MAX_CLASSES,
) -> ScannedDataset:
    """List and decode every image of the dataset at `path` (a folder or a CSV manifest).

    Undecodable and non-image files are recorded in `skipped` and never raise; so are
    special files (FIFOs, devices: never opened), symbolic links leaving the dataset or
    looping, and images declaring more than `max_pixels`; dotfiles are ignored. With
    `max_per_class`, a seeded random sample of that many usable images per class is taken
    (for Advise). Raises FailedPrecondition when no usable image or fewer than two classes
    remain, or when the listing holds more than `max_classes` classes (0: no limit).
    """
    path = Path(path)
    try:
        root = real_path(path)
    except FileProblem as e:
        raise FailedPrecondition(f"dataset path {quote(path.name)}: {e.reason}") from None
    skipped: list[tuple[str, str]] = []
    candidates, layout = _list_candidates(root, skipped)
    base = root.parent if root.is_file() else root
    image_exts = _image_extensions()
    total: Counter[str] = Counter(c.label for c in candidates)
    if max_classes and len(total) > max_classes:
        # Checked on the listing, before any image is decoded: a head, a confusion matrix
        # (the square of the class count, in every evaluation) and per-class figures of
        # that size are beyond what this server trains and reports.
        raise FailedPrecondition(
            f"dataset {quote(root.name)} has {len(total)} classes, more than the "
            f"{max_classes} this server trains (max_classes)"
        )
    if max_per_class is not None and max_per_class > 0:
        checked = _check_sampled(candidates, base, image_exts, max_per_class, seed, max_pixels)
        checked.sort(key=lambda r: r.candidate.rel)
    else:
        checked = _check_all(candidates, base, image_exts, max_pixels)

    good = [r for r in checked if not r.error]
    skipped += [(r.candidate.rel, r.error) for r in checked if r.error]
    skipped.sort()
    classes = sorted({r.candidate.label for r in good})
    _require_usable(root, good, classes, skipped, len(candidates))

    index = {name: i for i, name in enumerate(classes)}
    samples = [
        Sample(r.candidate.path, index[r.candidate.label], r.candidate.split, r.digest)
        for r in good
    ]
    widths = [r.size[0] for r in good]
    heights = [r.size[1] for r in good]
    return ScannedDataset(
        root=root,
        classes=classes,
        samples=samples,
        skipped=skipped,
        fingerprint=fingerprint([(r.candidate.rel, r.candidate.label, r.digest) for r in good]),
        median_size=(int(statistics.median(widths)), int(statistics.median(heights))),
        mode_counts=dict(sorted(Counter(r.mode for r in good).items())),
        layout=layout,
        sampled=max_per_class is not None and max_per_class > 0,
        total_candidates=dict(sorted(total.items())),
        min_size=(min(widths), min(heights)),
        max_size=(max(widths), max(heights)),
    )


def describe_skipped(skipped: Sequence[tuple[str, str]], limit: int = 3) -> str:
    """A short human summary of skipped files, e.g. for error messages."""
    if not skipped:
        return "no files skipped"
    shown = "; ".join(f"{p}: {r}" for p, r in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} skipped ({shown}{more})"


def _require_usable(
    root: Path,
    good: Sequence[_Checked],
    classes: list[str],
    skipped: list[tuple[str, str]],
    n_candidates: int,
) -> None:
    where = root.name or str(root)
    if not good:
        raise FailedPrecondition(
            f"no usable images in dataset {where!r}: {n_candidates} candidate files, "
            f"{describe_skipped(skipped, _MAX_SKIPPED_IN_MESSAGE)}. Expected class folders "
            "(root/<class>/<image>), train/val split folders, or a CSV manifest "
            "path,label[,split]"
        )
    if len(classes) < 2:
        counts = Counter(r.candidate.label for r in good)
        found = ", ".join(f"{k}: {v} images" for k, v in sorted(counts.items()))
        raise FailedPrecondition(
            f"dataset {where!r} needs at least 2 classes, found {len(classes)} ({found}); "
            f"{describe_skipped(skipped, _MAX_SKIPPED_IN_MESSAGE)}"
        )


# --------------------------------------------------------------------------- splitting


def split_dataset(
    ds: ScannedDataset, validation_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples.

    An explicit split (split folders or a manifest's split column) is honoured: "val"
    samples validate, all others train. Otherwise each class is shuffled with `seed` and
    round(n * validation_fraction) of its n images validate, at least one when n >= 2 and
    never all of them (a class with one image stays in train). Fraction 0 means no
    validation set. Both lists keep the dataset's order.
    """
    if ds.has_explicit_split:
        train = [s for s in ds.samples if s.split != "val"]
        val = [s for s in ds.samples if s.split == "val"]
        if not train:
            raise FailedPrecondition("the dataset's explicit split has no training images")
        return train, val
    if not 0.0 <= validation_fraction < 1.0:
        raise InvalidArgument.of(
            "plan.validation_fraction", f"must be in [0, 1), got {validation_fraction}"
        )
    if validation_fraction == 0.0:
        return list(ds.samples), []
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(ds.samples):
        by_class[s.label].append(i)
    val_idx: set[int] = set()
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: ds.samples[i].path.as_posix())
        n = len(idx)
        if n < 2:
            continue
        k = min(n - 1, max(1, round(n * validation_fraction)))
        rng.shuffle(idx)
        val_idx.update(idx[:k])
    train = [s for i, s in enumerate(ds.samples) if i not in val_idx]
    val = [s for i, s in enumerate(ds.samples) if i in val_idx]
    return train, val
