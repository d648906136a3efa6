"""Depth: the stage scores, the feature cut and the partial fine-tuning depth on synthetic
stage features whose informativeness is known."""

from __future__ import annotations

import torch

from graft.advisor.depth import MIN_CUT_GAIN, choose_depth


def _stages(
    informative: dict[int, float], n: int = 200, classes: int = 4
) -> tuple[list[torch.Tensor], list[int]]:
    """Nine stages of 8 features; stage s carries the label with signal strength
    informative.get(s, 0) over unit noise."""
    g = torch.Generator().manual_seed(0)
    labels = [i % classes for i in range(n)]
    onehot = torch.nn.functional.one_hot(torch.tensor(labels), classes).float()
    feats = []
    for s in range(1, 10):
        noise = torch.randn(n, 8, generator=g)
        noise[:, :classes] += informative.get(s, 0.0) * onehot
        feats.append(noise)
    return feats, labels


def test_an_informative_middle_stage_is_the_cut_and_sets_the_depth() -> None:
    feats, labels = _stages({4: 3.0, 9: 0.3})
    depth = choose_depth(feats, labels, 4)
    assert [s.stage for s in depth.stages] == list(range(1, 10))
    assert depth.best_stage == 4
    assert depth.stages[3].probe.accuracy > 0.9 > depth.stages[8].probe.accuracy
    assert depth.stages[3].logme == max(s.logme for s in depth.stages)
    assert depth.cut.stages == (4,)
    assert depth.cut.features.shape == (200, 8)
    assert depth.trainable_stages == 5  # stages 5..9 are above the best one
    tried = dict(depth.cut.candidates)
    assert set(tried) == {(9,), (4,), (4, 5, 6, 7, 8, 9)}


def test_the_last_stage_stays_when_nothing_beats_it_clearly() -> None:
    feats, labels = _stages({9: 3.0, 5: 1.0})
    depth = choose_depth(feats, labels, 4)
    best_other = max(s.probe.accuracy for s in depth.stages[:-1])
    assert best_other < depth.stages[8].probe.accuracy + MIN_CUT_GAIN
    assert depth.cut.stages == (9,)
    assert depth.cut.probe.accuracy == depth.stages[8].probe.accuracy


def test_depth_is_at_least_one_and_leaves_the_first_stage_frozen() -> None:
    top = choose_depth(*_stages({9: 3.0}), 4)
    assert top.best_stage == 9 and top.trainable_stages == 1
    first = choose_depth(*_stages({1: 3.0}), 4)
    assert first.best_stage == 1 and first.trainable_stages == 8
