"""Comparing two model versions on the same held-out images (docs/COMPARE.md).

`result` is the answer and its rules, torch-free, for the API and the worker alike;
`run` is the worker's evaluation (torch), which the advisor lane imports itself: this
package's import loads nothing of it.
"""

from graft.compare.result import (
    Comparison,
    MetricDelta,
    SplitSource,
    guard_refusal,
    label_difference,
    metric_deltas,
    split_text,
)

__all__ = [
    "Comparison",
    "MetricDelta",
    "SplitSource",
    "guard_refusal",
    "label_difference",
    "metric_deltas",
    "split_text",
]
