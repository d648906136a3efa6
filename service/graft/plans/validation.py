"""The checks a plan must pass: `validate_plan` rejects what is set but wrong, naming each
bad field by its request path (`plan.epochs`). Unset (zero) fields are valid: resolve_plan
fills them. The limits and their reasons are in docs/TRAINING.md § Validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from graft.backbones import DEFAULT_BACKBONE, get_spec
from graft.backbones.pretrained import (
    PretrainedSpec,
    feature_grid_problem,
    feature_stages_problem,
)
from graft.domain import Strategy, TrainingPlan
from graft.errors import FieldViolation, InvalidArgument, NotFound

# Limits enforced by validate_plan (inclusive unless noted).
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 1024
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_PATIENCE = 1000
MAX_SEED = 2**63 - 1
MAX_VALIDATION_FRACTION = 0.5


def validate_plan(
    plan: TrainingPlan, spec: PretrainedSpec | None = None, *, prefix: str = "plan"
) -> None:
    """Raise InvalidArgument listing every field of `plan` that is set but out of range.

    Unset (zero) fields are valid: `resolve_plan` fills them. With `spec` None the backbone
    is looked up in the catalog (`plan.backbone`, or the default when empty) and an unknown
    name is a violation of `plan.backbone`. `prefix` is the field path of the plan in the
    request.
    """
    v: list[FieldViolation] = []

    def bad(name: str, description: str) -> None:
        v.append(FieldViolation(f"{prefix}.{name}", description))

    spec = _check_backbone(plan, spec, bad)
    strategy = _check_strategy(plan, bad)
    if spec is not None:
        _check_trainable_stages(plan, spec, strategy, bad)
    _check_feature_cut(plan, spec, strategy, bad)
    _check_sizes(plan, bad)
    _check_optimisation(plan, strategy, bad)
    _check_schedule(plan, strategy, bad)

    if v:
        summary = "; ".join(f"{x.field}: {x.description}" for x in v)
        raise InvalidArgument(f"invalid training plan: {summary}", v)


# Each check below reports what it finds through `bad(field name, description)`, in the
# order the fields are listed in the error.
_Bad = Callable[[str, str], None]


def _check_backbone(
    plan: TrainingPlan, spec: PretrainedSpec | None, bad: _Bad
) -> PretrainedSpec | None:
    """The spec the plan is checked against (None: an unknown backbone, reported)."""
    if spec is None:
        try:
            spec = get_spec(plan.backbone or DEFAULT_BACKBONE)
        except NotFound as e:
            bad("backbone", e.message)
    elif plan.backbone and plan.backbone != spec.name:
        bad("backbone", f"plan names {plan.backbone!r} but was checked against {spec.name!r}")
    return spec


def _check_strategy(plan: TrainingPlan, bad: _Bad) -> Strategy:
    """The plan's strategy (UNSPECIFIED for an unknown one, reported)."""
    try:
        return Strategy(plan.strategy)
    except ValueError:
        bad("strategy", f"unknown strategy {int(plan.strategy)}")
        return Strategy.UNSPECIFIED


def _check_trainable_stages(
    plan: TrainingPlan, spec: PretrainedSpec, strategy: Strategy, bad: _Bad
) -> None:
    n = len(spec.stages)
    k = plan.trainable_stages
    if k < 0:
        bad("trainable_stages", f"must be >= 0, got {k}")
    elif strategy == Strategy.FEATURE_EXTRACTION and k != 0:
        bad(
            "trainable_stages",
            "feature extraction trains only the head; leave trainable_stages 0",
        )
    elif strategy == Strategy.FULL_FINE_TUNE and k not in (0, n):
        bad(
            "trainable_stages",
            f"full fine-tune trains all {n} stages of {spec.name}; leave it 0 or set {n}",
        )
    elif k > n:
        bad("trainable_stages", f"{spec.name} has {n} stages, got {k}")


def _check_feature_cut(
    plan: TrainingPlan, spec: PretrainedSpec | None, strategy: Strategy, bad: _Bad
) -> None:
    """`feature_stages` and `feature_grid`: feature extraction's cut and its pooling."""
    if plan.feature_stages:
        if strategy != Strategy.FEATURE_EXTRACTION:
            bad(
                "feature_stages",
                "only feature extraction reads features from chosen stages; leave it empty "
                "or set strategy FEATURE_EXTRACTION",
            )
        elif spec is not None:
            problem = feature_stages_problem(spec, plan.feature_stages)
            if problem:
                bad("feature_stages", problem)

    if plan.feature_grid > 1 and strategy != Strategy.FEATURE_EXTRACTION:
        bad(
            "feature_grid",
            "only feature extraction pools a feature cut over a grid; leave it 0 or set "
            "strategy FEATURE_EXTRACTION",
        )
    elif plan.feature_grid:
        problem = feature_grid_problem(plan.feature_grid, plan.feature_stages)
        if problem:
            bad("feature_grid", problem)


def _check_sizes(plan: TrainingPlan, bad: _Bad) -> None:
    """`epochs`, `batch_size`, `image_size`."""
    if not 0 <= plan.epochs <= MAX_EPOCHS:
        bad("epochs", f"must be between 1 and {MAX_EPOCHS} (0 = default), got {plan.epochs}")
    if not 0 <= plan.batch_size <= MAX_BATCH_SIZE:
        bad(
            "batch_size",
            f"must be between 1 and {MAX_BATCH_SIZE} (0 = default), got {plan.batch_size}",
        )
    elif plan.batch_size == 1:
        bad("batch_size", "must be at least 2 (BatchNorm needs more than one image per batch)")
    if plan.image_size != 0 and not MIN_IMAGE_SIZE <= plan.image_size <= MAX_IMAGE_SIZE:
        bad(
            "image_size",
            f"must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels (0 = default), "
            f"got {plan.image_size}",
        )


def _check_optimisation(plan: TrainingPlan, strategy: Strategy, bad: _Bad) -> None:
    """Learning rates, weight decay, label smoothing."""
    for name in ("head_learning_rate", "base_learning_rate"):
        lr = getattr(plan, name)
        if not (lr == 0 or 0 < lr < 1) or math.isnan(lr):
            bad(name, f"must be in (0, 1) (0 = default), got {lr}")
    if strategy == Strategy.FEATURE_EXTRACTION and plan.base_learning_rate:
        bad("base_learning_rate", "feature extraction trains no base layer; leave it 0")
    if not 0 <= plan.weight_decay < 1 or math.isnan(plan.weight_decay):
        bad("weight_decay", f"must be in [0, 1) (0 = default), got {plan.weight_decay}")
    if not 0 <= plan.label_smoothing < 1 or math.isnan(plan.label_smoothing):
        bad("label_smoothing", f"must be in [0, 1), got {plan.label_smoothing}")


def _check_schedule(plan: TrainingPlan, strategy: Strategy, bad: _Bad) -> None:
    """Validation fraction, early stopping, seed, and the two warm-ups."""
    vf = plan.validation_fraction
    if (vf != 0 and not 0 < vf <= MAX_VALIDATION_FRACTION) or math.isnan(vf):
        bad(
            "validation_fraction",
            f"must be in (0, {MAX_VALIDATION_FRACTION}] (0 = default), got {vf}",
        )
    if not 0 <= plan.early_stopping_patience <= MAX_PATIENCE:
        bad(
            "early_stopping_patience",
            f"must be between 0 (off) and {MAX_PATIENCE}, got {plan.early_stopping_patience}",
        )
    if not 0 <= plan.seed <= MAX_SEED:
        bad("seed", f"must be between 0 and 2^63-1, got {plan.seed}")
    if plan.warmup_epochs < 0 or math.isnan(plan.warmup_epochs):
        bad("warmup_epochs", f"must be >= 0, got {plan.warmup_epochs}")
    elif plan.epochs > 0 and plan.warmup_epochs > plan.epochs:
        bad("warmup_epochs", f"must not exceed epochs ({plan.epochs}), got {plan.warmup_epochs}")
    hw = plan.head_warmup_epochs
    if hw < 0:
        bad("head_warmup_epochs", f"must be >= 0, got {hw}")
    elif hw and strategy == Strategy.FEATURE_EXTRACTION:
        bad("head_warmup_epochs", "feature extraction trains only the head; leave it 0")
    elif hw and plan.epochs > 0 and hw >= plan.epochs:
        bad(
            "head_warmup_epochs",
            f"must be less than epochs ({plan.epochs}) so the base trains at all, got {hw}",
        )
