"""graft.advisor.report: Advise's dataset report over real scanned folders of tiny PNGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.advisor.report import DatasetReportData, dataset_report
from graft.api.convert import report_to_pb
from graft.data import Sample, ScannedDataset, scan_dataset
from graft.errors import InvalidArgument


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def noise(w: int, h: int, seed: int, mode: str = "RGB") -> bytes:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return png(Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode))


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def split_folders(root: Path) -> Path:
    """train/ and val/ folders; the dataset's own split is the one the plan uses.

    cat (7): a.png and two byte-identical copies; a grayscale image; conflict.png, also
             in dog; c.png and a copy, both in validation (not crossing).
    dog (4): conflict.png; a palette image; cross.png, also in val/dog (crosses the split).
    Plus one truncated PNG (skipped)."""
    a = noise(12, 10, seed=1)
    conflict = noise(12, 10, seed=2)
    cross = noise(16, 16, seed=3, mode="RGBA")
    c = noise(30, 4, seed=7)
    palette = Image.fromarray(
        np.random.default_rng(4).integers(0, 256, (33, 5, 3), dtype=np.uint8)
    ).convert("P")
    for rel, data in {
        "train/cat/a.png": a,
        "train/cat/a-copy.png": a,
        "train/cat/sub/a-copy2.png": a,
        "train/cat/gray.png": noise(20, 8, seed=5, mode="L"),
        "train/cat/conflict.png": conflict,
        "train/dog/conflict.png": conflict,
        "train/dog/palette.png": png(palette),
        "train/dog/cross.png": cross,
        "train/dog/truncated.png": noise(9, 9, seed=6)[:60],
        "val/cat/c.png": c,
        "val/cat/c-again.png": c,
        "val/dog/cross.png": cross,
    }.items():
        write(root / rel, data)
    return root


def test_report_counts_classes_duplicates_sizes_and_modes(tmp_path: Path) -> None:
    ds = scan_dataset(split_folders(tmp_path / "ds"))
    assert ds.layout == "split-folders"  # the premise: the explicit split decides sides

    r = dataset_report(ds, validation_fraction=0.2, seed=0)

    assert r.classes == (("cat", 7), ("dog", 4))
    assert r.total_images == 11
    assert r.imbalance_ratio == pytest.approx(1.75)
    assert r.skipped_files == 1
    assert len(r.skipped_examples) == 1
    assert r.skipped_examples[0].startswith("train/dog/truncated.png: corrupt or truncated")
    # groups: a.png x3 (2 extra), conflict.png cat+dog, cross.png train+val, c.png val+val
    assert r.duplicate_groups == 4
    assert r.duplicate_images == 5
    assert r.conflicting_label_duplicates == 1
    assert r.cross_split_duplicates == 1
    assert (r.min_width, r.max_width, r.min_height, r.max_height) == (5, 30, 4, 33)
    assert (r.median_width, r.median_height) == (12, 10)
    assert dict(r.modes) == {"RGB": 7, "L": 1, "P": 1, "RGBA": 2}
    assert r.fingerprint == ds.fingerprint


def test_without_its_own_split_the_plans_split_decides_what_crosses(tmp_path: Path) -> None:
    # Two images per class: any validation fraction > 0 puts exactly one of each class in
    # validation (split_dataset's rule), so cat's identical pair always crosses.
    root = tmp_path / "ds"
    same = noise(8, 8, seed=1)
    write(root / "cat" / "x.png", same)
    write(root / "cat" / "y.png", same)
    write(root / "dog" / "x.png", noise(8, 8, seed=2))
    write(root / "dog" / "y.png", noise(8, 8, seed=3))
    ds = scan_dataset(root)
    assert not ds.has_explicit_split

    r = dataset_report(ds, validation_fraction=0.2, seed=3)
    assert (r.duplicate_groups, r.duplicate_images, r.cross_split_duplicates) == (1, 1, 1)
    assert r.conflicting_label_duplicates == 0

    no_validation = dataset_report(ds, validation_fraction=0.0, seed=3)
    assert (no_validation.duplicate_groups, no_validation.cross_split_duplicates) == (1, 0)

    with pytest.raises(InvalidArgument):
        dataset_report(ds, validation_fraction=1.5, seed=3)


def test_a_clean_dataset_reports_no_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(6):
        write(root / "ab"[i % 2] / f"{i}.png", noise(6 + i, 6, seed=i))
    r = dataset_report(scan_dataset(root), validation_fraction=0.2, seed=0)
    assert (r.duplicate_groups, r.duplicate_images, r.cross_split_duplicates) == (0, 0, 0)
    assert (r.skipped_files, r.skipped_examples) == (0, ())
    assert (r.min_width, r.max_width, r.min_height, r.max_height) == (6, 11, 6, 6)


def test_samples_without_a_digest_are_never_duplicates() -> None:
    # Hand-built samples (no scan, digest "") must not all fall into one "" group.
    samples = [Sample(Path(f"/x/{i}.png"), i % 2) for i in range(4)]
    ds = ScannedDataset(
        root=Path("/x"),
        classes=["a", "b"],
        samples=samples,
        skipped=[(f"{i}.png", "bad") for i in range(7)],
        fingerprint="f",
        median_size=(4, 4),
        mode_counts={"RGB": 4},
    )
    r = dataset_report(ds, validation_fraction=0.5, seed=0, skipped_examples=2)
    assert (r.duplicate_groups, r.duplicate_images) == (0, 0)
    assert r.skipped_files == 7 and r.skipped_examples == ("0.png: bad", "1.png: bad")


def test_report_to_pb_carries_every_field() -> None:
    r = DatasetReportData(
        classes=(("cat", 6), ("dog", 4)),
        total_images=10,
        skipped_files=1,
        skipped_examples=("x.png: corrupt",),
        imbalance_ratio=1.5,
        median_width=12,
        median_height=10,
        fingerprint="abc",
        duplicate_images=4,
        duplicate_groups=3,
        cross_split_duplicates=2,
        conflicting_label_duplicates=1,
        min_width=5,
        max_width=30,
        min_height=4,
        max_height=33,
        modes=(("L", 1), ("RGB", 9)),
    )
    m = report_to_pb(r)
    assert [(c.label, c.count) for c in m.classes] == [("cat", 6), ("dog", 4)]
    assert (m.total_images, m.skipped_files, list(m.skipped_examples)) == (
        10,
        1,
        ["x.png: corrupt"],
    )
    assert (m.imbalance_ratio, m.median_width, m.median_height) == (1.5, 12, 10)
    assert m.fingerprint == "abc"
    assert (m.duplicate_images, m.duplicate_groups) == (4, 3)
    assert (m.cross_split_duplicates, m.conflicting_label_duplicates) == (2, 1)
    assert (m.min_width, m.max_width, m.min_height, m.max_height) == (5, 30, 4, 33)
    assert dict(m.modes) == {"L": 1, "RGB": 9}
