"""A comparison's answer, torch-free: the metric deltas, the guard's rule, the words that
say where the held-out images came from, and the versioned JSON the advisor lane answers
with (the API decodes it; neither side imports the other's layer).

The rule of `candidate_not_worse` (docs/COMPARE.md): on the same images the candidate
classifies at least as many correctly as the baseline. It is counted in images, not
compared as floats, so a tie is a tie; and it has no tolerance, because a guard that lets
"slightly worse within noise" through lets a model get worse by that much at every
promotion. The deltas and the image count are in the answer for a person to weigh noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from graft.domain import DatasetRef, EvaluationMetrics, ModelRef
from graft.errors import FailedPrecondition, PreconditionViolation

VERSION = 1  # of the JSON a COMPARE task answers with
# google.rpc.PreconditionFailure types of the guard's refusals: the candidate is worse; the
# candidate's dataset changed since it trained, so the comparison cannot vouch for it.
GUARD_VIOLATION = "NOT_WORSE"
DATA_CHANGED_VIOLATION = "HELD_OUT_CHANGED"


@dataclass(frozen=True)
class MetricDelta:
    """One metric of both versions on the same images."""

    metric: str  # "accuracy", "top5_accuracy", "macro_f1", "loss", "ece", "recall/<label>"
    baseline: float
    candidate: float
    higher_is_better: bool

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline


@dataclass(frozen=True)
class SplitSource:
    """What one version's card says about the split it trained with."""

    fingerprint: str  # of the dataset it trained on; "" when the card does not say
    validation_fraction: float
    seed: int


@dataclass(frozen=True)
class Comparison:
    """Two versions evaluated on the candidate's held-out images. `ece` is the expected
    calibration error of the probabilities each version serves."""

    baseline: ModelRef
    candidate: ModelRef
    baseline_metrics: EvaluationMetrics
    candidate_metrics: EvaluationMetrics
    baseline_ece: float
    candidate_ece: float
    images: int
    split: str  # where the images come from, and any caveat
    # The dataset's fingerprint now is not the one the candidate trained on: the images
    # may hold some it trained on (the guard refuses such a comparison).
    candidate_data_changed: bool = False

    @property
    def deltas(self) -> list[MetricDelta]:
        return metric_deltas(
            self.baseline_metrics, self.candidate_metrics, self.baseline_ece, self.candidate_ece
        )

    @property
    def candidate_not_worse(self) -> bool:
        """At least as many images right as the baseline (the module doc has why)."""
        return correct(self.candidate_metrics, self.images) >= correct(
            self.baseline_metrics, self.images
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "comparison": dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Comparison:
        """What `to_json` wrote; FailedPrecondition for another version (a worker of
        another release)."""
        if doc.get("version") != VERSION:
            raise FailedPrecondition(
                f"the worker answered in comparison format version {doc.get('version')!r}; "
                f"this server reads version {VERSION}: run a server and workers of the same "
                "release"
            )
        d = doc["comparison"]
        metrics = [
            EvaluationMetrics.from_dict(d[k]) for k in ("baseline_metrics", "candidate_metrics")
        ]
        return cls(
            baseline=ModelRef(**d["baseline"]),
            candidate=ModelRef(**d["candidate"]),
            baseline_metrics=metrics[0] or EvaluationMetrics(),
            candidate_metrics=metrics[1] or EvaluationMetrics(),
            baseline_ece=float(d["baseline_ece"]),
            candidate_ece=float(d["candidate_ece"]),
            images=int(d["images"]),
            split=str(d["split"]),
            candidate_data_changed=bool(d.get("candidate_data_changed", False)),
        )


def correct(metrics: EvaluationMetrics, images: int) -> int:
    """Images classified right: the confusion matrix's diagonal, or, without one, the
    accuracy times the images, rounded (exact for an accuracy computed on them)."""
    n = len(metrics.labels)
    if n and len(metrics.confusion) == n * n:
        return sum(metrics.confusion[i * n + i] for i in range(n))
    return round(metrics.accuracy * images)


def metric_deltas(
    baseline: EvaluationMetrics,
    candidate: EvaluationMetrics,
    baseline_ece: float,
    candidate_ece: float,
) -> list[MetricDelta]:
    """accuracy, top5_accuracy, macro_f1, loss, ece, then recall/<label> for each of the
    candidate's labels (in its order) that the baseline knows too."""
    out = [
        MetricDelta(name, getattr(baseline, name), getattr(candidate, name), higher)
        for name, higher in (
            ("accuracy", True),
            ("top5_accuracy", True),
            ("macro_f1", True),
            ("loss", False),
        )
    ]
    out.append(MetricDelta("ece", baseline_ece, candidate_ece, False))
    recall = {c.label: c.recall for c in baseline.per_class}
    out.extend(
        MetricDelta(f"recall/{c.label}", recall[c.label], c.recall, True)
        for c in candidate.per_class
        if c.label in recall
    )
    return out


def label_difference(baseline: tuple[str, ...], candidate: tuple[str, ...]) -> str:
    """ "" when both versions classify into the same labels (in any order), else what
    differs, in words."""
    only_b = sorted(set(baseline) - set(candidate))
    only_c = sorted(set(candidate) - set(baseline))
    if not only_b and not only_c:
        return ""
    parts = [f"only the baseline has {_few(only_b)}"] * bool(only_b)
    parts += [f"only the candidate has {_few(only_c)}"] * bool(only_c)
    return "; ".join(parts)


def _few(labels: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(x) for x in labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def describe(ref: DatasetRef) -> str:
    """A dataset reference in words."""
    return ref.uri if ref.uri else f"upload {ref.dataset_id}"


def dataset_gone(candidate: str, ref: DatasetRef, reason: str) -> FailedPrecondition:
    """The refusal when the dataset the candidate trained on cannot be read any more (an
    upload deleted or expired, a folder moved or outside the data roots now)."""
    return FailedPrecondition(
        f"the dataset {candidate} trained on ({describe(ref)}) is gone: {reason}. The "
        "versions are compared on its validation split: compare versions whose training "
        "data is still here, or train the candidate again"
    )


def split_text(
    *,
    baseline: str,
    candidate: str,
    where: str,
    images: int,
    baseline_split: SplitSource,
    candidate_split: SplitSource,
    explicit: bool,
    fingerprint_now: str,
) -> str:
    """Where the held-out images come from and whether the comparison is clean: `where` is
    the candidate's dataset in words, `explicit` whether the dataset names its own
    validation images, `fingerprint_now` the dataset's fingerprint as scanned for this
    comparison. `baseline` and `candidate` name the versions (e.g. "flowers:1")."""
    c = candidate_split
    how = (
        "the images the dataset marks as validation"
        if explicit
        else f"{c.validation_fraction:.0%} of each class, seed {c.seed}"
    )
    text = (
        f"{images} held-out images: {candidate}'s validation split of {where} ({how}), "
        "split exactly as its training split it."
    )
    caveats = []
    if c.fingerprint and fingerprint_now != c.fingerprint:
        caveats.append(
            f"the dataset changed since {candidate} trained (fingerprint {c.fingerprint[:12]} "
            f"then, {fingerprint_now[:12]} now), so the split made now may hold images "
            f"{candidate} trained on"
        )
    differs = _split_differences(baseline_split, candidate_split, explicit)
    if differs:
        caveats.append(
            f"{baseline} trained with a different split ({differs}), so it may have trained "
            "on some of these images, which favours it"
        )
    if caveats:
        return (
            text + " CAVEAT: " + "; ".join(caveats) + ". This is not a clean held-out comparison."
        )
    return (
        text + f" {baseline} trained on the same dataset with the same split, so neither "
        "version trained on these images: a clean held-out comparison."
    )


def _split_differences(b: SplitSource, c: SplitSource, explicit: bool) -> str:
    """How the baseline's split differs from the candidate's, in words ("" if it does
    not). With a split the dataset names itself, only the dataset matters."""
    if not b.fingerprint:
        return "its card does not record the dataset it trained on"
    out = []
    if b.fingerprint != c.fingerprint:
        out.append(f"dataset fingerprint {b.fingerprint[:12]}, not {c.fingerprint[:12]}")
    if not explicit and b.seed != c.seed:
        out.append(f"seed {b.seed}, not {c.seed}")
    if not explicit and b.validation_fraction != c.validation_fraction:
        out.append(f"validation fraction {b.validation_fraction:g}, not {c.validation_fraction:g}")
    return ", ".join(out)


def guard_refusal(comparison: Comparison, alias: str) -> FailedPrecondition | None:
    """SetModelAlias's guard on `comparison` (baseline: the version `alias` points at):
    None when the alias may move, else the refusal, with both accuracies, the delta and the
    images in its message and as a google.rpc.PreconditionFailure violation. It refuses a
    candidate that is worse, and one whose dataset changed since it trained whatever its
    figures: the images may then hold some it trained on, which favours it. (A baseline
    whose split differs is favoured instead: that can only make the guard stricter.)"""
    b, c = comparison.baseline, comparison.candidate
    acc_b, acc_c = comparison.baseline_metrics.accuracy, comparison.candidate_metrics.accuracy
    n = comparison.images
    figures = (
        f"on {n} held-out images version {c.version} is right on "
        f"{correct(comparison.candidate_metrics, n)} (accuracy {acc_c:.4f}), version "
        f"{b.version} on {correct(comparison.baseline_metrics, n)} (accuracy {acc_b:.4f}): "
        f"delta {acc_c - acc_b:+.4f}"
    )
    if comparison.candidate_data_changed:
        kind, why = (
            DATA_CHANGED_VIOLATION,
            (
                f"the dataset version {c.version} trained on changed since, so these images may "
                "include some it trained on and its figures cannot vouch for it; compare the two "
                "yourself (graft models compare) and set the alias without guard if you accept it"
            ),
        )
    elif not comparison.candidate_not_worse:
        kind, why = (
            GUARD_VIOLATION,
            ("promote a version that is not worse, or set the alias without guard to override"),
        )
    else:
        return None
    message = (
        f"refusing to move {b.name}@{alias} from version {b.version} to version {c.version}: "
        f"{figures}. {why[0].upper()}{why[1:]}. Split: {comparison.split}"
    )
    violation = PreconditionViolation(
        type=kind, subject=f"{c.name}:{c.version}", description=figures
    )
    return FailedPrecondition(message, [violation])
