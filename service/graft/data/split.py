"""Splitting a scanned dataset into training and validation samples."""

from __future__ import annotations

import random
from collections import defaultdict

from graft.data.scan import Sample, ScannedDataset
from graft.errors import FailedPrecondition, InvalidArgument


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
