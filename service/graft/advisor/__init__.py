"""Advise: measure a dataset against the size × similarity matrix and plan its training.
See docs/ADVISOR.md."""

from graft.advisor.advise import (
    Advice,
    BackboneScore,
    DeclaredStats,
    advise_dataset,
    advise_declared,
    resolve_candidates,
)
from graft.advisor.probe import ProbeResult, linear_probe
from graft.advisor.report import DatasetReportData
from graft.advisor.signals import SIGNALS, Signal
from graft.plans.matrix import MATRIX, SIMILARITY_THRESHOLD, quadrant_for, size_axis

__all__ = [
    "MATRIX",
    "SIGNALS",
    "SIMILARITY_THRESHOLD",
    "Advice",
    "BackboneScore",
    "DatasetReportData",
    "DeclaredStats",
    "ProbeResult",
    "Signal",
    "advise_dataset",
    "advise_declared",
    "linear_probe",
    "quadrant_for",
    "resolve_candidates",
    "size_axis",
]
