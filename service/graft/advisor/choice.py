"""Which strategy Advise plans: the matrix's fine-tuning piloted on the sample against
frozen features with a linear head (docs/ADVISOR.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from graft.advisor import cancel
from graft.advisor.advice import SEED, Depth, PilotResult
from graft.advisor.estimates import DEPARTURE_MAX_PER_CLASS, FE_MARGIN
from graft.advisor.measure import BackboneMeasurement, DecodedSample
from graft.advisor.pilot import pilot_fine_tune, time_training_step
from graft.advisor.probe import holdout_probe, stratified_folds
from graft.advisor.timing import time_head_epoch
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.plans.advised import (
    Speed,
    build_plan,
    estimate_training_seconds,
    runs_frozen_stages_once,
)


@dataclass(frozen=True)
class Planner:
    """Plans and speeds for the chosen backbone `m`, at the depth measured for it."""

    quadrant: Quadrant
    m: BackboneMeasurement
    sample: DecodedSample
    depth: Depth
    num_classes: int
    num_train: int
    num_val: int
    median_size: tuple[int, int]
    imbalance_ratio: float
    decode_every_epoch: bool  # the dataset is too large to keep decoded between epochs
    weights_dir: Path | None
    device: torch.device | str
    eval_seconds: float  # transform seconds per image, without augmentation
    augment_seconds: float  # and with it

    def plan(self, strategy: Strategy, speed: Speed | None) -> TrainingPlan:
        cut = self.depth.cut
        last = len(self.m.spec.stages)
        # The last stage pooled globally is the body's own features: a plan writes it as
        # no cut.
        stages = () if cut.stages == (last,) and cut.grid == 1 else cut.stages
        return build_plan(
            self.quadrant,
            self.m.spec,
            num_train=self.num_train,
            num_val=self.num_val,
            median_size=self.median_size,
            imbalance_ratio=self.imbalance_ratio,
            speed=speed,
            seed=SEED,
            strategy=strategy,
            trainable_stages=self.depth.trainable_stages,
            feature_stages=stages,
            feature_grid=cut.grid,
        )

    def speed(self, draft: TrainingPlan, timed: bool) -> Speed:
        return Speed(
            images_per_second=self.m.images_per_second,
            stage_fractions=self.m.stage_fractions,
            decode_seconds_per_image=self.sample.decode_seconds_per_image,
            decode_every_epoch=self.decode_every_epoch,
            train_seconds_per_image=time_training_step(
                draft,
                self.sample,
                self.num_classes,
                weights_dir=self.weights_dir,
                device=self.device,
                should_stop=cancel.should_stop,
            )
            if timed
            else 0.0,
            eval_transform_seconds=self.eval_seconds,
            augment_transform_seconds=self.augment_seconds,
            build_seconds=self.m.build_seconds,
            checkpoint_seconds=self._checkpoint_seconds(draft),
            head_seconds_per_image=self._head_seconds(draft),
            frozen_once=runs_frozen_stages_once(self.m.spec),
        )

    def _checkpoint_seconds(self, draft: TrainingPlan) -> float:
        """One epoch's checkpoint: for fine-tuning the model's weights, the best weights
        and AdamW's two moments of what trains (counted as the whole model: an upper bound,
        like the rest of the estimate); for feature extraction the head's weights and
        moments alone (the checkpoint keeps nothing else: Run.kept_state)."""
        if self.m.save_bytes_per_second <= 0:
            return 0.0
        if draft.strategy == Strategy.FEATURE_EXTRACTION:
            head_bytes = 4 * (self.depth.cut.features.shape[1] + 1) * self.num_classes
            return 4 * head_bytes / self.m.save_bytes_per_second
        return 4 * self.m.weight_bytes / self.m.save_bytes_per_second

    def _head_seconds(self, draft: TrainingPlan) -> float:
        if draft.strategy != Strategy.FEATURE_EXTRACTION:
            return 0.0
        return time_head_epoch(
            self.depth.cut.features, self.sample.labels, self.num_classes, draft.batch_size
        )

    def seconds(self, plan: TrainingPlan, speed: Speed) -> float:
        return estimate_training_seconds(
            plan, speed, num_train=self.num_train, num_val=self.num_val
        )


@dataclass(frozen=True)
class Choice:
    """The strategy chosen, with the pilot and probe it was chosen on."""

    strategy: Strategy
    fine_tune: Strategy  # the fine-tuning strategy piloted
    ft_plan: TrainingPlan
    ft_speed: Speed
    fe_plan: TrainingPlan
    fe_speed: Speed
    pilot: PilotResult
    probe_holdout: float  # the cut's probe on the pilot's split

    @property
    def plan(self) -> TrainingPlan:
        return self.fe_plan if self.strategy == Strategy.FEATURE_EXTRACTION else self.ft_plan

    @property
    def speed(self) -> Speed:
        return self.fe_speed if self.strategy == Strategy.FEATURE_EXTRACTION else self.ft_speed


def departs(
    matrix_strategy: Strategy, per_class: float, probe_holdout: float, pilot_accuracy: float
) -> bool:
    """Whether feature extraction replaces the matrix's fine-tuning: the probe on the
    pilot's split reaches the pilot (within FE_MARGIN), on a dataset no larger than
    DEPARTURE_MAX_PER_CLASS images per class."""
    return (
        matrix_strategy != Strategy.FEATURE_EXTRACTION
        and per_class <= DEPARTURE_MAX_PER_CLASS
        and probe_holdout >= pilot_accuracy - FE_MARGIN
    )


def pilot_and_choose(planner: Planner, matrix_strategy: Strategy, *, per_class: float) -> Choice:
    """The matrix's fine-tuning strategy, piloted on the sample; frozen features with a
    linear head, probed on the same split. Feature extraction replaces the matrix's
    fine-tuning when the probe reaches what the pilot does (departs)."""
    fine_tune = (
        matrix_strategy if matrix_strategy != Strategy.FEATURE_EXTRACTION else None
    ) or Strategy.PARTIAL_FINE_TUNE
    ft_draft = planner.plan(fine_tune, None)
    ft_speed = planner.speed(ft_draft, timed=True)
    ft_plan = planner.plan(fine_tune, ft_speed)
    sample, num_classes = planner.sample, planner.num_classes
    fold = stratified_folds(sample.labels, 5, SEED)
    pilot_val = [i for i, f in enumerate(fold) if f == 0]
    pilot_train = [i for i, f in enumerate(fold) if f != 0]
    pilot = pilot_fine_tune(
        ft_plan,
        sample,
        pilot_train,
        pilot_val,
        num_classes,
        weights_dir=planner.weights_dir,
        device=planner.device,
        seed=SEED,
        should_stop=cancel.should_stop,
    )
    probe_holdout = holdout_probe(
        planner.depth.cut.features, sample.labels, pilot_train, pilot_val, num_classes=num_classes
    )
    strategy = matrix_strategy
    if departs(matrix_strategy, per_class, probe_holdout, pilot.accuracy):
        strategy = Strategy.FEATURE_EXTRACTION
    fe_plan = planner.plan(Strategy.FEATURE_EXTRACTION, None)
    return Choice(
        strategy=strategy,
        fine_tune=fine_tune,
        ft_plan=ft_plan,
        ft_speed=ft_speed,
        fe_plan=fe_plan,
        fe_speed=planner.speed(fe_plan, timed=False),
        pilot=pilot,
        probe_holdout=probe_holdout,
    )
