"""Advise for declared statistics: the matrix's answer and its plan, with nothing measured
(docs/ADVISOR.md). Arithmetic over graft.plans and the backbone catalog: the API answers
such a request itself, so this module loads no training code (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from graft.advisor.advice import SEED, Advice, DeclaredStats
from graft.advisor.signals import Signal
from graft.backbones import PretrainedSpec, get_spec
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.plans import DEFAULTS as PLAN_DEFAULTS
from graft.plans.advised import build_plan
from graft.plans.matrix import (
    MATRIX,
    QUADRANT_WORDS,
    SIMILARITY_THRESHOLD,
    STRATEGY_WORDS,
    is_similar,
    quadrant_for,
)


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
    rationale = declared_rationale(
        stats,
        quadrant=quadrant,
        similar=similar,
        small_threshold=small_threshold,
        plan=plan,
        spec=spec,
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
        similarity_interval=(signal.score, signal.score),  # declared, not sampled
    )


def _validation_count(images_per_class: int, fraction: float) -> int:
    """Validation images per class as graft.data.split_dataset takes them."""
    if images_per_class < 2:
        return 0
    return min(images_per_class - 1, max(1, round(images_per_class * fraction)))


def declared_rationale(
    stats: DeclaredStats,
    *,
    quadrant: Quadrant,
    similar: bool,
    small_threshold: int,
    plan: TrainingPlan,
    spec: PretrainedSpec,
) -> str:
    """The rationale of advise_declared: nothing was measured."""
    size_word = "small" if stats.images_per_class < small_threshold else "large"
    sim_word = "similar" if similar else "different"
    return (
        f"Declared: {stats.num_classes} classes with {stats.images_per_class} images per class "
        f"({'below' if size_word == 'small' else 'at or above'} the small-dataset threshold "
        f"of {small_threshold}: {size_word}), similarity {stats.similarity_hint:.2f} "
        f"({'>=' if similar else '<'} {SIMILARITY_THRESHOLD}: {sim_word}). "
        f"That is {QUADRANT_WORDS[quadrant]}, for which the matrix gives "
        f"{STRATEGY_WORDS[MATRIX[quadrant]]}; the plan follows it. "
        f"{plan_sentence(plan, spec)} Nothing was measured: no backbone ranking, no time "
        f"estimate, and the image size is the backbone's pretraining size because the "
        f"images' size is unknown."
    )


def plan_sentence(plan: TrainingPlan, spec: PretrainedSpec) -> str:
    """The plan in one sentence (the measured rationale ends with it too)."""
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
