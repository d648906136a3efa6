"""The advisor's plan rules: from a quadrant to a complete TrainingPlan, and the plan's
estimated training time. Torch-free, like the rest of graft.plans.

The rules (docs/ADVISOR.md § Plan rules):

- strategy: the matrix's, unless Advise passes a measured departure (graft.advisor.advise);
- trainable stages: all for full fine-tune; for partial fine-tuning the measured depth
  (graft.advisor.depth: the stages above the most transferable one) when Advise measured
  it, else defaults.default_trainable_stages for the quadrant — the same rule resolve_plan
  applies to a plan without stages ("small K", and deeper for quadrant 3); 0 for feature
  extraction, which reads the measured feature cut;
- augmentation on in quadrant 3 only (the matrix's "plus data augmentation"); class
  weighting on when the largest class has more than IMBALANCE_CLASS_WEIGHTING (3) times the
  images of the smallest;
- epochs: enough for about TARGET_OPTIMIZER_STEPS steps (between MIN_FINE_TUNE_EPOCHS and
  MAX_FINE_TUNE_EPOCHS) but no more than fit TIME_BUDGET_SECONDS at the measured speed (at
  least MIN_FINE_TUNE_EPOCHS); early stopping after EARLY_STOPPING_PATIENCE epochs;
- everything else (learning rates, batch size, image size, warm-up, weight decay,
  validation fraction) from defaults.resolve_plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from graft.backbones.pretrained import PretrainedSpec
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.plans.defaults import default_trainable_stages, resolve_plan
from graft.plans.matrix import MATRIX
from graft.plans.validation import validate_plan

IMBALANCE_CLASS_WEIGHTING = 3.0
# Fine-tuning runs for about this many optimiser steps (at least MIN_FINE_TUNE_EPOCHS, at
# most MAX_FINE_TUNE_EPOCHS epochs). Measured on Fashion-MNIST 1000/class (8000 training
# images, 125 steps per epoch, full fine-tune at 64 px): 10 epochs reached 91.7% held-out in
# 356 s, 4 epochs (500 steps) 90.1% in 133 s — 98% of the accuracy in 37% of the time.
TARGET_OPTIMIZER_STEPS = 500
MIN_FINE_TUNE_EPOCHS = 3
MAX_FINE_TUNE_EPOCHS = 30
TIME_BUDGET_SECONDS = 3600.0
EARLY_STOPPING_PATIENCE = 3
# A training step (forward in train mode + backward + AdamW) costs about 3 forward passes on
# top of the forward itself: DESIGN.md measured 1188 img/s inference vs 288 img/s training
# of the full EfficientNet-Lite0 at 64 px on this machine's 2 cores (4.1x).
BACKWARD_COST = 3.0


@dataclass(frozen=True)
class Speed:
    """What the estimate needs from a measurement of the plan's backbone on this host."""

    images_per_second: float  # inference at the plan's image size and batch size
    stage_fractions: tuple[float, ...]  # share of forward time per stage, input side first
    decode_seconds_per_image: float = 0.0
    # One optimisation step of the plan, measured, per image; 0: not measured, then
    # c · (1 + BACKWARD_COST · f) stands in for it.
    train_seconds_per_image: float = 0.0
    # Preprocessing per image (PIL resize/crop, tensor conversion), serial in the worker.
    eval_transform_seconds: float = 0.0
    augment_transform_seconds: float = 0.0
    # The worker keeps decoded images in memory up to a pixel budget; above it, every epoch
    # decodes them again.
    decode_every_epoch: bool = False
    # Measured once per run, not per image: building the model with its pretrained
    # weights, and writing one epoch's checkpoint.
    build_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    # Feature extraction: one epoch of the head on cached features, per image.
    head_seconds_per_image: float = 0.0
    # Partial fine-tuning without augmentation runs the frozen stages once and trains on
    # their outputs (graft.training.prefix): true for bodies that are the plain sequence of
    # their stages, which the training checks (the planner sets it for timm's).
    frozen_once: bool = False

    def trainable_fraction(self, trainable_stages: int) -> float:
        if trainable_stages <= 0:
            return 0.0
        return min(1.0, sum(self.stage_fractions[-trainable_stages:]))


def runs_frozen_stages_once(spec: PretrainedSpec) -> bool:
    """Whether partial fine-tuning without augmentation runs `spec`'s frozen stages once
    (`Speed.frozen_once`). The training checks the body on real images before it does
    (graft.training.prefix.split); the estimate, which builds no network, goes by its
    architecture: timm's bodies are the sequence of their stages with a pooling of their
    own, torchvision's have none (a test checks this on every catalogued backbone)."""
    return spec.architecture.startswith("timm:")


def estimate_training_seconds(
    plan: TrainingPlan, speed: Speed, *, num_train: int, num_val: int
) -> float:
    """Seconds the plan should take on the host it was measured on (an upper bound: early
    stopping may end it sooner). Per image: c = 1 / inference images/s, s = one measured
    training step of this plan (forward, backward through the trainable part, AdamW),
    p = evaluation preprocessing and a = training preprocessing (with augmentation when the
    plan has it):

    - feature extraction: one forward pass over every image (features cached) plus head
      epochs on cached features, which are negligible: (n_train + n_val) · (c + p);
    - fine-tuning: per epoch n_train · (s + a) for training and n_val · (c + p) for
      validation; full fine-tune's head-warm-up epochs train at about c per image. Without
      a measured s, c · (1 + 3f) with f = the trainable stages' share of forward time;
    - plus decoding: n · d (d = decode time per image measured on the sample), once, or
      once per epoch when the dataset is too big for the worker's decoded-image cache;
    - plus building the model (b) once and a checkpoint (k) every epoch, and for feature
      extraction the head's epochs on cached features (h per image per epoch). Without
      them the estimate was half the real time (docs/ADVISOR.md);
    - partial fine-tuning without augmentation on a body whose frozen stages run once
      (`speed.frozen_once`): those stages' share F of the forward time, once per image,
      (n_train + n_val) · (c·F + p); then per epoch n_train · (s − c·F) for training and
      n_val · c · (1 − F) for validation, with no preprocessing.
    """
    if speed.images_per_second <= 0:
        return 0.0
    c = 1.0 / speed.images_per_second
    p = speed.eval_transform_seconds
    a = speed.augment_transform_seconds if plan.augmentation else p
    decode = (num_train + num_val) * speed.decode_seconds_per_image
    fixed = speed.build_seconds + max(1, plan.epochs) * speed.checkpoint_seconds
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        head = plan.epochs * (num_train + num_val) * speed.head_seconds_per_image
        return (num_train + num_val) * (c + p) + decode + fixed + head
    if speed.decode_every_epoch:
        decode *= max(1, plan.epochs)
    step = speed.train_seconds_per_image or c * (
        1 + BACKWARD_COST * speed.trainable_fraction(plan.trainable_stages)
    )
    warm = min(plan.head_warmup_epochs, plan.epochs)
    if speed.frozen_once and plan.strategy == Strategy.PARTIAL_FINE_TUNE and not plan.augmentation:
        kept = speed.trainable_fraction(plan.trainable_stages)  # 1 - F
        once = (num_train + num_val) * (c * (1.0 - kept) + p)
        train = (plan.epochs - warm) * num_train * max(step - c * (1.0 - kept), c * kept)
        train += warm * num_train * c * kept
        return once + train + plan.epochs * num_val * c * kept + decode + fixed
    train = (plan.epochs - warm) * num_train * (step + a)
    train += warm * num_train * (c + a)
    return train + plan.epochs * num_val * (c + p) + decode + fixed


def _epochs(
    strategy: Strategy, num_train: int, batch_size: int, epoch_seconds: float | None
) -> int:
    if strategy == Strategy.FEATURE_EXTRACTION:
        return 0  # resolve_plan's rule: about 750 steps of the head on cached features
    steps_per_epoch = max(1, math.ceil(num_train / max(1, batch_size)))
    epochs = math.ceil(TARGET_OPTIMIZER_STEPS / steps_per_epoch)
    epochs = min(MAX_FINE_TUNE_EPOCHS, max(MIN_FINE_TUNE_EPOCHS, epochs))
    if epoch_seconds and epoch_seconds > 0:
        epochs = min(epochs, max(MIN_FINE_TUNE_EPOCHS, int(TIME_BUDGET_SECONDS // epoch_seconds)))
    return epochs


def build_plan(
    quadrant: Quadrant,
    spec: PretrainedSpec,
    *,
    num_train: int,
    num_val: int,
    median_size: tuple[int, int] | None,
    imbalance_ratio: float,
    speed: Speed | None = None,
    seed: int = 0,
    strategy: Strategy | None = None,
    trainable_stages: int | None = None,
    feature_stages: tuple[int, ...] = (),
    feature_grid: int = 0,
) -> TrainingPlan:
    """A complete plan (every field set; validate_plan accepts it) for `quadrant`; with
    `strategy`, `trainable_stages` or `feature_stages` (with its pooling `feature_grid`),
    those (measured) choices instead of the matrix's defaults."""
    strategy = strategy or MATRIX[quadrant]
    fe = strategy == Strategy.FEATURE_EXTRACTION
    if strategy == Strategy.FULL_FINE_TUNE:
        stages = len(spec.stages)
    elif strategy == Strategy.PARTIAL_FINE_TUNE:
        stages = trainable_stages or default_trainable_stages(len(spec.stages), quadrant)
    else:
        stages = 0
    draft = TrainingPlan(
        backbone=spec.name,
        strategy=strategy,
        trainable_stages=stages,
        feature_stages=feature_stages if fe else (),
        feature_grid=feature_grid if fe and feature_grid > 1 else 0,
        # Feature extraction computes features once: augmentation would have no effect.
        augmentation=quadrant == Quadrant.SMALL_DIFFERENT and not fe,
        class_weighting=imbalance_ratio > IMBALANCE_CLASS_WEIGHTING,
        early_stopping_patience=0 if fe else EARLY_STOPPING_PATIENCE,
        seed=seed,
    )
    plan = resolve_plan(draft, spec, num_train_images=num_train, median_size=median_size)
    epoch_seconds = None
    if speed is not None:
        one = dataclasses.replace(plan, epochs=1, head_warmup_epochs=0)
        epoch_seconds = estimate_training_seconds(one, speed, num_train=num_train, num_val=num_val)
        if not speed.decode_every_epoch:
            epoch_seconds -= (num_train + num_val) * speed.decode_seconds_per_image
    epochs = _epochs(strategy, num_train, plan.batch_size, epoch_seconds)
    if epochs:
        # Re-resolve so that warm-up and head warm-up follow the chosen number of epochs.
        plan = resolve_plan(
            dataclasses.replace(draft, epochs=epochs),
            spec,
            num_train_images=num_train,
            median_size=median_size,
        )
    validate_plan(plan, spec)
    return plan


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Largest over smallest class count (1.0 for balanced data)."""
    positive = [c for c in counts if c > 0]
    if not positive:
        return 1.0
    return max(positive) / min(positive)
