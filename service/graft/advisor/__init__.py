"""Advise: measure a dataset against the size × similarity matrix and plan its training.
See docs/ADVISOR.md.

This package's own import loads no training code (the API imports it): it exports the
answer (advice.py), the declared-statistics Advise (declared.py) and the matrix. The
measured Advise, which trains, is `graft.advisor.advise.advise_dataset`; the linear probe
is `graft.advisor.probe.linear_probe`; the candidates are `graft.advisor.ranking`'s.
"""

from graft.advisor.advice import Advice, BackboneScore, DeclaredStats, ProbeResult
from graft.advisor.declared import advise_declared
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
    "advise_declared",
    "quadrant_for",
    "size_axis",
]
