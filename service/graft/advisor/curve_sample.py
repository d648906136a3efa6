"""The learning curve of a large dataset, measured on more images than the Advise sample.

The accuracy estimates extend what the sample measures to the dataset's size along the
probe's learning curve, a power law of its error in the number of training images
(estimates.learning_curve). Fitted on a quarter, half and all of a 500-image sample, the
curve is three noisy points: at Fashion-MNIST 1,000 per class it came out flat and stated
79-86% for a plan that reached 89-91%, twenty times the sample away. So when the dataset
holds more than CURVE_MAX_SCALE times the sample's images per class, the chosen backbone
runs over more of it (up to `advise_max_images` in all, the sample's images first) at the
cut Advise chose, and the curve is fitted on nested stratified subsets of those images,
each scored on the same held-out quarter; the feature-extraction range is its prediction's
90% bootstrap interval, widened by the spread of a validation accuracy
(estimates.validation_range). At Fashion-MNIST 1,000 and 3,000 per class
(2,000 images, 2.8 s more) it predicts 90.1% and 90.8% for the advised cut, which reached
89.0% and 90.1% on all 10,000 test images, where the sample's own curve said 82.6% and
96.0% (docs/ADVISOR.md § The learning curve on more images).

The same images check the cut: the cuts that probed best on the sample (a near-tie there
decided between cuts up to 4 points apart trained on all the data: docs/ADVISOR.md §
Advise in seconds, third pass) are probed again on them, each fitted on the curve's
training rows and scored on its held-out quarter, and a cut that does at least
MIN_CUT_GAIN better there than the sample's choice replaces it (recheck).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from graft.advisor.advice import CutChoice, Depth
from graft.advisor.depth import CUT_GRID, MIN_CUT_GAIN, cut_columns
from graft.advisor.estimates import LearningCurve, power_law
from graft.advisor.measure import (
    BackboneMeasurement,
    DecodedSample,
    decode_sample,
    needed_short_side,
    select_sample,
    stage_features_pass,
)
from graft.advisor.probe import holdout_hits, linear_probe
from graft.data import Sample

log = logging.getLogger(__name__)

# The sample's own curve extrapolates at most this many times its images per class;
# beyond, the curve is measured on more images.
CURVE_MAX_SCALE = 4.0
# The share of the curve's images every subset is scored on, and the nested subsets of
# the rest it is fitted on.
HOLDOUT_FRACTION = 0.25
NESTED_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
# Resamples of the held-out images behind the prediction's interval.
BOOTSTRAP = 400
# Cuts probed again on the curve's images: the sample's choice and the others that probed
# best on the sample (pooled as they were probed there), this many in all. At Fashion-MNIST
# 500, 1,000 and 3,000 per class the fourth best re-checked last every time (docs/ADVISOR.md
# § The cut re-checked on more images), and each costs a probe of 1,500 rows (0.7 s).
RECHECK_CUTS = 3
# ... among the cuts whose probe on the sample came within this of the best one's: about a
# standard error of a 5-fold probe on 500 images at 85% (1.6 points). A cut further behind
# is behind on the curve's images too (at 1,000 per class the next cuts were 3 points
# behind on the sample, 6-7 on the curve's images and 3-5 trained on all the data).
RECHECK_MARGIN = 0.02

# A cut's features on the curve's images: (stages, grid) -> (images, columns).
Columns = Callable[[tuple[int, ...], int], torch.Tensor]


def measure_curve(
    samples: Sequence[Sample],
    sample: DecodedSample,
    m: BackboneMeasurement,
    depth: Depth,
    *,
    train_images: int,
    num_classes: int,
    max_images: int,
    weights_dir: Path | None,
    device: torch.device | str,
    seed: int,
) -> tuple[LearningCurve, CutChoice] | None:
    """On a dataset far larger than the sample (`train_images` to train on), `m`'s stage
    outputs over more of `samples` (`max_images` in all, the sample's first), the cut
    re-checked on them and its learning curve; None: the sample's own curve will do."""
    more = extension(
        samples,
        sample,
        train_per_class=train_images / num_classes,
        num_classes=num_classes,
        max_images=max_images,
        seed=seed,
    )
    if not more:
        return None
    started = time.perf_counter()
    extra = decode_sample(more, max_short_side=needed_short_side([m.spec], [m.image_size]))
    stage, grid = stage_features_pass(
        m.spec,
        extra,
        image_size=m.image_size,
        batch_size=m.batch_size,
        weights_dir=weights_dir,
        device=device,
    )

    def columns(stages: tuple[int, ...], g: int) -> torch.Tensor:
        mine = cut_columns(stages, g, m.stage_features, m.stage_grid_features)
        return torch.cat([mine, cut_columns(stages, g, stage, grid)])

    labels = [*sample.labels, *extra.labels]
    cut, hits = recheck(depth.cut, columns, labels, num_classes, sample_rows=len(sample), seed=seed)
    curve = nested_curve(
        columns(cut.stages, cut.grid), labels, num_classes, train_images, full_hits=hits
    )
    log.info(
        "advise: learning curve on %d images in %.1f s, cuts re-checked %s: %s",
        len(labels),
        time.perf_counter() - started,
        cut.rechecked,
        curve,
    )
    return curve, cut


def recheck(
    cut: CutChoice,
    columns: Columns,
    labels: Sequence[int],
    num_classes: int,
    *,
    sample_rows: int,
    seed: int,
) -> tuple[CutChoice, torch.Tensor]:
    """`cut`, or the best of the RECHECK_CUTS best-probing cuts on the sample (within
    RECHECK_MARGIN of the best there) when it does at least MIN_CUT_GAIN better than `cut`,
    each fitted on the curve's training rows and scored on its held-out quarter (the same
    split as nested_curve's last point); equal scores go to the cut ending at the later
    stage, then the narrower. The curve's rows are the sample's (`sample_rows`, first) and
    the extension's; a cut that replaces `cut` gets its k-fold probe on the sample like the
    ones depth chose. With it, which held-out rows the returned cut got right
    (nested_curve's last point)."""
    probed = [((s, 1), a) for s, a in cut.candidates]
    probed += [((s, CUT_GRID), a) for s, a in cut.grid_candidates]
    best = max((a for _, a in probed), default=cut.probe.accuracy)
    near = [(k, a) for k, a in probed if a >= best - RECHECK_MARGIN]
    best_first = [k for k, _ in sorted(near, key=lambda t: t[1], reverse=True)]
    keys = list(dict.fromkeys([(cut.stages, cut.grid), *best_first]))[:RECHECK_CUTS]
    fit_rows, held = _split(len(labels))
    xs = {key: columns(*key) for key in keys}
    hits = {
        key: holdout_hits(x, labels, range(fit_rows), held, num_classes=num_classes)
        for key, x in xs.items()
    }
    scores = {key: float(h.float().mean()) for key, h in hits.items()}
    mine = (cut.stages, cut.grid)
    top = max(keys, key=lambda k: (scores[k], k[0][-1], -xs[k].shape[1]))
    rechecked = dataclasses.replace(
        cut,
        rechecked=tuple((k[0], k[1], scores[k]) for k in keys),
        recheck_split=(fit_rows, len(held)),
    )
    if scores[top] < scores[mine] + MIN_CUT_GAIN:
        return rechecked, hits[mine]
    features = xs[top][:sample_rows]
    probe = linear_probe(features, labels[:sample_rows], num_classes=num_classes, seed=seed)
    best_global = cut.global_probe if cut.grid > 1 else cut.probe
    moved = dataclasses.replace(
        rechecked,
        stages=top[0],
        grid=top[1],
        probe=probe,
        features=features,
        global_probe=best_global if top[1] > 1 else None,
    )
    return moved, hits[top]


def _split(n: int) -> tuple[int, list[int]]:
    """The curve's training rows (a prefix) and its held-out rows (the last quarter)."""
    fit_rows = n - max(1, round(HOLDOUT_FRACTION * n))
    return fit_rows, list(range(fit_rows, n))


def extension(
    samples: Sequence[Sample],
    sample: DecodedSample,
    *,
    train_per_class: float,
    num_classes: int,
    max_images: int,
    seed: int,
) -> list[Sample]:
    """The images the curve adds to `sample`, interleaved class by class; none when the
    dataset is within CURVE_MAX_SCALE of the sample per class or the curve would not reach
    twice the sample. The same seeded shuffle as the sample's (select_sample), so the
    sample is a prefix of every class's share and the extension its continuation."""
    per_class = len(sample) / max(1, num_classes)
    if train_per_class <= CURVE_MAX_SCALE * per_class or max_images < 2 * len(sample):
        return []
    wider = select_sample(samples, max_per_class=max_images, max_images=max_images, seed=seed)
    have = {s.path for s in sample.samples}
    return [s for s in wider if s.path not in have]


def nested_curve(
    features: torch.Tensor,
    labels: Sequence[int],
    num_classes: int,
    train_images: int,
    *,
    seed: int = 0,
    full_hits: torch.Tensor | None = None,
) -> LearningCurve:
    """The power law of the probe's error fitted on nested prefixes (NESTED_FRACTIONS) of
    the first 1 - HOLDOUT_FRACTION of the rows, each scored on the rest, and extrapolated to
    `train_images`; its 90% interval from BOOTSTRAP resamples of the held-out rows (each
    resample rescoring every subset and refitting the law). The rows come interleaved class
    by class, so every prefix and the held-out tail are stratified. `full_hits`: the
    last point's scores when already measured (recheck), which that fit would repeat."""
    fit_rows, held = _split(len(labels))
    fractions, hits = [], []
    for fraction in NESTED_FRACTIONS:
        rows = max(num_classes, round(fraction * fit_rows))
        fractions.append(rows / fit_rows)
        if rows == fit_rows and full_hits is not None:
            hits.append(full_hits)
            continue
        hits.append(
            holdout_hits(features, labels, list(range(rows)), held, num_classes=num_classes)
        )
    scale = max(1.0, train_images / fit_rows)
    points = [(f, float(h.float().mean())) for f, h in zip(fractions, hits, strict=True)]
    exponent, predicted = power_law(points, fit_rows, scale)
    return LearningCurve(
        exponent,
        tuple(points),
        max(points[-1][1], predicted),
        f"{len(points)} nested subsets of {fit_rows} images, each scored on {len(held)} "
        "others, read at the cut beyond the sample for the curve",
        interval=_bootstrap(fractions, torch.stack(hits).float(), fit_rows, scale, seed),
    )


def _bootstrap(
    fractions: Sequence[float], hits: torch.Tensor, rows: int, scale: float, seed: int
) -> tuple[float, float]:
    """The 5th and 95th percentiles of the accuracy the law predicts at `scale` when the
    held-out images (columns of `hits`, one row per subset) are resampled with
    replacement; each prediction is at least its resample's last point, as above."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(hits.shape[1], (BOOTSTRAP, hits.shape[1]), generator=g)
    accuracy = hits[:, pick].mean(dim=2).T  # (BOOTSTRAP, subsets)
    predictions = []
    for row in accuracy.tolist():
        _, p = power_law(list(zip(fractions, row, strict=True)), rows, scale)
        predictions.append(max(row[-1], p))
    q = torch.quantile(torch.tensor(predictions), torch.tensor([0.05, 0.95]))
    return float(q[0]), float(q[1])
