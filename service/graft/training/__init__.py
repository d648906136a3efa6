"""Training: plans and their defaults, strategies, the loop, checkpoints. See docs/TRAINING.md.

The worker (graft.worker, above this package) claims jobs and calls `train`; everything it
needs is exported here.
"""

from graft.plans import DEFAULTS, PlanDefaults, resolve_plan, validate_plan
from graft.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from graft.training.engine import evaluate, select_device
from graft.training.errors import TrainingCancelled
from graft.training.evaluation import evaluate_predictions
from graft.training.loop import TrainResult, train, train_one_epoch
from graft.training.strategies import apply_strategy, set_train_mode

__all__ = [
    "DEFAULTS",
    "Checkpoint",
    "CheckpointError",
    "PlanDefaults",
    "TrainResult",
    "TrainingCancelled",
    "apply_strategy",
    "evaluate",
    "evaluate_predictions",
    "load_checkpoint",
    "resolve_plan",
    "save_checkpoint",
    "select_device",
    "set_train_mode",
    "train",
    "train_one_epoch",
    "validate_plan",
]
