"""Partial fine-tuning without augmentation runs its frozen stages once and trains the rest
on their outputs (graft.training.prefix), and trains the same model as running them every
epoch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from graft.backbones import backbone_names, get_spec
from graft.domain import EventKind, Strategy
from graft.plans.advised import runs_frozen_stages_once
from graft.training import prefix
from graft.training.engine import build_model
from graft.training.errors import TrainingCancelled
from tests.unit.test_training import Recorder, make_colour_dataset, plan_for, run


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_colour_dataset(tmp_path_factory.mktemp("colours"))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_the_frozen_stages_run_once_and_train_the_same_model(colours: Any, tmp_path: Path) -> None:
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, epochs=2, label_smoothing=0.1)
    assert not plan.augmentation and plan.trainable_stages == 3
    cached_events, plain_events = Recorder(), Recorder()
    cached = run(colours, plan, tmp_path / "cached", cached_events)
    plain = run(colours, plan, tmp_path / "plain", plain_events, cache_frozen_stages=False)
    # Lite0 has 9 stages; the top 3 train, so stages 1-6 ran once for the 36 + 12 images.
    said = [m for m in cached_events.messages() if "computed once" in m]
    assert len(said) == 1 and said[0].startswith("frozen stages 1-6 computed once (36 train")
    assert not any("computed once" in m for m in plain_events.messages())
    # The same batches through the same trained stages: the same weights and metrics.
    _close(cached.model.state_dict(), plain.model.state_dict())
    assert cached.metrics.accuracy == plain.metrics.accuracy
    losses = [
        [e.loss for e in rec.of(EventKind.EVALUATION)] for rec in (cached_events, plain_events)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_a_body_without_its_own_pooling_runs_them_every_epoch(colours: Any, tmp_path: Path) -> None:
    # torchvision's ResNet has no forward_head to run the trained stages' output into.
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, backbone="resnet18", epochs=1)
    rec = Recorder()
    run(colours, plan, tmp_path / "resnet", rec)
    assert "the frozen stages run every epoch: the body has no separate pooling" in " ".join(
        rec.messages()
    )


def test_a_body_that_is_not_its_stages_in_sequence_is_found_out() -> None:
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE)
    model = build_model(plan, 3, device=torch.device("cpu"), seed=0, pretrained=False)
    probe = torch.randn(2, 3, 32, 32)
    parts = prefix.split(model, plan, probe, images=10)
    assert not isinstance(parts, str)
    modules, suffix = parts
    assert len(modules) == 2 + 5  # conv_stem and bn1, blocks.0 to blocks.4
    assert len(suffix.stages) == 1 + 1 + 2  # blocks.5, blocks.6, conv_head and bn2
    # Something the body does besides its stages (here after them): the check sees it.
    model.body.register_forward_hook(lambda module, inputs, output: output + 1.0)
    assert prefix.split(model, plan, probe, images=10) == (
        "the body does more than run its stages in sequence"
    )


@pytest.mark.parametrize("name", backbone_names())
def test_the_estimate_assumes_the_frozen_pass_where_the_training_runs_it(name: str) -> None:
    # Advise's time estimate cannot build the network; what it assumes from the spec is
    # what prefix.split finds on the built one, for every catalogued backbone.
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, backbone=name, image_size=96, trainable_stages=1)
    model = build_model(plan, 3, device=torch.device("cpu"), seed=0, pretrained=False)
    parts = prefix.split(model, plan, torch.randn(2, 3, 96, 96), images=10)
    assert runs_frozen_stages_once(get_spec(name)) == (not isinstance(parts, str)), parts


def test_a_cache_over_its_memory_bound_is_not_kept(
    colours: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefix, "MAX_CACHE_BYTES", 1024)
    rec = Recorder()
    run(colours, plan_for(Strategy.PARTIAL_FINE_TUNE, epochs=1), tmp_path / "small", rec)
    said = [m for m in rec.messages() if m.startswith("the frozen stages run every epoch")]
    assert len(said) == 1 and "48 images' outputs of stage 6" in said[0] and "MiB" in said[0]


def test_only_partial_fine_tuning_on_fixed_images_on_one_rank_caches() -> None:
    partial = plan_for(Strategy.PARTIAL_FINE_TUNE)
    assert prefix.why_not(partial, distributed=False) == ""
    assert "augmentation" in prefix.why_not(
        dataclasses.replace(partial, augmentation=True), distributed=False
    )
    assert "several ranks" in prefix.why_not(partial, distributed=True)
    for strategy in (Strategy.FULL_FINE_TUNE, Strategy.FEATURE_EXTRACTION):
        assert "only partial" in prefix.why_not(plan_for(strategy), distributed=False)


def test_cancelling_while_the_frozen_stages_run_stops_the_job(colours: Any, tmp_path: Path) -> None:
    rec = Recorder()
    rec.stop = True
    with pytest.raises(TrainingCancelled, match="computing the frozen stages"):
        run(colours, plan_for(Strategy.PARTIAL_FINE_TUNE), tmp_path / "cancelled", rec)
    assert not rec.of(EventKind.STEP)
