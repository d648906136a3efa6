"""Depth: the stage scores, the feature cut and the partial fine-tuning depth on synthetic
stage features whose informativeness is known."""

from __future__ import annotations

import torch

from graft.advisor.depth import (
    CUT_GRID,
    GRID_CANDIDATES,
    MAX_RUN,
    MIN_CUT_GAIN,
    candidate_cuts,
    choose_depth,
)


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
    # The cut reads stage 4, alone or with a neighbour or two whose noise happened to help
    # the probe on these 200 images.
    assert 4 in depth.cut.stages and len(depth.cut.stages) <= MAX_RUN
    assert depth.cut.features.shape == (200, 8 * len(depth.cut.stages))
    assert depth.cut.probe.accuracy > 0.9
    assert depth.trainable_stages == 5  # stages 5..9 are above the best one
    tried = dict(depth.cut.candidates)
    second = sorted(depth.stages, key=lambda s: s.probe.accuracy)[-2].stage
    singles = {(s,) for s in range(1, 10)}
    assert set(tried) == singles | set(candidate_cuts(9, [4, second], 4))
    assert depth.cut.probe.accuracy >= max(tried.values()) - MIN_CUT_GAIN


def test_candidate_cuts_are_runs_around_the_best_stages_and_the_tail_from_the_best() -> None:
    assert candidate_cuts(9, [6], 6) == [
        (4, 5, 6), (5, 6), (5, 6, 7), (6,), (6, 7), (6, 7, 8), (6, 7, 8, 9),
    ]  # fmt: skip
    cuts = candidate_cuts(5, [1, 5], 5, max_run=2)
    assert cuts == [(1,), (1, 2), (4, 5), (5,)]


def test_a_tie_goes_to_the_cut_ending_later() -> None:
    # Stages 4 and 7 carry the same signal: their probes tie within MIN_CUT_GAIN or not,
    # but whichever cut is taken, no cut probes more than MIN_CUT_GAIN above it, and a cut
    # ending before it probes at least MIN_CUT_GAIN worse.
    feats, labels = _stages({4: 3.0, 7: 3.0})
    depth = choose_depth(feats, labels, 4)
    tried = dict(depth.cut.candidates)
    top = max(a for c, a in tried.items() if c != (9,))
    assert depth.cut.probe.accuracy >= top - MIN_CUT_GAIN
    for cut, acc in tried.items():
        if cut[-1] > depth.cut.stages[-1] and cut != (9,):
            assert acc < top - MIN_CUT_GAIN


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


def _grid(
    feats: list[torch.Tensor], where: dict[int, float], labels: list[int]
) -> list[torch.Tensor]:
    """Grid features (4 cells per feature) of the stages: each cell is the global feature
    plus cell noise, and for the stages in `where` the label is also written into the
    *difference* between the left and right cells, which a global mean cancels."""
    g = torch.Generator().manual_seed(1)
    onehot = torch.nn.functional.one_hot(torch.tensor(labels), 4).float()
    out = []
    for s, f in enumerate(feats, start=1):
        cells = f[:, :, None].repeat(1, 1, CUT_GRID * CUT_GRID) + 0.1 * torch.randn(
            f.shape[0], f.shape[1], CUT_GRID * CUT_GRID, generator=g
        )
        side = where.get(s, 0.0) * onehot
        cells[:, :4, 0] += side
        cells[:, :4, 1] -= side  # top-left up, top-right down: the mean does not change
        out.append(cells.flatten(1))
    return out


def test_a_grid_that_shows_where_is_chosen_and_says_against_what() -> None:
    feats, labels = _stages({4: 0.8, 9: 0.3})
    grids = _grid(feats, {4: 3.0}, labels)
    plain = choose_depth(feats, labels, 4)
    depth = choose_depth(feats, labels, 4, grid_features=grids)
    assert plain.cut.grid == 1 and plain.cut.grid_candidates == ()
    assert depth.cut.grid == CUT_GRID and 4 in depth.cut.stages
    assert depth.cut.probe.accuracy > 0.9
    assert depth.cut.global_probe is not None
    assert depth.cut.global_probe.accuracy == plain.cut.probe.accuracy
    assert depth.cut.probe.accuracy >= depth.cut.global_probe.accuracy + MIN_CUT_GAIN
    assert depth.cut.features.shape == (200, 8 * CUT_GRID**2 * len(depth.cut.stages))
    # Probed again on the grid: the chosen global cut and the best ones, no more.
    tried = dict(depth.cut.grid_candidates)
    assert plain.cut.stages in tried and len(tried) <= GRID_CANDIDATES + 1
    assert depth.cut.candidates == plain.cut.candidates  # the global search is unchanged
    # The depth of partial fine-tuning reads the stage probes, not the grid.
    assert depth.trainable_stages == plain.trainable_stages


def test_a_grid_that_adds_nothing_is_not_taken() -> None:
    feats, labels = _stages({4: 3.0})
    # Every cell the global feature itself: a linear head on the grid can do no better.
    grids = [f.repeat_interleave(CUT_GRID * CUT_GRID, dim=1) for f in feats]
    depth = choose_depth(feats, labels, 4, grid_features=grids)
    assert depth.cut.grid == 1 and depth.cut.global_probe is None
    assert depth.cut.grid_candidates  # probed, and not better by MIN_CUT_GAIN
    assert depth.cut.features.shape == (200, 8 * len(depth.cut.stages))
