"""Advise's dataset report: what a scan found in the data, before any network runs.

Counts per class and their imbalance, skipped (corrupt, unreadable or non-image) files,
exact duplicates by content hash — within a class, across labels, and across the
train/validation split the plan would use — and the images' sizes and colour modes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from graft.data import Sample, ScannedDataset, split_dataset
from graft.plans import imbalance_ratio


@dataclass(frozen=True)
class DatasetReportData:
    """What was found in the dataset."""

    classes: tuple[tuple[str, int], ...]  # (label, usable images)
    total_images: int
    skipped_files: int
    skipped_examples: tuple[str, ...]  # "path: reason", the first few
    imbalance_ratio: float  # largest over smallest class count
    median_width: int
    median_height: int
    fingerprint: str
    # Exact duplicates: usable files with the same sha256 form a group.
    duplicate_images: int = 0  # copies beyond the first of each group
    duplicate_groups: int = 0  # groups of two or more identical files
    cross_split_duplicates: int = 0  # groups with copies in both train and validation
    conflicting_label_duplicates: int = 0  # groups whose copies carry different labels
    min_width: int = 0
    max_width: int = 0
    min_height: int = 0
    max_height: int = 0
    modes: tuple[tuple[str, int], ...] = ()  # (original PIL mode, images), sorted by mode


def dataset_report(
    ds: ScannedDataset, *, validation_fraction: float, seed: int, skipped_examples: int = 5
) -> DatasetReportData:
    """Report on `ds`. Cross-split duplicates are counted against the split training would
    use: the dataset's own when it has one, else split_dataset(ds, validation_fraction,
    seed); raises as split_dataset does (e.g. InvalidArgument for a fraction outside
    [0, 1)). On a sampled scan (max_per_class) every count covers the sampled images only.
    """
    counts = ds.counts()
    groups = _duplicate_groups(ds.samples)
    _, val = split_dataset(ds, validation_fraction, seed)
    # split_dataset hands back the dataset's own Sample objects. Compare identities, not
    # values: a manifest may list one file twice, as two equal Samples.
    val_ids = {id(s) for s in val}
    return DatasetReportData(
        classes=tuple(counts.items()),
        total_images=len(ds.samples),
        skipped_files=len(ds.skipped),
        skipped_examples=tuple(f"{p}: {r}" for p, r in ds.skipped[:skipped_examples]),
        imbalance_ratio=imbalance_ratio(list(counts.values())),
        median_width=int(ds.median_size[0]),
        median_height=int(ds.median_size[1]),
        fingerprint=ds.fingerprint,
        duplicate_images=sum(len(g) - 1 for g in groups),
        duplicate_groups=len(groups),
        cross_split_duplicates=sum(
            1 for g in groups if {id(s) in val_ids for s in g} == {True, False}
        ),
        conflicting_label_duplicates=sum(1 for g in groups if len({s.label for s in g}) > 1),
        min_width=int(ds.min_size[0]),
        max_width=int(ds.max_size[0]),
        min_height=int(ds.min_size[1]),
        max_height=int(ds.max_size[1]),
        modes=tuple(sorted(ds.mode_counts.items())),
    )


def _duplicate_groups(samples: list[Sample]) -> list[list[Sample]]:
    """Samples with identical content (same digest), two or more per group, in dataset
    order. Samples without a digest (not from a scan) are never duplicates."""
    by_digest: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.digest:
            by_digest[s.digest].append(s)
    return [g for g in by_digest.values() if len(g) > 1]
