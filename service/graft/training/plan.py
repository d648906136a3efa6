"""Training plans: the defaults that fill an incomplete plan, and the checks a plan must pass.

A `TrainingPlan` arrives with zero values meaning "not set" (proto3 has no presence for
scalars). `validate_plan` rejects what is set but wrong, naming each bad field by its request
path (`plan.epochs`); `resolve_plan` fills what is unset, so the stored plan of every job is
complete and says exactly what ran. The rules and their reasons are in docs/TRAINING.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from graft.backbones.spec import PretrainedSpec, feature_grid_problem, feature_stages_problem
from graft.domain import Strategy, TrainingPlan
from graft.errors import FieldViolation, InvalidArgument, NotFound


@dataclass(frozen=True)
class PlanDefaults:
    """What `resolve_plan` puts into unset fields. One place, documented in TRAINING.md."""

    strategy: Strategy = Strategy.PARTIAL_FINE_TUNE
    # Partial fine-tune trains the top 3 stages (of 9 for EfficientNet-Lite0: the last two
    # MBConv groups and the 1x1 head conv); the design's "small K".
    partial_trainable_stages: int = 3
    # The new head starts from random weights and can take a high rate; the pretrained
    # stages take a rate 10x lower (discriminative learning rates) so that the first steps,
    # driven by a random head, do not wreck what they learned.
    head_learning_rate: float = 1e-3
    base_lr_ratio: float = 0.1
    # A linear probe on fixed features has nothing pretrained to protect and converges
    # faster with a higher rate.
    feature_extraction_head_learning_rate: float = 3e-3
    fine_tune_epochs: int = 10
    # Head-only epochs on cached features cost milliseconds each.
    feature_extraction_epochs: int = 30
    # On CPU a bigger batch is not faster per image (DESIGN.md's measurements); large images
    # get 32 to bound activation memory.
    batch_size_small_images: int = 64
    batch_size_large_images: int = 32
    large_image_threshold: int = 160
    min_image_size: int = 64
    image_size_multiple: int = 32
    validation_fraction: float = 0.2
    # Linear warm-up of the learning rate, in epochs, capped at a tenth of the run.
    warmup_epochs: float = 1.0
    warmup_max_fraction: float = 0.1
    # Full fine-tune trains the head alone for one epoch first: gradients from a random head
    # would otherwise flow into every pretrained layer at once.
    full_head_warmup_epochs: int = 1
    fine_tune_weight_decay: float = 0.01
    feature_extraction_weight_decay: float = 0.05


DEFAULTS = PlanDefaults()

# Limits enforced by validate_plan (inclusive unless noted).
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 1024
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_PATIENCE = 1000
MAX_SEED = 2**63 - 1
MAX_VALIDATION_FRACTION = 0.5


def default_image_size(
    spec: PretrainedSpec, median_size: tuple[int, int] | None, defaults: PlanDefaults = DEFAULTS
) -> int:
    """The training resolution when the plan names none.

    Small images are not blown up to the pretraining resolution: the shorter side of the
    dataset's median image, rounded up to a multiple of 32 (the network's total stride), at
    least 64, and never above the backbone's pretraining input size. Fashion-MNIST's 28x28
    gives 64; 500x375 photos give 224 for EfficientNet-Lite0. With no size known: the
    backbone's input size. Compute grows with the square of the side, so this matters: 64 px
    has 12x fewer pixels than 224 px.
    """
    if not median_size or min(median_size) <= 0:
        return spec.input_size
    m = defaults.image_size_multiple
    side = math.ceil(min(median_size) / m) * m
    return min(spec.input_size, max(defaults.min_image_size, side))


def resolve_plan(
    plan: TrainingPlan,
    spec: PretrainedSpec,
    *,
    num_train_images: int,
    median_size: tuple[int, int] | None = None,
    defaults: PlanDefaults = DEFAULTS,
) -> TrainingPlan:
    """Fill every unset (zero) field of `plan` for backbone `spec`.

    Set fields are kept as given. The result passes `validate_plan` when the input did, and
    resolving it again changes nothing. `seed` 0 is a valid seed and stays 0; booleans
    (augmentation, class weighting) and label smoothing / early stopping (0 = off) are kept,
    and so is the feature cut (`feature_stages`; empty = the body's final features) with its
    pooling grid (`feature_grid`; 0 = global pooling, as 1).
    """
    strategy = plan.strategy or defaults.strategy
    fe = strategy == Strategy.FEATURE_EXTRACTION
    num_stages = len(spec.stages)

    if strategy == Strategy.FULL_FINE_TUNE:
        trainable_stages = num_stages
    elif fe:
        trainable_stages = 0
    else:
        trainable_stages = plan.trainable_stages or min(
            defaults.partial_trainable_stages, num_stages
        )

    if fe:
        head_lr = plan.head_learning_rate or defaults.feature_extraction_head_learning_rate
        base_lr = 0.0  # nothing in the base trains
    else:
        head_lr = plan.head_learning_rate or defaults.head_learning_rate
        base_lr = plan.base_learning_rate or head_lr * defaults.base_lr_ratio

    epochs = plan.epochs or (
        defaults.feature_extraction_epochs if fe else defaults.fine_tune_epochs
    )
    image_size = plan.image_size or default_image_size(spec, median_size, defaults)
    if plan.batch_size:
        batch_size = plan.batch_size
    else:
        batch_size = (
            defaults.batch_size_large_images
            if image_size > defaults.large_image_threshold
            else defaults.batch_size_small_images
        )
        # A batch larger than the data set would be one short batch per epoch anyway.
        batch_size = max(2, min(batch_size, num_train_images))

    if plan.warmup_epochs:
        warmup_epochs = plan.warmup_epochs
    elif fe:
        warmup_epochs = 0.0  # a probe on fixed features has nothing to protect
    else:
        warmup_epochs = min(defaults.warmup_epochs, round(defaults.warmup_max_fraction * epochs, 3))

    if plan.head_warmup_epochs or fe:
        head_warmup_epochs = plan.head_warmup_epochs
    elif strategy == Strategy.FULL_FINE_TUNE and epochs > defaults.full_head_warmup_epochs:
        head_warmup_epochs = defaults.full_head_warmup_epochs
    else:
        head_warmup_epochs = 0

    weight_decay = plan.weight_decay or (
        defaults.feature_extraction_weight_decay if fe else defaults.fine_tune_weight_decay
    )

    return dataclasses.replace(
        plan,
        backbone=plan.backbone or spec.name,
        strategy=strategy,
        trainable_stages=trainable_stages,
        head_learning_rate=head_lr,
        base_learning_rate=base_lr,
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        warmup_epochs=warmup_epochs,
        head_warmup_epochs=head_warmup_epochs,
        weight_decay=weight_decay,
        validation_fraction=plan.validation_fraction or defaults.validation_fraction,
        feature_stages=tuple(int(s) for s in plan.feature_stages),
        feature_grid=plan.feature_grid,
    )


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

    if spec is None:
        from graft.backbones import DEFAULT_BACKBONE, get_spec

        try:
            spec = get_spec(plan.backbone or DEFAULT_BACKBONE)
        except NotFound as e:
            bad("backbone", e.message)
    elif plan.backbone and plan.backbone != spec.name:
        bad("backbone", f"plan names {plan.backbone!r} but was checked against {spec.name!r}")

    try:
        strategy = Strategy(plan.strategy)
    except ValueError:
        bad("strategy", f"unknown strategy {int(plan.strategy)}")
        strategy = Strategy.UNSPECIFIED

    if spec is not None:
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

    if v:
        summary = "; ".join(f"{x.field}: {x.description}" for x in v)
        raise InvalidArgument(f"invalid training plan: {summary}", v)
