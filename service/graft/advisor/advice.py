"""Advise's answer and the records it is made of (docs/ADVISOR.md). Types only: the
measuring lives in advise.py and the modules it drives (probe, depth, pilot), which import
graft.training. This module does not, so the API, which decodes an Advice (codec.py) and
converts it (graft.api.convert), loads no training code (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# codec.py resolves these annotations at runtime (typing.get_type_hints), so every type
# they name is imported here, not under TYPE_CHECKING: torch for CutChoice.features.
import torch

from graft.advisor.report import DatasetReportData
from graft.advisor.signals import Signal
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.plans.advised import Speed

# Every seeded step of Advise (sample, split, folds, pilot) uses this seed.
SEED = 0


@dataclass(frozen=True)
class DeclaredStats:
    """Statistics a caller states instead of sending the data."""

    num_classes: int
    images_per_class: int
    similarity_hint: float  # in [0, 1]; at least 0.5 counts as similar


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of a linear probe (probe.py) over k stratified folds."""

    accuracy: float  # mean over folds
    std: float  # population standard deviation over folds
    folds: int
    fold_accuracies: tuple[float, ...]
    correct: tuple[bool, ...] = ()  # per image (input order): its out-of-fold prediction

    @property
    def standard_error(self) -> float:
        return self.std / math.sqrt(self.folds) if self.folds else 0.0


@dataclass(frozen=True)
class StageScore:
    """One stage's pooled features on the sample (depth.py)."""

    stage: int  # 1-based
    channels: int
    logme: float
    probe: ProbeResult


@dataclass(frozen=True)
class CutChoice:
    """The stages feature extraction reads (depth.py)."""

    stages: tuple[int, ...]  # 1-based stages, ascending; (last,) is the classic cut, which
    # a plan writes as () (GraftModel's default features)
    probe: ProbeResult
    features: torch.Tensor  # the chosen cut's features on the sample
    candidates: tuple[tuple[tuple[int, ...], float], ...]  # (stages, probe accuracy) tried
    grid: int = 1  # pooling grid of the chosen cut (plan.feature_grid); 1 = global
    # (stages, probe accuracy) tried again pooled over a CUT_GRID x CUT_GRID grid
    grid_candidates: tuple[tuple[tuple[int, ...], float], ...] = ()
    global_probe: ProbeResult | None = None  # the best globally pooled cut, when grid > 1
    # On a large dataset, the best cuts probed again on the learning curve's images
    # (curve_sample.recheck): (stages, grid, held-out accuracy), the sample's choice first,
    # and (training images, held-out images) of that probe.
    rechecked: tuple[tuple[tuple[int, ...], int, float], ...] = ()
    recheck_split: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Depth:
    """Every stage of the chosen backbone probed, and what follows (depth.py)."""

    stages: tuple[StageScore, ...]
    cut: CutChoice
    trainable_stages: int  # for partial fine-tuning
    best_stage: int  # 1-based stage whose features probe best


@dataclass(frozen=True)
class PilotResult:
    """A short fine-tuning run on one split of the sample (pilot.py)."""

    accuracy: float  # on the held-out part
    seconds: float
    epochs: int
    train_images: int
    val_images: int


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
    # graft.plans.estimate_training_seconds(plan, speed, ...).
    speed: Speed | None = None
    depth: Depth | None = None  # the plan's backbone, stage by stage
    strategy_estimates: tuple[StrategyEstimate, ...] = ()
    estimated_accuracy: tuple[float, float] = (0.0, 0.0)  # the plan's, [low, high]
    similarity_method: str = ""
    pilot: PilotResult | None = None
    holdout_probe_accuracy: float = 0.0  # the cut's probe on the pilot's split
    from_cache: bool = False  # read from the advice cache (advice_cache.py), not measured now
    # The similarity's central 90% bootstrap interval over the images the signals read
    # (bootstrap.py), and whether it straddles the matrix's threshold.
    similarity_interval: tuple[float, float] = (0.0, 0.0)
    similarity_borderline: bool = False
    similarity_images: int = 0  # how many sampled images the signals read (measure.py)
