"""The model registry: versioned safetensors artifacts + JSON cards, metadata in the store."""

from __future__ import annotations

from graft.registry.card import (
    CARD_VERSION,
    Calibration,
    DatasetSummary,
    ModelCard,
    Preprocessing,
    TrainingSummary,
)
from graft.registry.registry import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelRegistry,
    sha256_file,
    validate_model_name,
    validate_name,
)

__all__ = [
    "CARD_FILE",
    "CARD_VERSION",
    "WEIGHTS_FILE",
    "Calibration",
    "DatasetSummary",
    "ModelCard",
    "ModelRegistry",
    "Preprocessing",
    "TrainingSummary",
    "sha256_file",
    "validate_model_name",
    "validate_name",
]
