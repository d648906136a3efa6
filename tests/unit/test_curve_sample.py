"""On a dataset far larger than the Advise sample, the learning curve is measured on more of
its images at the chosen cut (graft.advisor.curve_sample), and the accuracy estimates
extend the sample's probe along it."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from graft.advisor import curve_sample
from graft.advisor.advice import SEED, CutChoice, PilotResult
from graft.advisor.advise import advise_dataset
from graft.advisor.curve_sample import (
    CURVE_MAX_SCALE,
    NESTED_FRACTIONS,
    RECHECK_CUTS,
    RECHECK_MARGIN,
    Columns,
    extension,
    nested_curve,
    recheck,
)
from graft.advisor.depth import CUT_GRID, cut_columns
from graft.advisor.estimates import (
    LearningCurve,
    fine_tune_range,
    strategy_estimates,
    validation_range,
)
from graft.advisor.measure import DecodedSample, select_sample
from graft.advisor.probe import holdout_probe, linear_probe, stratified_folds
from graft.config import Config
from graft.data import Sample, scan_dataset
from graft.domain import Strategy
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.helpers import count_decodes


def _samples(per_class: int, classes: int = 4) -> list[Sample]:
    return [
        Sample(Path(f"/d/c{c}/{i:04d}.png"), c) for c in range(classes) for i in range(per_class)
    ]


def _decoded(samples: list[Sample]) -> DecodedSample:
    return DecodedSample(samples, [None] * len(samples), [s.label for s in samples], 0.0)  # type: ignore[list-item]


def test_the_extension_continues_the_sample_on_large_datasets_only() -> None:
    everything = _samples(100)
    sample = _decoded(select_sample(everything, max_per_class=10, max_images=400, seed=0))
    more = extension(everything, sample, train_per_class=90, num_classes=4, max_images=200, seed=0)
    # Up to max_images in all, the sample's images first: the same seeded shuffle, so the
    # sample is each class's first share and the extension the rest of a wider sample.
    wider = select_sample(everything, max_per_class=200, max_images=200, seed=0)
    assert {s.path for s in sample.samples} | {s.path for s in more} == {s.path for s in wider}
    assert not {s.path for s in sample.samples} & {s.path for s in more}
    assert len(more) == 160 and set(Counter(s.label for s in more).values()) == {40}
    # Interleaved class by class: every prefix is stratified.
    assert [s.label for s in more[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    # Within CURVE_MAX_SCALE of the sample per class, or no room to double it: nothing.
    within = CURVE_MAX_SCALE * 10
    assert (
        extension(everything, sample, train_per_class=within, num_classes=4, max_images=200, seed=0)
        == []
    )
    assert (
        extension(everything, sample, train_per_class=90, num_classes=4, max_images=79, seed=0)
        == []
    )


def test_the_cut_reads_the_grid_or_the_global_pools() -> None:
    stage = [torch.full((3, 2), float(i)) for i in range(1, 4)]
    grid = [torch.full((3, 8), float(10 * i)) for i in range(1, 4)]
    assert cut_columns((2, 3), 1, stage, grid).tolist() == [[2.0, 2.0, 3.0, 3.0]] * 3
    assert cut_columns((3,), 2, stage, grid).tolist() == [[30.0] * 8] * 3


def _blobs(n: int, classes: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    labels = [i % classes for i in range(n)]  # interleaved, as a sample is
    centres = torch.randn(classes, 32, generator=g)
    return centres[labels] + 2.0 * torch.randn(n, 32, generator=g), labels


def test_the_nested_curve_is_scored_on_a_held_out_quarter_and_extrapolated() -> None:
    x, labels = _blobs(800, 4, seed=0)
    curve = nested_curve(x, labels, 4, train_images=6000)
    assert [round(f, 3) for f, _ in curve.points] == list(NESTED_FRACTIONS)
    assert "4 nested subsets of 600 images, each scored on 200 others" in curve.basis
    last = curve.points[-1][1]
    # More rows help a probe on noisy blobs; 10x the rows predict more, never less.
    assert curve.points[0][1] < last and curve.exponent > 0
    assert last <= curve.predicted <= 1.0
    # The prediction's 90% interval from resampling the 200 held-out images: it holds the
    # prediction, and at least its last point's own spread (1.645 standard errors below).
    assert curve.interval is not None
    low, high = curve.interval
    assert low <= curve.predicted <= high <= 1.0
    assert low >= last - 2 * math.sqrt(last * (1 - last) / 200)
    assert nested_curve(x, labels, 4, train_images=6000).interval == curve.interval  # seeded
    # No more images than the curve's own: nothing extrapolated.
    assert nested_curve(x, labels, 4, train_images=600).predicted == pytest.approx(last)


def _cuts(
    informative: tuple[tuple[int, ...], int], seed: int = 3
) -> tuple[CutChoice, Columns, list[int]]:
    """A cut chosen on the sample at stage 9, four others probed there, and columns in
    which only `informative` separates the classes (the rest are noise)."""
    x, labels = _blobs(800, 4, seed=seed)
    noise = torch.randn(800, 32, generator=torch.Generator().manual_seed(seed + 1))

    def columns(stages: tuple[int, ...], grid: int) -> torch.Tensor:
        return x if (stages, grid) == informative else noise

    probe = linear_probe(x[:200], labels[:200])
    cut = CutChoice(
        (9,),
        probe,
        x[:200],
        candidates=(((9,), 0.80), ((8, 9), 0.79), ((7, 8), 0.70), ((5,), 0.40)),
        grid_candidates=(((8, 9), 0.78), ((7, 8), 0.60)),
    )
    return cut, columns, labels


def test_the_cut_is_rechecked_on_the_curves_images() -> None:
    # The sample's choice does best on the curve's images too: it stays, with what the
    # re-check measured, the choice first, then the best probes on the sample.
    cut, columns, labels = _cuts(informative=((9,), 1))
    kept, hits = recheck(cut, columns, labels, 4, sample_rows=200, seed=0)
    assert (kept.stages, kept.grid, kept.probe) == ((9,), 1, cut.probe)
    assert [(s, g) for s, g, _ in kept.rechecked] == [((9,), 1), ((8, 9), 1), ((8, 9), 2)]
    assert len(kept.rechecked) == RECHECK_CUTS and kept.recheck_split == (600, 200)
    assert kept.rechecked[0][2] > 0.8 and max(a for *_, a in kept.rechecked[1:]) < 0.5
    # With it, the held-out hits of the cut it returns: the curve's last point, not refitted.
    assert hits.shape == (200,) and float(hits.float().mean()) == kept.rechecked[0][2]
    x = columns((9,), 1)
    assert nested_curve(x, labels, 4, 6000, full_hits=hits) == nested_curve(x, labels, 4, 6000)

    # A cut the sample ranked behind does better on them: it replaces the choice, with its
    # own k-fold probe and features on the sample's rows.
    cut, columns, labels = _cuts(informative=((8, 9), CUT_GRID))
    moved, hits = recheck(cut, columns, labels, 4, sample_rows=200, seed=0)
    assert (moved.stages, moved.grid) == ((8, 9), CUT_GRID)
    assert float(hits.float().mean()) == moved.rechecked[2][2]
    assert torch.equal(moved.features, columns((8, 9), CUT_GRID)[:200])
    assert moved.probe.accuracy > 0.8 and moved.probe.folds == cut.probe.folds
    assert moved.global_probe == cut.probe  # the globally pooled cut it replaced
    assert moved.candidates == cut.candidates and moved.rechecked[0][:2] == ((9,), 1)

    # A cut the sample probed below the RECHECK_CUTS best is not probed again.
    cut, columns, labels = _cuts(informative=((7, 8), 1))
    assert recheck(cut, columns, labels, 4, sample_rows=200, seed=0)[0].stages == (9,)
    # Nor is one more than RECHECK_MARGIN behind the best on the sample: with none near,
    # the choice alone is scored (the curve's last point).
    cut, columns, labels = _cuts(informative=((8, 9), CUT_GRID))
    behind = 0.80 - RECHECK_MARGIN - 0.001
    cut = dataclasses.replace(cut, candidates=(((9,), 0.80),), grid_candidates=(((8, 9), behind),))
    alone, _ = recheck(cut, columns, labels, 4, sample_rows=200, seed=0)
    assert alone.stages == (9,) and [k[:2] for k in alone.rechecked] == [((9,), 1)]


def test_a_measured_curve_sets_the_feature_extraction_range() -> None:
    x, labels = _blobs(200, 4, seed=1)
    probe = linear_probe(x, labels)
    cut = CutChoice((9,), probe, x, ())
    pilot = PilotResult(accuracy=0.7, train_images=160, val_images=40, epochs=4, seconds=1.0)
    curve = LearningCurve(0.2, ((0.5, 0.8), (1.0, 0.85)), 0.9, "what it read", (0.87, 0.93))
    fe, ft = strategy_estimates(
        cut,
        labels,
        4,
        sample_images=200,
        per_class=2000,
        fine_tune=Strategy.FULL_FINE_TUNE,
        pilot=pilot,
        probe_holdout=0.7,
        fe_seconds=1.0,
        ft_seconds=2.0,
        curve=curve,
    )
    # The range is the measured curve's interval; the fine-tune's low end is its pilot's,
    # and its high end what the pilot and the curve's gain over the sample's probe give,
    # raised to feature extraction's high end (a pilot cannot see what more data gives).
    assert (fe.accuracy_low, fe.accuracy_high) == (0.87, 0.93)
    assert "fitted on what it read" in fe.basis and "90.0%" in fe.basis
    assert ft.strategy == Strategy.FULL_FINE_TUNE
    extra = max(0.0, 0.9 - probe.accuracy)
    from_pilot = fine_tune_range(0.7, 40, 0.7, extra)
    assert from_pilot[1] < 0.93
    assert (ft.accuracy_low, ft.accuracy_high) == pytest.approx((from_pilot[0], 0.93))
    assert "raised to feature extraction's" in ft.basis


@pytest.mark.pretrained
def test_advise_reads_more_images_for_the_curve_of_a_large_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = count_decodes(monkeypatch)
    folder = write_fashion_mnist_folder(tmp_path / "fashion", per_class=30)
    # A sample of 4 per class, 27 per class to train on: more than CURVE_MAX_SCALE times.
    # The request's max_images (not the configured 2,000) bounds the curve as the sample.
    config = Config(data_dir=tmp_path / "data", advise_max_per_class=4)
    advice = advise_dataset(
        scan_dataset(folder), config=config, candidates=["efficientnet_lite0"], max_images=100
    )
    assert advice.sample_images == 40
    # The sample, then 60 more for the curve: 10 per class in all, each decoded once.
    assert len(decoded) == len(set(decoded)) == 100
    assert set(Counter(p.parent.name for p in decoded).values()) == {10}
    fe = next(e for e in advice.strategy_estimates if e.strategy == Strategy.FEATURE_EXTRACTION)
    assert "4 nested subsets of 75 images, each scored on 25 others" in fe.basis
    assert 0 <= fe.accuracy_low <= fe.accuracy_high <= 1
    # The same images re-checked the best cuts, and the plan reads the cut that came out.
    cut = advice.depth.cut
    assert cut.recheck_split == (75, 25) and 1 <= len(cut.rechecked) <= RECHECK_CUTS
    assert (cut.stages, cut.grid) in [(s, g) for s, g, _ in cut.rechecked]
    assert tuple(advice.plan.feature_stages) in ((), cut.stages)
    assert advice.plan.feature_grid in (0, 1, cut.grid)
    assert "100 images of the dataset" in advice.rationale
    assert "75 to fit, 25 held out" in advice.rationale


@pytest.mark.pretrained
def test_the_pilot_and_the_plan_use_the_rechecked_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The re-check runs before the pilot: a cut it moves to is the one planned and piloted.
    moved_to: list[tuple[int, ...]] = []
    advice_labels: list[list[int]] = []

    def move(
        cut: CutChoice, columns: Columns, labels: list[int], num_classes: int, **kw: int
    ) -> tuple[CutChoice, torch.Tensor]:
        kept, hits = recheck(cut, columns, labels, num_classes, **kw)
        others = [(a, s) for s, a in cut.candidates if s != kept.stages and s[-1] < 9]
        other = max(others)[1]  # the best-probing other cut: feature extraction stays likely
        moved_to.append(other)
        advice_labels.append(labels[: kw["sample_rows"]])
        features = columns(other, 1)[: kw["sample_rows"]]
        return dataclasses.replace(kept, stages=other, grid=1, features=features), hits

    monkeypatch.setattr(curve_sample, "recheck", move)
    folder = write_fashion_mnist_folder(tmp_path / "fashion", per_class=30)
    config = Config(data_dir=tmp_path / "data", advise_max_per_class=4)
    advice = advise_dataset(
        scan_dataset(folder), config=config, candidates=["efficientnet_lite0"], max_images=100
    )
    assert advice.depth.cut.stages == moved_to[0]
    fe = advice.plan if advice.plan.strategy == Strategy.FEATURE_EXTRACTION else None
    assert fe is None or (tuple(fe.feature_stages) == moved_to[0] and fe.feature_grid <= 1)
    # The pilot's split scored the moved cut's features against its fine-tune.
    sample_labels = advice_labels[0]
    fold = stratified_folds(sample_labels, 5, SEED)
    val = [i for i, f in enumerate(fold) if f == 0]
    train = [i for i, f in enumerate(fold) if f != 0]
    probe = holdout_probe(advice.depth.cut.features, sample_labels, train, val, num_classes=10)
    assert advice.holdout_probe_accuracy == probe


def test_the_validation_range_adds_the_spread_of_a_measured_accuracy() -> None:
    # 87% measured on 500 validation images: 1.645 x sqrt(0.87 x 0.13 / 500) = 2.47 points,
    # added in quadrature to each side of the expected accuracy's interval.
    low, high = validation_range(0.87, (0.84, 0.90), 500)
    spread = 1.645 * math.sqrt(0.87 * 0.13 / 500)
    assert low == pytest.approx(0.87 - math.hypot(0.03, spread))
    assert high == pytest.approx(0.87 + math.hypot(0.03, spread))
    # No validation images to measure on: the interval as it is; clipped to [0, 1].
    assert validation_range(0.87, (0.84, 0.90), 0) == pytest.approx((0.84, 0.90))
    assert validation_range(1.0, (0.99, 1.0), 50) == pytest.approx((0.99, 1.0))


def test_the_rationale_names_the_recheck() -> None:
    from graft.advisor.rationale import _recheck_words

    cut, columns, labels = _cuts(informative=((8, 9), CUT_GRID))
    assert _recheck_words(cut) == ""  # a sample's curve: nothing re-checked
    moved, _ = recheck(cut, columns, labels, 4, sample_rows=200, seed=0)
    words = _recheck_words(moved)
    assert "probed again on 800 images of the dataset (600 to fit, 200 held out)" in words
    assert "8+9 on the 2x2 grid replaces the sample's choice, 9 pooled globally" in words
    kept, _ = recheck(*_cuts(informative=((9,), 1)), 4, sample_rows=200, seed=0)
    assert "the sample's choice stands" in _recheck_words(kept)
    alone = dataclasses.replace(kept, rechecked=kept.rechecked[:1])
    assert _recheck_words(alone).startswith(" No other cut probed within 2 points of the best")
