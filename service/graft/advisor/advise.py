"""Advise: where a dataset sits in the size × similarity matrix, measured, and a complete
plan for it (docs/ADVISOR.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.advisor.matrix import (
    MATRIX,
    QUADRANT_WORDS,
    SIMILARITY_THRESHOLD,
    STRATEGY_WORDS,
    is_similar,
    quadrant_for,
    size_axis,
)
from graft.advisor.measure import (
    SIGNAL_MAX_IMAGES,
    BackboneMeasurement,
    decode_sample,
    measure_backbone,
    needed_short_side,
    select_sample,
    time_training_step,
    transform_seconds,
)
from graft.advisor.planning import (
    IMBALANCE_CLASS_WEIGHTING,
    Speed,
    build_plan,
    estimate_training_seconds,
    imbalance_ratio,
)
from graft.advisor.probe import ProbeResult, linear_probe, paired_sign_test
from graft.advisor.signals import Signal, combine, measure_signals
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.backbones.spec import PretrainedSpec
from graft.config import Config
from graft.data import ScannedDataset, split_dataset
from graft.data.dataset import DEFAULT_MAX_CACHED_PIXELS
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.errors import FailedPrecondition, FieldViolation, InvalidArgument
from graft.training.plan import DEFAULTS as PLAN_DEFAULTS
from graft.training.plan import resolve_plan

log = logging.getLogger(__name__)

# Without an explicit list, Advise measures the default backbone and the lightest other
# backbones whose weights are here, this many in all; an explicit list may name up to
# MAX_CANDIDATES.
DEFAULT_MAX_CANDIDATES = 3
MAX_CANDIDATES = 6
SKIPPED_EXAMPLES = 5
SEED = 0
# A slower backbone is chosen over a faster one only when its probe is better with a
# one-sided sign-test p-value below this.
SIGNIFICANCE = 0.05
# Measured speeds closer than this factor count as a tie (see _rank).
SPEED_TIE = 1.25


@dataclass(frozen=True)
class DeclaredStats:
    """Statistics a caller states instead of sending the data."""

    num_classes: int
    images_per_class: int
    similarity_hint: float  # in [0, 1]; at least 0.5 counts as similar


@dataclass(frozen=True)
class BackboneScore:
    """Measured transferability of one candidate (best first in Advice.backbones)."""

    backbone: str
    probe_accuracy: float  # k-fold linear-probe accuracy on frozen features of the sample
    params_millions: float
    images_per_second: float  # inference on this host at the plan's image size
    probe_accuracy_std: float = 0.0  # spread over the folds
    probe_folds: int = 0
    image_size: int = 0


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


@dataclass
class Advice:
    """Advise's answer. `plan` is complete: StartFineTune accepts it unchanged."""

    quadrant: Quadrant
    matrix_strategy: Strategy
    plan: TrainingPlan
    similarity: float
    signals: list[Signal]
    backbones: list[BackboneScore]
    rationale: str
    small_threshold: int
    estimated_training_seconds: float
    report: DatasetReportData | None
    images_per_class: float = 0.0  # the size axis: median images per class
    similar: bool = False
    similarity_backbone: str = ""  # the network the signals were measured with
    sample_images: int = 0  # images decoded and measured
    measure_seconds: float = 0.0
    # The plan's backbone as measured here: recompute the estimate for a changed plan with
    # planning.estimate_training_seconds(plan, speed, ...).
    speed: Speed | None = None


# --------------------------------------------------------------------------- declared


def _validation_count(images_per_class: int, fraction: float) -> int:
    """Validation images per class as graft.data.split_dataset takes them."""
    if images_per_class < 2:
        return 0
    return min(images_per_class - 1, max(1, round(images_per_class * fraction)))


def advise_declared(stats: DeclaredStats, *, small_threshold: int, backbone: str) -> Advice:
    """The matrix's answer for declared statistics, without measuring anything: similar iff
    similarity_hint >= 0.5, small iff images_per_class < small_threshold."""
    spec = get_spec(backbone)
    similar = is_similar(stats.similarity_hint)
    quadrant = quadrant_for(stats.images_per_class, similar, small_threshold)
    val_per_class = _validation_count(stats.images_per_class, PLAN_DEFAULTS.validation_fraction)
    num_val = stats.num_classes * val_per_class
    num_train = stats.num_classes * stats.images_per_class - num_val
    plan = build_plan(
        quadrant,
        spec,
        num_train=num_train,
        num_val=num_val,
        median_size=None,
        imbalance_ratio=1.0,
        seed=SEED,
    )
    signal = Signal(
        name="declared_similarity",
        value=stats.similarity_hint,
        score=min(1.0, max(0.0, stats.similarity_hint)),
        description="similarity to ImageNet declared by the caller, not measured",
    )
    size_word = "small" if stats.images_per_class < small_threshold else "large"
    sim_word = "similar" if similar else "different"
    rationale = (
        f"Declared: {stats.num_classes} classes with {stats.images_per_class} images per class "
        f"({'below' if size_word == 'small' else 'at or above'} the small-dataset threshold "
        f"of {small_threshold}: {size_word}), similarity {stats.similarity_hint:.2f} "
        f"({'>=' if similar else '<'} {SIMILARITY_THRESHOLD}: {sim_word}). "
        f"That is {QUADRANT_WORDS[quadrant]}, for which the matrix gives "
        f"{STRATEGY_WORDS[MATRIX[quadrant]]}; the plan follows it. "
        f"{_plan_sentence(plan, spec)} Nothing was measured: no backbone ranking, no time "
        f"estimate, and the image size is the backbone's pretraining size because the "
        f"images' size is unknown."
    )
    return Advice(
        quadrant=quadrant,
        matrix_strategy=MATRIX[quadrant],
        plan=plan,
        similarity=signal.score,
        signals=[signal],
        backbones=[],
        rationale=rationale,
        small_threshold=small_threshold,
        estimated_training_seconds=0.0,
        report=None,
        images_per_class=float(stats.images_per_class),
        similar=similar,
    )


# --------------------------------------------------------------------------- measured


def resolve_candidates(candidates: Sequence[str], weights_dir: Path | None) -> list[str]:
    """The backbones to measure, in order. Explicit names must be known (InvalidArgument on
    `candidate_backbones`) and have their weights here (FailedPrecondition, saying how to
    provide them). Without names: the default backbone, then the lightest others whose
    weights are here, DEFAULT_MAX_CANDIDATES in all."""
    statuses = {s.name: s for s in backbone_statuses(weights_dir)}
    if candidates:
        names = list(dict.fromkeys(candidates))
        unknown = [n for n in names if n not in statuses]
        if unknown:
            known = ", ".join(statuses)
            raise InvalidArgument(
                f"candidate_backbones: unknown backbone(s) {', '.join(map(repr, unknown))}",
                [
                    FieldViolation("candidate_backbones", f"unknown backbone {n!r}; known: {known}")
                    for n in unknown
                ],
            )
        if len(names) > MAX_CANDIDATES:
            raise InvalidArgument.of(
                "candidate_backbones",
                f"at most {MAX_CANDIDATES} backbones per request (each is measured), "
                f"got {len(names)}",
            )
        missing = [statuses[n] for n in names if not statuses[n].ready]
        if missing:
            raise FailedPrecondition(
                "no pretrained weights on this host for candidate backbone(s) "
                + "; ".join(f"{s.name!r} ({s.weights})" for s in missing)
            )
        return names
    ready = [s for s in statuses.values() if s.ready]
    if not ready:
        raise FailedPrecondition(
            "no backbone has its pretrained weights on this host; provide the default's: "
            + statuses[DEFAULT_BACKBONE].weights
        )
    ready.sort(key=lambda s: (s.name != DEFAULT_BACKBONE, s.params_millions))
    return [s.name for s in ready[:DEFAULT_MAX_CANDIDATES]]


def _report(ds: ScannedDataset) -> DatasetReportData:
    counts = ds.counts()
    return DatasetReportData(
        classes=tuple(counts.items()),
        total_images=len(ds.samples),
        skipped_files=len(ds.skipped),
        skipped_examples=tuple(f"{p}: {r}" for p, r in ds.skipped[:SKIPPED_EXAMPLES]),
        imbalance_ratio=imbalance_ratio(list(counts.values())),
        median_width=int(ds.median_size[0]),
        median_height=int(ds.median_size[1]),
        fingerprint=ds.fingerprint,
    )


def _rank(by_probe: list[tuple[BackboneScore, ProbeResult]]) -> tuple[list[BackboneScore], str]:
    """The ranking Advise reports (best first; the plan uses the first) and a sentence on
    why the first is first.

    `by_probe` is sorted by probe accuracy. A candidate whose probe is not significantly
    worse than the top one's (exact one-sided sign test on the images exactly one of the
    two gets right — same images, same folds — p >= SIGNIFICANCE) is tied with it: the gap
    is noise on a sample this size. Among the tied, the fastest ranks first (it trains and
    serves for less); speeds within SPEED_TIE of each other count as equal (timings on a
    shared host move by more than that), and then the default backbone, else the better
    probe, goes first. Everyone else keeps probe order."""
    top, top_probe = by_probe[0]
    tests = {s.backbone: paired_sign_test(top_probe, p) for s, p in by_probe}
    tied = [s for s, _ in by_probe if s is top or tests[s.backbone][2] >= SIGNIFICANCE]
    fastest = max(s.images_per_second for s in tied)
    quick = [s for s in tied if s.images_per_second * SPEED_TIE >= fastest]
    default = [s for s in quick if s.backbone == DEFAULT_BACKBONE]
    first = default[0] if default else quick[0]
    order = [first] + [s for s, _ in by_probe if s is not first]
    if first is top:
        return order, f"{first.backbone} has the best probe."
    wins, losses, p = tests[first.backbone]
    speed = (
        f"is faster ({first.images_per_second:.0f} vs {top.images_per_second:.0f} img/s)"
        if first.images_per_second >= top.images_per_second * SPEED_TIE
        else "is the default and about as fast"
    )
    return order, (
        f"{top.backbone} probes highest, but its lead over {first.backbone} is not "
        f"significant (sign test: right on {wins} images the other missed, wrong on "
        f"{losses} it got, p = {p:.2f} >= {SIGNIFICANCE}) and {first.backbone} {speed}, "
        f"so {first.backbone} ranks first."
    )


def advise_dataset(
    ds: ScannedDataset,
    *,
    config: Config,
    candidates: Sequence[str] = (),
    small_threshold: int | None = None,
    device: torch.device | str = "cpu",
) -> Advice:
    """Measure `ds` and advise.

    The size axis counts the whole scanned dataset. Everything else is measured on a
    seeded, stratified sample of at most `config.advise_max_per_class` images per class and
    `config.advise_max_images` in all, decoded once; each candidate's pretrained network
    runs over it once, yielding its features (linear probe), its speed (time estimate) and,
    for the default backbone, the similarity signals."""
    started = time.perf_counter()
    threshold = small_threshold or config.small_dataset_threshold
    if threshold <= 0:
        raise InvalidArgument.of("small_dataset_threshold", f"must be positive, got {threshold}")
    names = resolve_candidates(candidates, config.weights_dir)
    ready = {s.name for s in backbone_statuses(config.weights_dir) if s.ready}
    signal_name = DEFAULT_BACKBONE if DEFAULT_BACKBONE in ready else names[0]

    report = _report(ds)
    counts = [c for _, c in report.classes]
    per_class = size_axis(counts)
    train, val = split_dataset(ds, PLAN_DEFAULTS.validation_fraction, SEED)
    median_size = (report.median_width, report.median_height)

    # Image and batch size each backbone would train at (resolve_plan's rules).
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

    picked = select_sample(
        ds.samples,
        max_per_class=config.advise_max_per_class,
        max_images=config.advise_max_images,
        seed=SEED,
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

    num_classes = len(ds.classes)
    ranked: list[tuple[BackboneScore, ProbeResult]] = []
    for n in names:
        m = measurements[n]
        probe = linear_probe(m.features, sample.labels, num_classes=num_classes, seed=SEED)
        score = BackboneScore(
            backbone=n,
            probe_accuracy=probe.accuracy,
            params_millions=m.spec.params_millions,
            images_per_second=m.images_per_second,
            probe_accuracy_std=probe.std,
            probe_folds=probe.folds,
            image_size=m.image_size,
        )
        ranked.append((score, probe))
    ranked.sort(key=lambda sp: (-sp[0].probe_accuracy, -sp[0].images_per_second))
    scores, ranking_note = _rank(ranked)
    chosen = scores[0]

    response = measurements[signal_name].response
    assert response is not None
    signals = measure_signals(response)
    similarity = combine(signals)
    similar = is_similar(similarity)
    quadrant = quadrant_for(per_class, similar, threshold)

    m = measurements[chosen.backbone]
    pixels = report.total_images * report.median_width * report.median_height

    def plan_for(speed: Speed | None) -> TrainingPlan:
        return build_plan(
            quadrant,
            m.spec,
            num_train=len(train),
            num_val=len(val),
            median_size=median_size,
            imbalance_ratio=report.imbalance_ratio,
            speed=speed,
            seed=SEED,
        )

    # The draft fixes strategy, stages, batch and image size; its training step is timed,
    # and the final plan's epochs then fit the time budget at that speed.
    draft = plan_for(None)
    speed = Speed(
        images_per_second=m.images_per_second,
        stage_fractions=m.stage_fractions,
        decode_seconds_per_image=sample.decode_seconds_per_image,
        decode_every_epoch=pixels > DEFAULT_MAX_CACHED_PIXELS,
        train_seconds_per_image=time_training_step(
            draft, sample, num_classes, weights_dir=config.weights_dir, device=device
        ),
        eval_transform_seconds=transform_seconds(m.spec, sample, m.image_size, augment=False),
        augment_transform_seconds=transform_seconds(m.spec, sample, m.image_size, augment=True),
    )
    plan = plan_for(speed)
    estimate = estimate_training_seconds(plan, speed, num_train=len(train), num_val=len(val))
    advice = Advice(
        quadrant=quadrant,
        matrix_strategy=MATRIX[quadrant],
        plan=plan,
        similarity=similarity,
        signals=signals,
        backbones=scores,
        rationale="",
        small_threshold=threshold,
        estimated_training_seconds=estimate,
        report=report,
        images_per_class=per_class,
        similar=similar,
        similarity_backbone=signal_name,
        sample_images=len(sample),
        measure_seconds=time.perf_counter() - started,
        speed=speed,
    )
    advice.rationale = _rationale(advice, counts, m, ranking_note, len(train), len(val))
    return advice


# --------------------------------------------------------------------------- rationale


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _plan_sentence(plan: TrainingPlan, spec: PretrainedSpec) -> str:
    n = len(spec.stages)
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        what = f"only a new head on the frozen {spec.name} base"
    elif plan.strategy == Strategy.FULL_FINE_TUNE:
        what = f"all {n} stages of {spec.name} and a new head"
    else:
        what = f"the top {plan.trainable_stages} of {n} stages of {spec.name} and a new head"
    return (
        f"The plan trains {what} at {plan.image_size} px for up to {plan.epochs} epochs, "
        f"batch {plan.batch_size}, augmentation {'on' if plan.augmentation else 'off'}, "
        f"class weighting {'on' if plan.class_weighting else 'off'}."
    )


def _rationale(
    advice: Advice,
    counts: list[int],
    m: BackboneMeasurement,
    ranking_note: str,
    num_train: int,
    num_val: int,
) -> str:
    q = advice.quadrant
    threshold = advice.small_threshold
    small = advice.images_per_class < threshold
    report = advice.report
    assert report is not None
    per_class = advice.images_per_class
    per_class_text = f"{per_class:.0f}" if per_class == int(per_class) else f"{per_class:.1f}"
    parts = [
        f"{len(counts)} classes, {report.total_images} images: a median of {per_class_text} "
        f"images per class (smallest {min(counts)}, largest {max(counts)}), "
        f"{'below' if small else 'at or above'} the small-dataset threshold of {threshold}: "
        f"{'small' if small else 'large'}."
    ]
    signal_text = ", ".join(f"{s.name} {s.value:.3f} (score {s.score:.2f})" for s in advice.signals)
    response_size = get_spec(advice.similarity_backbone).input_size
    parts.append(
        f"Similarity to ImageNet, measured with {advice.similarity_backbone} at "
        f"{response_size} px on {min(SIGNAL_MAX_IMAGES, advice.sample_images)} sampled images: "
        f"{signal_text}; combined {advice.similarity:.2f} "
        f"({'>=' if advice.similar else '<'} {SIMILARITY_THRESHOLD}: "
        f"{'similar' if advice.similar else 'different'})."
    )
    parts.append(
        f"That is {QUADRANT_WORDS[q]}, for which the matrix gives "
        f"{STRATEGY_WORDS[MATRIX[q]]}"
        + (" plus data augmentation" if q == Quadrant.SMALL_DIFFERENT else "")
        + "; this version always follows the matrix."
    )
    ranking = ", ".join(
        f"{s.backbone} {_pct(s.probe_accuracy)} ± {_pct(s.probe_accuracy_std)} "
        f"({s.images_per_second:.0f} img/s at {s.image_size} px)"
        for s in advice.backbones
    )
    parts.append(
        f"Backbones ranked, with their {advice.backbones[0].probe_folds}-fold linear-probe "
        f"accuracy on frozen features of {advice.sample_images} sampled images: {ranking}. "
        + ranking_note
    )
    parts.append(_plan_sentence(advice.plan, m.spec))
    if advice.plan.class_weighting:
        parts.append(
            f"Class weighting because the imbalance ratio {report.imbalance_ratio:.1f} "
            f"exceeds {IMBALANCE_CLASS_WEIGHTING:.0f}."
        )
    parts.append(
        f"Estimated training time on this host: {advice.estimated_training_seconds:.0f} s "
        f"({num_train} training and {num_val} validation images, inference measured at "
        f"{advice.backbones[0].images_per_second:.0f} img/s)."
    )
    return " ".join(parts)
