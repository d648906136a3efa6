"""A plan's defaults: what `resolve_plan` puts into the fields a caller left unset.

A `TrainingPlan` arrives with zero values meaning "not set" (proto3 has no presence for
scalars); `resolve_plan` fills them, so the stored plan of every job is complete and says
exactly what ran. The rules and their reasons are in docs/TRAINING.md § Plan defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from graft.backbones.pretrained import PretrainedSpec
from graft.domain import Quadrant, Strategy, TrainingPlan


@dataclass(frozen=True)
class PlanDefaults:
    """What `resolve_plan` puts into unset fields. One place, documented in TRAINING.md."""

    strategy: Strategy = Strategy.PARTIAL_FINE_TUNE
    # Partial fine-tuning's trainable stages are a rule of the stage count, not a number:
    # default_trainable_stages (below).
    # The new head starts from random weights and can take a high rate; the pretrained
    # stages take a rate 10x lower (discriminative learning rates) so that the first steps,
    # driven by a random head, do not wreck what they learned.
    head_learning_rate: float = 1e-3
    base_lr_ratio: float = 0.1
    # A linear probe on fixed features has nothing pretrained to protect and converges
    # faster with a higher rate.
    feature_extraction_head_learning_rate: float = 3e-3
    fine_tune_epochs: int = 10
    # A head on cached features trains for about this many optimiser steps, in at most
    # `feature_extraction_epochs` epochs and at least `feature_extraction_min_epochs`. 30
    # epochs over 4,000-24,000 feature rows over-fitted: 0.5-1.0 points held-out below this
    # rule on Fashion-MNIST at 500-3,000 per class (docs/TRAINING.md § The head's epochs on
    # cached features).
    feature_extraction_steps: int = 750
    feature_extraction_epochs: int = 30
    feature_extraction_min_epochs: int = 4
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


def default_trainable_stages(num_stages: int, quadrant: Quadrant = Quadrant.UNSPECIFIED) -> int:
    """How many of the top stages partial fine-tuning trains when nothing measured says
    (Advise measures the depth, depth.py, and passes it explicitly). The one rule, for
    resolve_plan and for the advisor's quadrant table alike:

    - "small K" (DESIGN.md: large & similar data, and any plan that names no quadrant): a
      third of the stages, rounded up. EfficientNet-Lite0: 3 of 9 (the last two MBConv
      groups and the 1x1 head conv, the figures in docs/TRAINING.md were measured with it);
      ResNet: 2 of 5 (layer3, layer4).
    - deeper (quadrant 3, small & different: the lower stages' features fit the new data
      worse): half the stages, rounded up, and at least one more than small K.
      EfficientNet-Lite0: 5 of 9; ResNet: 3 of 5.

    Never more than `num_stages`.
    """
    small = max(1, math.ceil(num_stages / 3))
    if quadrant == Quadrant.SMALL_DIFFERENT:
        return min(num_stages, max(small + 1, math.ceil(num_stages / 2)))
    return min(num_stages, small)


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
    head_lr, base_lr = _learning_rates(plan, fe, defaults)
    image_size = plan.image_size or default_image_size(spec, median_size, defaults)
    batch_size = _batch_size(plan, image_size, num_train_images, defaults)
    epochs = plan.epochs or (
        _feature_extraction_epochs(num_train_images, batch_size, defaults)
        if fe
        else defaults.fine_tune_epochs
    )
    weight_decay = plan.weight_decay or (
        defaults.feature_extraction_weight_decay if fe else defaults.fine_tune_weight_decay
    )
    return dataclasses.replace(
        plan,
        backbone=plan.backbone or spec.name,
        strategy=strategy,
        trainable_stages=_trainable_stages(plan, strategy, len(spec.stages)),
        head_learning_rate=head_lr,
        base_learning_rate=base_lr,
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        warmup_epochs=_warmup_epochs(plan, fe, epochs, defaults),
        head_warmup_epochs=_head_warmup_epochs(plan, strategy, epochs, defaults),
        weight_decay=weight_decay,
        validation_fraction=plan.validation_fraction or defaults.validation_fraction,
        feature_stages=tuple(int(s) for s in plan.feature_stages),
        feature_grid=plan.feature_grid,
    )


def _trainable_stages(plan: TrainingPlan, strategy: Strategy, num_stages: int) -> int:
    if strategy == Strategy.FULL_FINE_TUNE:
        return num_stages
    if strategy == Strategy.FEATURE_EXTRACTION:
        return 0
    return plan.trainable_stages or default_trainable_stages(num_stages)


def _learning_rates(plan: TrainingPlan, fe: bool, defaults: PlanDefaults) -> tuple[float, float]:
    """(head, base) learning rates; `fe`: the plan is feature extraction."""
    if fe:
        head_lr = plan.head_learning_rate or defaults.feature_extraction_head_learning_rate
        return head_lr, 0.0  # nothing in the base trains
    head_lr = plan.head_learning_rate or defaults.head_learning_rate
    return head_lr, plan.base_learning_rate or head_lr * defaults.base_lr_ratio


def _feature_extraction_epochs(
    num_train_images: int, batch_size: int, defaults: PlanDefaults
) -> int:
    """Epochs of about `feature_extraction_steps` steps of `batch_size` over
    `num_train_images`, within the feature-extraction bounds."""
    steps_per_epoch = max(1, math.ceil(num_train_images / batch_size))
    epochs = math.ceil(defaults.feature_extraction_steps / steps_per_epoch)
    return min(
        defaults.feature_extraction_epochs, max(defaults.feature_extraction_min_epochs, epochs)
    )


def _batch_size(
    plan: TrainingPlan, image_size: int, num_train_images: int, defaults: PlanDefaults
) -> int:
    if plan.batch_size:
        return plan.batch_size
    batch_size = (
        defaults.batch_size_large_images
        if image_size > defaults.large_image_threshold
        else defaults.batch_size_small_images
    )
    # A batch larger than the data set would be one short batch per epoch anyway.
    return max(2, min(batch_size, num_train_images))


def _warmup_epochs(plan: TrainingPlan, fe: bool, epochs: int, defaults: PlanDefaults) -> float:
    if plan.warmup_epochs:
        return plan.warmup_epochs
    if fe:
        return 0.0  # a probe on fixed features has nothing to protect
    return min(defaults.warmup_epochs, round(defaults.warmup_max_fraction * epochs, 3))


def _head_warmup_epochs(
    plan: TrainingPlan, strategy: Strategy, epochs: int, defaults: PlanDefaults
) -> int:
    if plan.head_warmup_epochs or strategy == Strategy.FEATURE_EXTRACTION:
        return plan.head_warmup_epochs
    if strategy == Strategy.FULL_FINE_TUNE and epochs > defaults.full_head_warmup_epochs:
        return defaults.full_head_warmup_epochs
    return 0
