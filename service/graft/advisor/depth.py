"""Depth: which stage(s) feature extraction reads, and how many stages partial fine-tuning
unfreezes, chosen from the measured transferability of each stage's pooled features.

The classic advice — for a small dataset unlike the pretraining data, a linear classifier on
*earlier* layers' activations — is measured here rather than assumed: every stage's globally
pooled output on the Advise sample gets a LogME score and a k-fold linear-probe accuracy.

- Feature-extraction cut: the candidate cut with the best probe accuracy among the single
  stages, every run of up to MAX_RUN consecutive stages that contains one of the
  AROUND_BEST best-probing single stages, and the run from the best single stage up to the
  last, their pooled features concatenated. Probes within MIN_CUT_GAIN of the best are
  a tie (concatenating stages can win a smaller lead by chance); among the tied, the cut
  ending at the latest stage (nearest the classic cut), then the narrowest, is taken.
  Another cut replaces the last stage (the classic choice) only when its probe is better
  by at least MIN_CUT_GAIN. Runs, not only single stages: on Fashion-MNIST at 64 px the
  best run of two or three stages beat the best single stage by 0.6-2.3 points held-out at
  100, 300 and 500 images per class (bench/feature_cuts.py, docs/ADVISOR.md § Depth).
- Pooling grid: the GRID_CANDIDATES best-probing cuts are probed again with each stage
  pooled over a CUT_GRID x CUT_GRID partition of its map instead of globally (the head
  then also sees *where* a feature fired; a linear head on the grid can still compute the
  global mean, so it loses nothing but samples). The best of them (ties as above) replaces
  the globally pooled cut when it probes at least MIN_CUT_GAIN better. On Fashion-MNIST at
  64 px the 2x2 grid added 0.9-2.4 points held-out to the best cuts (runs of two or three
  middle stages) at 100, 300 and 500 images per class, and nothing to the last stage
  (bench/feature_cuts.py, docs/ADVISOR.md § Depth).
- Partial fine-tuning: the stages above the most transferable one are the ImageNet-specific
  ones worth retraining: trainable = stages after the best-probing stage, at least 1 and at
  most all but the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from graft.advisor.advice import CutChoice, Depth, ProbeResult, StageScore
from graft.advisor.logme import logme
from graft.advisor.probe import linear_probe

# A cut other than the last stage must probe at least this much better (accuracy).
MIN_CUT_GAIN = 0.005
# Cuts tried: runs of up to MAX_RUN consecutive stages around the AROUND_BEST best-probing
# single stages, and the run from the best one up to the last stage.
MAX_RUN = 3
AROUND_BEST = 2
# The pooling grid tried besides global pooling, and on how many of the best cuts.
CUT_GRID = 2
GRID_CANDIDATES = 3


def cut_columns(
    stages: Sequence[int],
    grid: int,
    pooled: Sequence[torch.Tensor],
    gridded: Sequence[torch.Tensor],
) -> torch.Tensor:
    """A cut's features: its stages' outputs (1-based) side by side, each pooled globally
    (`pooled`) or, when `grid` > 1, over the CUT_GRID x CUT_GRID grid (`gridded`)."""
    source = gridded if grid > 1 else pooled
    return torch.cat([source[s - 1] for s in stages], dim=1)


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


def candidate_cuts(
    num_stages: int, around: Sequence[int], tail_from: int, max_run: int = MAX_RUN
) -> list[tuple[int, ...]]:
    """Every run of 1..max_run consecutive stages that contains a stage of `around`, and
    the run from `tail_from` to the last (1-based stages, ascending), each once."""
    cuts: dict[tuple[int, ...], None] = {}
    for first in range(1, num_stages + 1):
        for end in range(first, min(num_stages, first + max_run - 1) + 1):
            if any(first <= s <= end for s in around):
                cuts[tuple(range(first, end + 1))] = None
    cuts[tuple(range(tail_from, num_stages + 1))] = None
    return list(cuts)


def _try_grid(
    cut: CutChoice,
    tried: dict[tuple[int, ...], ProbeResult],
    grid_features: Sequence[torch.Tensor],
    labels: Sequence[int],
    num_classes: int,
    seed: int,
    width: Callable[[tuple[int, ...]], int],
) -> CutChoice:
    """The chosen cut, or the best of the GRID_CANDIDATES best-probing cuts pooled over a
    CUT_GRID x CUT_GRID grid when that probes at least MIN_CUT_GAIN better."""
    best_first = sorted(tried, key=lambda c: (tried[c].accuracy, c[-1], -width(c)), reverse=True)
    grid_tried: dict[tuple[int, ...], ProbeResult] = {}
    for c in dict.fromkeys([cut.stages, *best_first[:GRID_CANDIDATES]]):
        concat = cut_columns(c, CUT_GRID, (), grid_features)
        grid_tried[c] = linear_probe(concat, labels, num_classes=num_classes, seed=seed)
    top = max(p.accuracy for p in grid_tried.values())
    near = [c for c in grid_tried if grid_tried[c].accuracy >= top - MIN_CUT_GAIN]
    alt = min(near, key=lambda c: (-c[-1], width(c)))
    grid_candidates = tuple((c, p.accuracy) for c, p in grid_tried.items())
    if grid_tried[alt].accuracy < cut.probe.accuracy + MIN_CUT_GAIN:
        return dataclasses.replace(cut, grid_candidates=grid_candidates)
    return CutChoice(
        stages=alt,
        probe=grid_tried[alt],
        features=cut_columns(alt, CUT_GRID, (), grid_features),
        candidates=cut.candidates,
        grid=CUT_GRID,
        grid_candidates=grid_candidates,
        global_probe=cut.probe,
    )


def choose_depth(
    stage_features: Sequence[torch.Tensor],
    labels: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    grid_features: Sequence[torch.Tensor] = (),
) -> Depth:
    """Score every stage and choose the feature cut and the partial fine-tuning depth.

    `grid_features` (optional): each stage's output pooled over a CUT_GRID x CUT_GRID grid,
    same order; with them the best cuts are probed that way too."""
    if not stage_features:
        raise ValueError("no stage features")
    scores = score_stages(stage_features, labels, num_classes, seed)
    last = len(scores)
    best = max(scores, key=lambda s: (s.probe.accuracy, s.stage))  # ties: the later stage

    tried: dict[tuple[int, ...], ProbeResult] = {(s.stage,): s.probe for s in scores}
    ranked = sorted(scores, key=lambda s: (s.probe.accuracy, s.stage), reverse=True)
    around = [s.stage for s in ranked[:AROUND_BEST]]
    for run in candidate_cuts(last, around, best.stage):
        if run not in tried:
            concat = cut_columns(run, 1, stage_features, ())
            tried[run] = linear_probe(concat, labels, num_classes=num_classes, seed=seed)

    def width(cut: tuple[int, ...]) -> int:
        return sum(scores[s - 1].channels for s in cut)

    # Among the cuts within MIN_CUT_GAIN of the best probe (a smaller lead is noise, which
    # concatenating stages can win by chance), the one ending at the latest stage (nearest
    # the classic cut), then the narrowest, is the alternative to the last stage.
    chosen: tuple[int, ...] = (last,)
    others = [c for c in tried if c != (last,)]
    if others:
        top = max(tried[c].accuracy for c in others)
        near = [c for c in others if tried[c].accuracy >= top - MIN_CUT_GAIN]
        alt = min(near, key=lambda c: (-c[-1], width(c)))
        if tried[alt].accuracy >= tried[(last,)].accuracy + MIN_CUT_GAIN:
            chosen = alt
    features = cut_columns(chosen, 1, stage_features, ())
    cut = CutChoice(
        stages=chosen,
        probe=tried[chosen],
        features=features,
        candidates=tuple((s, p.accuracy) for s, p in tried.items()),
    )
    if grid_features:
        cut = _try_grid(cut, tried, grid_features, labels, num_classes, seed, width)
    trainable = min(max(1, last - best.stage), last - 1)
    return Depth(stages=scores, cut=cut, trainable_stages=trainable, best_stage=best.stage)
