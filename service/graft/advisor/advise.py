"""Advise: where a dataset sits in the size × similarity matrix, measured, and a complete
plan for it (docs/ADVISOR.md)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.advisor import cancel
from graft.advisor.advice import SEED, Advice, BackboneScore, StrategyEstimate
from graft.advisor.bootstrap import is_borderline, similarity_interval
from graft.advisor.choice import Choice, Planner, pilot_and_choose
from graft.advisor.curve_sample import measure_curve
from graft.advisor.depth import choose_depth
from graft.advisor.estimates import (
    FE_MARGIN,
    LearningCurve,
    fine_tune_range,
    strategy_estimates,
)
from graft.advisor.measure import (
    SIGNAL_MAX_IMAGES,
    BackboneMeasurement,
    DecodedSample,
    decode_sample,
    measure_backbone,
    needed_short_side,
    select_sample,
    transform_seconds,
)
from graft.advisor.ranking import _rank, rank_backbones, resolve_candidates
from graft.advisor.rationale import measured_rationale
from graft.advisor.report import DatasetReportData, dataset_report
from graft.advisor.signals import Signal, combine, measure_signals
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.backbones.spec import PretrainedSpec
from graft.config import Config
from graft.data import ScannedDataset, split_dataset
from graft.data.dataset import DEFAULT_MAX_CACHED_PIXELS
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.errors import FailedPrecondition, InvalidArgument
from graft.plans import DEFAULTS as PLAN_DEFAULTS
from graft.plans import resolve_plan
from graft.plans.matrix import MATRIX, is_similar, quadrant_for, size_axis

# Names other modules import from here: the types live in advice.py, the answer for
# declared statistics in declared.py, the candidates and their ranking in ranking.py, the
# strategy's pilot in choice.py, the estimate maths in estimates.py, the prose in
# rationale.py.
__all__ = [
    "FE_MARGIN",
    "SEED",
    "Advice",
    "BackboneScore",
    "StrategyEstimate",
    "_rank",
    "advise_dataset",
    "fine_tune_range",
    "resolve_candidates",
]

log = logging.getLogger(__name__)

SKIPPED_EXAMPLES = 5
SIMILARITY_METHOD = (
    "the lower of two calibrated scores measured with the default backbone at its pretraining "
    "resolution: imagenet_confidence (mean top-1 softmax probability of the ImageNet "
    "classifier) and batchnorm_shift (distance of the sample's BatchNorm input moments from "
    "the running statistics, which encode ImageNet); 0.5 = halfway between natural photos "
    "and grayscale glyphs (docs/ADVISOR.md)"
)


# --------------------------------------------------------------------------- measured


@dataclass(frozen=True)
class _Survey:
    """What the scan says, before any image is decoded."""

    threshold: int  # the small-dataset threshold
    names: list[str]  # the candidates to rank, in order
    signal_name: str  # the backbone the similarity signals are measured with
    report: DatasetReportData
    counts: list[int]  # images per class
    per_class: float  # the size axis
    num_classes: int
    num_train: int
    num_val: int
    median_size: tuple[int, int]
    specs: dict[str, PretrainedSpec]  # every backbone to measure: signal_name, then names
    shapes: dict[str, tuple[int, int]]  # (image size, batch size) each would train at


@dataclass(frozen=True)
class _Measured:
    """The decoded sample and every backbone's pass over it."""

    sample: DecodedSample
    measurements: dict[str, BackboneMeasurement]


@dataclass(frozen=True)
class _Position:
    """Where the dataset sits in the matrix."""

    signals: list[Signal]
    similarity: float
    similar: bool
    quadrant: Quadrant
    interval: tuple[float, float] | None  # the similarity's bootstrap interval
    images: int  # how many sampled images the signals read


def advise_dataset(
    ds: ScannedDataset,
    *,
    config: Config,
    candidates: Sequence[str] = (),
    small_threshold: int | None = None,
    device: torch.device | str = "cpu",
    max_per_class: int | None = None,
    max_images: int | None = None,
) -> Advice:
    """Measure `ds` and advise.

    The size axis counts the whole scanned dataset. Everything else is measured on a
    seeded, stratified sample of at most `max_per_class` (default
    `config.advise_max_per_class`) images per class and `max_images` (default
    `config.advise_max_images`) in all, decoded once; each candidate's pretrained network
    runs over it once, yielding its features (linear probe), its speed (time estimate) and,
    for the default backbone, the similarity signals."""
    started = time.perf_counter()
    survey = _survey(ds, config, candidates, small_threshold)
    max_images = max_images or config.advise_max_images
    measured = _measure(
        ds,
        survey,
        config,
        device,
        max_per_class=max_per_class or config.advise_max_per_class,
        max_images=max_images,
    )
    scores, ranking_note = rank_backbones(
        survey.names, measured.measurements, measured.sample, survey.num_classes
    )
    position = _position(survey, measured)
    planner = _planner(survey, measured, position.quadrant, scores[0].backbone, config, device)
    curve, planner = _curve(ds, survey, planner, config, device, max_images)
    choice = pilot_and_choose(planner, MATRIX[position.quadrant], per_class=survey.per_class)
    return _compose(
        survey, measured, position, scores, ranking_note, planner, choice, curve, started=started
    )


def _survey(
    ds: ScannedDataset, config: Config, candidates: Sequence[str], small_threshold: int | None
) -> _Survey:
    """The candidates, the dataset's report and split, and the image and batch size each
    backbone would train at (resolve_plan's rules)."""
    threshold = small_threshold or config.small_dataset_threshold
    if threshold <= 0:
        raise InvalidArgument.of("small_dataset_threshold", f"must be positive, got {threshold}")
    names = resolve_candidates(candidates, config.weights_dir)
    ready = {s.name for s in backbone_statuses(config.weights_dir) if s.ready}
    signal_name = DEFAULT_BACKBONE if DEFAULT_BACKBONE in ready else names[0]

    report = dataset_report(
        ds,
        validation_fraction=PLAN_DEFAULTS.validation_fraction,
        seed=SEED,
        skipped_examples=SKIPPED_EXAMPLES,
    )
    counts = [c for _, c in report.classes]
    train, val = split_dataset(ds, PLAN_DEFAULTS.validation_fraction, SEED)
    median_size = (report.median_width, report.median_height)
    specs = {n: get_spec(n) for n in dict.fromkeys([signal_name, *names])}
    shapes: dict[str, tuple[int, int]] = {}
    for n, spec in specs.items():
        p = resolve_plan(
            TrainingPlan(strategy=Strategy.PARTIAL_FINE_TUNE),
            spec,
            num_train_images=len(train),
            median_size=median_size,
        )
        shapes[n] = (p.image_size, p.batch_size)
    return _Survey(
        threshold=threshold,
        names=names,
        signal_name=signal_name,
        report=report,
        counts=counts,
        per_class=size_axis(counts),
        num_classes=len(ds.classes),
        num_train=len(train),
        num_val=len(val),
        median_size=median_size,
        specs=specs,
        shapes=shapes,
    )


def _measure(
    ds: ScannedDataset,
    survey: _Survey,
    config: Config,
    device: torch.device | str,
    *,
    max_per_class: int,
    max_images: int,
) -> _Measured:
    """Decode the sample once and run every backbone over it."""
    specs, shapes, signal_name = survey.specs, survey.shapes, survey.signal_name
    picked = select_sample(
        ds.samples, max_per_class=max_per_class, max_images=max_images, seed=SEED
    )
    short_side = needed_short_side(
        [*specs.values(), specs[signal_name]],
        [*(s for s, _ in shapes.values()), specs[signal_name].input_size],
    )
    sample = decode_sample(picked, max_short_side=short_side)
    if len(sample) < 2:
        raise FailedPrecondition(
            f"only {len(sample)} image(s) of the dataset could be decoded for measuring"
        )

    measurements: dict[str, BackboneMeasurement] = {}
    for n, spec in specs.items():
        cancel.checkpoint()  # loading a backbone's weights takes seconds on a busy host
        size, batch = shapes[n]
        measurements[n] = measure_backbone(
            spec,
            sample,
            image_size=size,
            batch_size=batch,
            signal_images=min(SIGNAL_MAX_IMAGES, len(sample)) if n == signal_name else 0,
            weights_dir=config.weights_dir,
            device=device,
        )
        log.info(
            "advise: measured %s at %d px on %d images in %.1f s",
            n,
            size,
            len(sample),
            measurements[n].seconds,
        )
    return _Measured(sample, measurements)


def _position(survey: _Survey, measured: _Measured) -> _Position:
    """The similarity signals, and with the size axis the quadrant."""
    response = measured.measurements[survey.signal_name].response
    assert response is not None
    signals = measure_signals(response)
    similarity = combine(signals)
    similar = is_similar(similarity)
    quadrant = quadrant_for(survey.per_class, similar, survey.threshold)
    return _Position(
        signals, similarity, similar, quadrant, similarity_interval(response), response.num_images
    )


def _planner(
    survey: _Survey,
    measured: _Measured,
    quadrant: Quadrant,
    backbone: str,
    config: Config,
    device: torch.device | str,
) -> Planner:
    """Depth: every stage of the chosen backbone probed; the feature cut and how many
    stages partial fine-tuning unfreezes follow from it (depth.py)."""
    m, sample = measured.measurements[backbone], measured.sample
    depth = choose_depth(
        m.stage_features,
        sample.labels,
        survey.num_classes,
        seed=SEED,
        grid_features=m.stage_grid_features,
    )
    report = survey.report
    pixels = report.total_images * report.median_width * report.median_height
    return Planner(
        quadrant=quadrant,
        m=m,
        sample=sample,
        depth=depth,
        num_classes=survey.num_classes,
        num_train=survey.num_train,
        num_val=survey.num_val,
        median_size=survey.median_size,
        imbalance_ratio=report.imbalance_ratio,
        decode_every_epoch=pixels > DEFAULT_MAX_CACHED_PIXELS,
        weights_dir=config.weights_dir,
        device=device,
        eval_seconds=transform_seconds(m.spec, sample, m.image_size, augment=False),
        augment_seconds=transform_seconds(m.spec, sample, m.image_size, augment=True),
    )


def _curve(
    ds: ScannedDataset,
    survey: _Survey,
    planner: Planner,
    config: Config,
    device: torch.device | str,
    max_images: int,
) -> tuple[LearningCurve | None, Planner]:
    """On a dataset far larger than the sample, its learning curve measured on more images
    and the cut re-checked on them (curve_sample.py), the planner at that cut; else no
    curve (the sample's own will do) and the planner as it was."""
    measured = measure_curve(
        ds.samples,
        planner.sample,
        planner.m,
        planner.depth,
        train_images=survey.num_train,
        num_classes=survey.num_classes,
        max_images=max_images,
        weights_dir=config.weights_dir,
        device=device,
        seed=SEED,
    )
    if measured is None:
        return None, planner
    curve, cut = measured
    return curve, dataclasses.replace(planner, depth=dataclasses.replace(planner.depth, cut=cut))


def _compose(
    survey: _Survey,
    measured: _Measured,
    position: _Position,
    scores: list[BackboneScore],
    ranking_note: str,
    planner: Planner,
    choice: Choice,
    curve: LearningCurve | None,
    *,
    started: float,
) -> Advice:
    """The estimates, the Advice and its rationale, from every phase's result."""
    matrix_strategy = MATRIX[position.quadrant]
    estimate = planner.seconds(choice.plan, choice.speed)
    estimates = strategy_estimates(
        planner.depth.cut,
        measured.sample.labels,
        survey.num_classes,
        sample_images=len(measured.sample),
        per_class=survey.per_class,
        fine_tune=choice.fine_tune,
        pilot=choice.pilot,
        probe_holdout=choice.probe_holdout,
        fe_seconds=planner.seconds(choice.fe_plan, choice.fe_speed),
        ft_seconds=planner.seconds(choice.ft_plan, choice.ft_speed),
        curve=curve,
        num_val=survey.num_val,
    )
    mine = next(e for e in estimates if e.strategy == choice.strategy)
    advice = Advice(
        quadrant=position.quadrant,
        matrix_strategy=matrix_strategy,
        plan=choice.plan,
        similarity=position.similarity,
        signals=position.signals,
        backbones=scores,
        rationale="",
        small_threshold=survey.threshold,
        estimated_training_seconds=estimate,
        report=survey.report,
        images_per_class=survey.per_class,
        similar=position.similar,
        similarity_backbone=survey.signal_name,
        sample_images=len(measured.sample),
        measure_seconds=time.perf_counter() - started,
        speed=choice.speed,
        depth=planner.depth,
        strategy_estimates=estimates,
        estimated_accuracy=(mine.accuracy_low, mine.accuracy_high),
        similarity_method=SIMILARITY_METHOD,
        similarity_interval=position.interval or (position.similarity, position.similarity),
        similarity_borderline=is_borderline(position.interval),
        similarity_images=position.images,
        pilot=choice.pilot,
        holdout_probe_accuracy=choice.probe_holdout,
    )
    advice.rationale = measured_rationale(
        advice, survey.counts, planner.m.spec, ranking_note, survey.num_train, survey.num_val
    )
    return advice
