"""Advise: where a dataset sits in the size × similarity matrix, measured, and a complete
plan for it (docs/ADVISOR.md)."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.advisor import cancel
from graft.advisor.depth import CUT_GRID, Depth, choose_depth
from graft.advisor.logme import logme
from graft.advisor.measure import (
    SIGNAL_MAX_IMAGES,
    BackboneMeasurement,
    decode_sample,
    measure_backbone,
    needed_short_side,
    select_sample,
    transform_seconds,
)
from graft.advisor.pilot import PilotResult, pilot_fine_tune, time_training_step
from graft.advisor.probe import (
    ProbeResult,
    holdout_probe,
    linear_probe,
    paired_sign_test,
    stratified_folds,
)
from graft.advisor.report import DatasetReportData, dataset_report
from graft.advisor.signals import Signal, combine, measure_signals
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.backbones.spec import PretrainedSpec
from graft.config import Config
from graft.data import ScannedDataset, split_dataset
from graft.data.dataset import DEFAULT_MAX_CACHED_PIXELS
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.errors import FailedPrecondition, FieldViolation, InvalidArgument
from graft.plans import DEFAULTS as PLAN_DEFAULTS
from graft.plans import resolve_plan
from graft.plans.advised import (
    IMBALANCE_CLASS_WEIGHTING,
    Speed,
    build_plan,
    estimate_training_seconds,
)
from graft.plans.matrix import (
    MATRIX,
    QUADRANT_WORDS,
    SIMILARITY_THRESHOLD,
    STRATEGY_WORDS,
    is_similar,
    quadrant_for,
    size_axis,
)

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
# Feature extraction replaces the matrix's fine-tuning on a small dataset when its probe is
# at most this much below the pilot fine-tune's accuracy on the same split (it costs a
# fraction of the time).
FE_MARGIN = 0.01
SIMILARITY_METHOD = (
    "mean of two calibrated scores measured with the default backbone at its pretraining "
    "resolution: imagenet_confidence (mean top-1 softmax probability of the ImageNet "
    "classifier) and batchnorm_shift (distance of the sample's BatchNorm input moments from "
    "the running statistics, which encode ImageNet); 0.5 = halfway between natural photos "
    "and grayscale glyphs (docs/ADVISOR.md)"
)


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
    logme: float = 0.0  # LogME of the final features (You et al. 2021)
    stage_logme: tuple[float, ...] = ()  # LogME of each stage's pooled features


@dataclass(frozen=True)
class StrategyEstimate:
    """What a strategy is expected to reach here, and at what cost."""

    strategy: Strategy
    accuracy_low: float
    accuracy_high: float
    training_seconds: float
    basis: str


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
    depth: Depth | None = None  # the plan's backbone, stage by stage
    strategy_estimates: tuple[StrategyEstimate, ...] = ()
    estimated_accuracy: tuple[float, float] = (0.0, 0.0)  # the plan's, [low, high]
    similarity_method: str = ""
    pilot: PilotResult | None = None
    holdout_probe_accuracy: float = 0.0  # the cut's probe on the pilot's split


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
        max_per_class=max_per_class or config.advise_max_per_class,
        max_images=max_images or config.advise_max_images,
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

    num_classes = len(ds.classes)
    ranked: list[tuple[BackboneScore, ProbeResult]] = []
    for n in names:
        m = measurements[n]
        probe = linear_probe(m.features, sample.labels, num_classes=num_classes, seed=SEED)
        y = torch.as_tensor(sample.labels, dtype=torch.long)
        score = BackboneScore(
            backbone=n,
            probe_accuracy=probe.accuracy,
            params_millions=m.spec.params_millions,
            images_per_second=m.images_per_second,
            probe_accuracy_std=probe.std,
            probe_folds=probe.folds,
            image_size=m.image_size,
            logme=logme(m.features, y, num_classes),
            stage_logme=tuple(logme(f, y, num_classes) for f in m.stage_features),
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
    matrix_strategy = MATRIX[quadrant]

    # Depth: every stage of the chosen backbone probed; the feature cut and how many stages
    # partial fine-tuning unfreezes follow from it (depth.py).
    depth = choose_depth(
        m.stage_features,
        sample.labels,
        num_classes,
        seed=SEED,
        grid_features=m.stage_grid_features,
    )
    last = len(m.spec.stages)
    # The last stage pooled globally is the body's own features: a plan writes it as no cut.
    cut = () if depth.cut.stages == (last,) and depth.cut.grid == 1 else depth.cut.stages

    def plan_for(strategy: Strategy, speed: Speed | None) -> TrainingPlan:
        return build_plan(
            quadrant,
            m.spec,
            num_train=len(train),
            num_val=len(val),
            median_size=median_size,
            imbalance_ratio=report.imbalance_ratio,
            speed=speed,
            seed=SEED,
            strategy=strategy,
            trainable_stages=depth.trainable_stages,
            feature_stages=cut,
            feature_grid=depth.cut.grid,
        )

    eval_seconds = transform_seconds(m.spec, sample, m.image_size, augment=False)
    augment_seconds = transform_seconds(m.spec, sample, m.image_size, augment=True)

    def speed_for(draft: TrainingPlan, timed: bool) -> Speed:
        return Speed(
            images_per_second=m.images_per_second,
            stage_fractions=m.stage_fractions,
            decode_seconds_per_image=sample.decode_seconds_per_image,
            decode_every_epoch=pixels > DEFAULT_MAX_CACHED_PIXELS,
            train_seconds_per_image=time_training_step(
                draft,
                sample,
                num_classes,
                weights_dir=config.weights_dir,
                device=device,
                should_stop=cancel.should_stop,
            )
            if timed
            else 0.0,
            eval_transform_seconds=eval_seconds,
            augment_transform_seconds=augment_seconds,
        )

    # The matrix's fine-tuning strategy, piloted on the sample; frozen features with a
    # linear head, probed on the same split. Feature extraction replaces the matrix's
    # fine-tuning on a small dataset when the probe reaches what the pilot does.
    fine_tune = (
        matrix_strategy if matrix_strategy != Strategy.FEATURE_EXTRACTION else None
    ) or Strategy.PARTIAL_FINE_TUNE
    ft_draft = plan_for(fine_tune, None)
    ft_speed = speed_for(ft_draft, timed=True)
    ft_plan = plan_for(fine_tune, ft_speed)
    fold = stratified_folds(sample.labels, 5, SEED)
    pilot_val = [i for i, f in enumerate(fold) if f == 0]
    pilot_train = [i for i, f in enumerate(fold) if f != 0]
    pilot = pilot_fine_tune(
        ft_plan,
        sample,
        pilot_train,
        pilot_val,
        num_classes,
        weights_dir=config.weights_dir,
        device=device,
        seed=SEED,
        should_stop=cancel.should_stop,
    )
    probe_holdout = holdout_probe(
        depth.cut.features, sample.labels, pilot_train, pilot_val, num_classes=num_classes
    )
    small = per_class < threshold
    strategy = matrix_strategy
    if (
        small
        and matrix_strategy != Strategy.FEATURE_EXTRACTION
        and probe_holdout >= pilot.accuracy - FE_MARGIN
    ):
        strategy = Strategy.FEATURE_EXTRACTION
    fe_plan = plan_for(Strategy.FEATURE_EXTRACTION, None)
    fe_speed = speed_for(fe_plan, timed=False)
    plan = fe_plan if strategy == Strategy.FEATURE_EXTRACTION else ft_plan
    speed = fe_speed if strategy == Strategy.FEATURE_EXTRACTION else ft_speed
    estimate = estimate_training_seconds(plan, speed, num_train=len(train), num_val=len(val))

    # Accuracy ranges: measured on the sample, extended to the dataset's size by the probe's
    # own learning curve (its gain from half the sample to all of it, per doubling).
    gain = _learning_curve_gain(depth.cut.features, sample.labels, num_classes, depth.cut.probe)
    doublings = max(0.0, math.log2(max(1.0, per_class) / max(1.0, len(sample) / num_classes)))
    extra = max(0.0, gain) * doublings
    fe_acc = depth.cut.probe
    estimates = [
        StrategyEstimate(
            Strategy.FEATURE_EXTRACTION,
            max(0.0, fe_acc.accuracy - fe_acc.std),
            min(1.0, fe_acc.accuracy + fe_acc.std + extra),
            estimate_training_seconds(fe_plan, fe_speed, num_train=len(train), num_val=len(val)),
            f"{fe_acc.folds}-fold linear probe of the cut on {len(sample)} sampled images, "
            f"+{100 * gain:.1f} points per doubling of the data for {doublings:.1f} doublings",
        ),
        StrategyEstimate(
            fine_tune,
            *fine_tune_range(pilot.accuracy, pilot.val_images, probe_holdout, extra),
            estimate_training_seconds(ft_plan, ft_speed, num_train=len(train), num_val=len(val)),
            f"pilot: {pilot.epochs} epochs on {pilot.train_images} sampled images, scored on "
            f"{pilot.val_images}, ± its binomial standard error; the probe's learning curve "
            "for the rest of the data",
        ),
    ]
    mine = next(e for e in estimates if e.strategy == strategy)
    advice = Advice(
        quadrant=quadrant,
        matrix_strategy=matrix_strategy,
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
        depth=depth,
        strategy_estimates=tuple(estimates),
        estimated_accuracy=(mine.accuracy_low, mine.accuracy_high),
        similarity_method=SIMILARITY_METHOD,
        pilot=pilot,
        holdout_probe_accuracy=probe_holdout,
    )
    advice.rationale = _rationale(advice, counts, m, ranking_note, len(train), len(val))
    return advice


def fine_tune_range(
    pilot_accuracy: float, pilot_images: int, probe_accuracy: float, extra: float
) -> tuple[float, float]:
    """Accuracy range of a fine-tuning strategy from its pilot: the pilot's accuracy ± its
    binomial standard error on `pilot_images` held-out images, the high end raised by the
    pilot's lead over the probe on the same split and by `extra` (the learning curve's gain
    for the rest of the data). Without the standard error a pilot behind the probe with a
    flat learning curve gave a range of width zero ("74.0% to 74.0%")."""
    p = min(1.0, max(0.0, pilot_accuracy))
    se = math.sqrt(p * (1.0 - p) / pilot_images) if pilot_images > 0 else 0.0
    lead = max(0.0, p - probe_accuracy)
    return max(0.0, p - se), min(1.0, p + max(se, lead + extra))


def _learning_curve_gain(
    features: torch.Tensor, labels: Sequence[int], num_classes: int, full: ProbeResult
) -> float:
    """Probe accuracy gained from half the sample to all of it (both k-fold, same seed);
    `full` is the probe of all of it, already measured."""
    half_idx = [i for i, f in enumerate(stratified_folds(labels, 2, SEED)) if f == 0]
    half_labels = [labels[i] for i in half_idx]
    if min(Counter(half_labels).values()) < 2 or len(set(half_labels)) < num_classes:
        return 0.0
    half = linear_probe(features[half_idx], half_labels, num_classes=num_classes, seed=SEED)
    return full.accuracy - half.accuracy


# --------------------------------------------------------------------------- rationale


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:.1f} points"


def _plan_sentence(plan: TrainingPlan, spec: PretrainedSpec) -> str:
    n = len(spec.stages)
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        where = (
            f" reading stage{'s' if len(plan.feature_stages) > 1 else ''} "
            f"{'+'.join(map(str, plan.feature_stages))}"
            + (
                f" pooled over a {plan.feature_grid}x{plan.feature_grid} grid"
                if plan.feature_grid > 1
                else ""
            )
            if plan.feature_stages
            else ""
        )
        what = f"only a new head on the frozen {spec.name} base{where}"
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
        + "."
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
    depth, pilot = advice.depth, advice.pilot
    if depth is not None:
        stage_text = ", ".join(f"{st.stage}: {_pct(st.probe.accuracy)}" for st in depth.stages)
        cut = depth.cut
        last = len(depth.stages)
        where = (
            "the last stage"
            if cut.stages == (last,)
            else f"stage{'s' if len(cut.stages) > 1 else ''} {'+'.join(map(str, cut.stages))}"
        )
        against = (
            []
            if cut.stages == (last,) and cut.grid == 1
            else [f"{_pct(depth.stages[-1].probe.accuracy)} for the last stage"]
        )
        if cut.grid > 1:
            where += f" pooled over a {cut.grid}x{cut.grid} grid"
            if cut.global_probe is not None:
                against.insert(
                    0, f"{_pct(cut.global_probe.accuracy)} for the best cut pooled globally"
                )
        cut_words = f"{where} ({_pct(cut.probe.accuracy)}" + (
            f", against {' and '.join(against)})" if against else ")"
        )
        grid_words = (
            f", {len(cut.grid_candidates)} of them again pooled over a {CUT_GRID}x{CUT_GRID} grid"
            if cut.grid_candidates
            else ""
        )
        parts.append(
            f"Depth, measured on {m.spec.name}'s pooled stage outputs (linear-probe accuracy "
            f"by stage, {stage_text}): the best single stage is {depth.best_stage}, so "
            f"partial fine-tuning unfreezes the {depth.trainable_stages} stage(s) above it; "
            f"of {len(cut.candidates)} cuts probed (single stages and runs of consecutive "
            f"stages around the best ones{grid_words}), feature extraction reads {cut_words}."
        )
    if pilot is not None:
        lead = advice.holdout_probe_accuracy - pilot.accuracy
        ft = next(e for e in advice.strategy_estimates if e.strategy != Strategy.FEATURE_EXTRACTION)
        verdict = (
            (
                f"the probe beats the pilot by {_points(lead)}"
                if lead > 0
                else f"the probe is within {100 * FE_MARGIN:.0f} point of the pilot"
            )
            + ", so the plan departs from the matrix: feature extraction reaches as much for "
            "a fraction of the time"
            if advice.plan.strategy == Strategy.FEATURE_EXTRACTION
            and advice.matrix_strategy != Strategy.FEATURE_EXTRACTION
            else "the plan follows the matrix"
            + (
                " (the dataset is large: a pilot on a sample cannot show what fine-tuning "
                "gains from all of it)"
                if advice.images_per_class >= advice.small_threshold
                else " (fine-tuning measured better)"
            )
        )
        parts.append(
            f"Measured on one split of the sample ({pilot.train_images} training, "
            f"{pilot.val_images} held-out images): {pilot.epochs} epochs of "
            f"{STRATEGY_WORDS[ft.strategy].split('(')[1].rstrip(')')} reached "
            f"{_pct(pilot.accuracy)} in {pilot.seconds:.0f} s; a linear head on the frozen "
            f"features of the cut reached {_pct(advice.holdout_probe_accuracy)}; {verdict}."
        )
    parts.append(_plan_sentence(advice.plan, m.spec))
    if advice.plan.class_weighting:
        parts.append(
            f"Class weighting because the imbalance ratio {report.imbalance_ratio:.1f} "
            f"exceeds {IMBALANCE_CLASS_WEIGHTING:.0f}."
        )
    low, high = advice.estimated_accuracy
    if high > 0:
        parts.append(f"Expected validation accuracy: {_pct(low)} to {_pct(high)}.")
    parts.append(
        f"Estimated training time on this host: {advice.estimated_training_seconds:.0f} s "
        f"({num_train} training and {num_val} validation images, inference measured at "
        f"{advice.backbones[0].images_per_second:.0f} img/s)."
    )
    return " ".join(parts)
