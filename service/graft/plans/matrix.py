"""The size × similarity matrix (docs/ADVISOR.md, DESIGN.md): which quadrant a dataset is
in, and the strategy the matrix gives for it."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from graft.domain import Quadrant, Strategy

# A dataset is similar to the pretraining data when its combined similarity score is at
# least this (the scores are calibrated so that 0.5 is halfway between natural photos and
# grayscale glyphs; see signals.py).
SIMILARITY_THRESHOLD = 0.5

# DESIGN.md's table, exactly: quadrant → default strategy.
MATRIX: dict[Quadrant, Strategy] = {
    Quadrant.LARGE_DIFFERENT: Strategy.FULL_FINE_TUNE,  # 1: full, pretrained init
    Quadrant.LARGE_SIMILAR: Strategy.PARTIAL_FINE_TUNE,  # 2: partial, top stages (small K)
    Quadrant.SMALL_DIFFERENT: Strategy.PARTIAL_FINE_TUNE,  # 3: partial, deeper + augmentation
    Quadrant.SMALL_SIMILAR: Strategy.FEATURE_EXTRACTION,  # 4: feature extraction
}

QUADRANT_WORDS: dict[Quadrant, str] = {
    Quadrant.LARGE_DIFFERENT: "quadrant 1 (large, different)",
    Quadrant.LARGE_SIMILAR: "quadrant 2 (large, similar)",
    Quadrant.SMALL_DIFFERENT: "quadrant 3 (small, different)",
    Quadrant.SMALL_SIMILAR: "quadrant 4 (small, similar)",
}

STRATEGY_WORDS: dict[Strategy, str] = {
    Strategy.FULL_FINE_TUNE: "strategy 1 (full fine-tune)",
    Strategy.PARTIAL_FINE_TUNE: "strategy 2 (partial fine-tune)",
    Strategy.FEATURE_EXTRACTION: "strategy 3 (feature extraction)",
}


def is_similar(similarity: float) -> bool:
    """The similarity axis: at least SIMILARITY_THRESHOLD counts as similar."""
    return similarity >= SIMILARITY_THRESHOLD


def quadrant_for(images_per_class: float, similar: bool, small_threshold: int) -> Quadrant:
    """The matrix's quadrant. Fewer than `small_threshold` images per class is small (so
    exactly `small_threshold` is large)."""
    if small_threshold <= 0:
        raise ValueError(f"small_threshold must be positive, got {small_threshold}")
    small = images_per_class < small_threshold
    if small:
        return Quadrant.SMALL_SIMILAR if similar else Quadrant.SMALL_DIFFERENT
    return Quadrant.LARGE_SIMILAR if similar else Quadrant.LARGE_DIFFERENT


def size_axis(class_counts: Iterable[int]) -> float:
    """Images per class for the size axis: the median of the per-class counts.

    The median, not the minimum: one rare class should not turn a large dataset into a
    small one (imbalance is handled by class weighting instead), and half the classes have
    at least this many images to learn from."""
    counts = list(class_counts)
    if not counts:
        raise ValueError("no classes")
    return float(statistics.median(counts))
