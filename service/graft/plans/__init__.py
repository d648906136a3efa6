"""Training plans, in one torch-free place: the defaults that fill an incomplete plan
(`resolve_plan`), the checks a plan must pass (`validate_plan`), the size × similarity
matrix, and the advisor's rules from a quadrant to a complete plan (`build_plan`) with its
time estimate. The API server, the worker, the trainer and the advisor all read plans
through here; importing it never imports torch (tests/unit/test_plan.py checks).

- defaults.py: `PlanDefaults`, `DEFAULTS`, `default_image_size`,
  `default_trainable_stages` (the one rule for partial fine-tuning's depth), `resolve_plan`;
- validation.py: `validate_plan` and its limits;
- matrix.py: `MATRIX` (quadrant → strategy), `quadrant_for`, `size_axis`, `is_similar`;
- advised.py: `build_plan`, `Speed`, `estimate_training_seconds`, `imbalance_ratio`.
"""

from graft.plans.advised import (
    Speed,
    build_plan,
    estimate_training_seconds,
    imbalance_ratio,
)
from graft.plans.defaults import (
    DEFAULTS,
    PlanDefaults,
    default_image_size,
    default_trainable_stages,
    resolve_plan,
)
from graft.plans.matrix import MATRIX, SIMILARITY_THRESHOLD, is_similar, quadrant_for, size_axis
from graft.plans.validation import validate_plan

__all__ = [
    "DEFAULTS",
    "MATRIX",
    "SIMILARITY_THRESHOLD",
    "PlanDefaults",
    "Speed",
    "build_plan",
    "default_image_size",
    "default_trainable_stages",
    "estimate_training_seconds",
    "imbalance_ratio",
    "is_similar",
    "quadrant_for",
    "resolve_plan",
    "size_axis",
    "validate_plan",
]
