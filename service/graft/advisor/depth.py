"""Depth: which stage(s) feature extraction reads, and how many stages partial fine-tuning
unfreezes, chosen from the measured transferability of each stage's pooled features.

The classic advice — for a small dataset unlike the pretraining data, a linear classifier on
*earlier* layers' activations — is measured here rather than assumed: every stage's globally
pooled output on the Advise sample gets a LogME score and a k-fold linear-probe accuracy.

- Feature-extraction cut: the candidate cut with the best probe accuracy among the last
  stage (the classic choice), the best single stage, and the stages from the best single
  one up to the last concatenated. Another cut replaces the last stage only when its probe
  is better by at least MIN_CUT_GAIN (a smaller lead is within the folds' noise).
- Partial fine-tuning: the stages above the most transferable one are the ImageNet-specific
  ones worth retraining: trainable = stages after the best-probing stage, at least 1 and at
  most all but the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.advisor.logme import logme
from graft.advisor.probe import ProbeResult, linear_probe

# A cut other than the last stage must probe at least this much better (accuracy).
MIN_CUT_GAIN = 0.005


@dataclass(frozen=True)
class StageScore:
    stage: int  # 1-based
    channels: int
    logme: float
    probe: ProbeResult


@dataclass(frozen=True)
class CutChoice:
    stages: tuple[int, ...]  # 1-based stages, ascending; (last,) is the classic cut, which
    # a plan writes as () (GraftModel's default features)
    probe: ProbeResult
    features: torch.Tensor  # the chosen cut's features on the sample
    candidates: tuple[tuple[tuple[int, ...], float], ...]  # (stages, probe accuracy) tried


@dataclass(frozen=True)
class Depth:
    stages: tuple[StageScore, ...]
    cut: CutChoice
    trainable_stages: int  # for partial fine-tuning
    best_stage: int  # 1-based stage whose features probe best


def score_stages(
    stage_features: Sequence[torch.Tensor], labels: Sequence[int], num_classes: int, seed: int
) -> tuple[StageScore, ...]:
    y = torch.as_tensor(list(labels), dtype=torch.long)
    scores = []
    for i, f in enumerate(stage_features):
        scores.append(
            StageScore(
                stage=i + 1,
                channels=int(f.shape[1]),
                logme=logme(f, y, num_classes),
                probe=linear_probe(f, labels, num_classes=num_classes, seed=seed),
            )
        )
    return tuple(scores)


def choose_depth(
    stage_features: Sequence[torch.Tensor],
    labels: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
) -> Depth:
    """Score every stage and choose the feature cut and the partial fine-tuning depth."""
    if not stage_features:
        raise ValueError("no stage features")
    scores = score_stages(stage_features, labels, num_classes, seed)
    last = len(scores)
    best = max(scores, key=lambda s: (s.probe.accuracy, s.stage))  # ties: the later stage

    tried: dict[tuple[int, ...], ProbeResult] = {(last,): scores[-1].probe}
    tried[(best.stage,)] = best.probe
    span = tuple(range(best.stage, last + 1))
    if len(span) > 1:
        concat = torch.cat([stage_features[s - 1] for s in span], dim=1)
        tried[span] = linear_probe(concat, labels, num_classes=num_classes, seed=seed)

    chosen: tuple[int, ...] = (last,)
    others = [s for s in tried if s != (last,)]
    if others:
        alt = max(others, key=lambda s: (tried[s].accuracy, -len(s)))
        if tried[alt].accuracy >= tried[(last,)].accuracy + MIN_CUT_GAIN:
            chosen = alt
    features = torch.cat([stage_features[s - 1] for s in chosen], dim=1)
    cut = CutChoice(
        stages=chosen,
        probe=tried[chosen],
        features=features,
        candidates=tuple((s, p.accuracy) for s, p in tried.items()),
    )
    trainable = min(max(1, last - best.stage), last - 1)
    return Depth(stages=scores, cut=cut, trainable_stages=trainable, best_stage=best.stage)
