"""Signals of the training package."""

from __future__ import annotations


class TrainingCancelled(Exception):
    """`should_stop()` returned True: training stopped before its next step.

    Not a GraftError: it is not a failure to report but the normal end of a cancelled job
    (the worker marks the job CANCELLED). The last checkpoint stays on disk.
    """


class TrainingPreempted(Exception):
    """The worker is shutting down: training stopped right after writing a checkpoint (or,
    past the stop timeout, at the next step) so the job can be handed back and resumed."""
