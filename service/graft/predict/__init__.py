"""Predict: serve registered model versions."""

from graft.predict.predictor import ImageResult, Predictor, PredictResult, build_model

__all__ = ["ImageResult", "PredictResult", "Predictor", "build_model"]
