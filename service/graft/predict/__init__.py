"""Predict: serve registered model versions, batched across requests, on the fastest
runtime measured for each (docs/PREDICT.md)."""

from graft.predict.model import build_model
from graft.predict.pool import DecodePool
from graft.predict.predictor import ImageResult, Predictor, PredictResult
from graft.predict.settings import PredictSettings

__all__ = [
    "DecodePool",
    "ImageResult",
    "PredictResult",
    "PredictSettings",
    "Predictor",
    "build_model",
]
