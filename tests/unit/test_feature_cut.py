"""Feature cuts: the head of a feature-extraction model reading the pooled outputs of chosen
backbone stages (`TrainingPlan.feature_stages`), from GraftModel to training and serving.
Random-init models on 32 px inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import graft.backbones as bb
from graft.backbones.spec import grid_average_pool
from graft.data import load_image
from graft.domain import ModelVersion, Strategy, TrainingPlan
from graft.errors import FieldViolation, InvalidArgument
from graft.predict.model import build_model
from graft.registry import ModelCard, Preprocessing
from graft.training import train
from tests.unit.test_training import Recorder, make_colour_dataset

LITE0 = "efficientnet_lite0"
# EfficientNet-Lite0's stage widths: stem 32, the seven MBConv groups, the 1x1 head conv.
LITE0_CHANNELS = (32, 16, 24, 40, 80, 112, 192, 320, 1280)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def lite0(**kw: Any) -> bb.GraftModel:
    torch.manual_seed(0)
    return bb.create_model(LITE0, 3, pretrained=False, **kw).eval()


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def count_calls(modules: list[nn.Module]) -> tuple[dict[str, int], list[Any]]:
    calls = {"n": 0}

    def hook(*_: Any) -> None:
        calls["n"] += 1

    return calls, [m.register_forward_hook(hook) for m in modules]


def all_forward_hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


# --- GraftModel ----------------------------------------------------------------------------


def test_stage_channels_of_lite0_and_resnet18() -> None:
    assert bb.stage_channels(LITE0) == LITE0_CHANNELS
    assert bb.stage_channels("resnet18") == (64, 64, 128, 256, 512)


def test_pooled_stage_features_are_the_hooked_stage_outputs_pooled() -> None:
    model = lite0()
    x = images()
    recorded: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
            recorded[name] = out.detach().clone()

        return hook

    # The last module listed for stages 3 and 5 (1-based) in the spec.
    names = [model.spec.stages[2][-1], model.spec.stages[4][-1]]
    assert names == ["blocks.1", "blocks.3"]
    handles = [model.body.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    with torch.inference_mode():
        model.body(x)
    for h in handles:
        h.remove()
    expected = [recorded[n].mean(dim=(2, 3)) for n in names]

    with torch.inference_mode():
        got = model.pooled_stage_features(x, [3, 5])
    assert [g.shape for g in got] == [(2, 24), (2, 80)]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    # The order of the result is that of the request.
    with torch.inference_mode():
        swapped = model.pooled_stage_features(x, [5, 3])
    assert torch.equal(swapped[0], got[1]) and torch.equal(swapped[1], got[0])


def test_pooled_stage_features_stop_after_the_highest_stage_and_remove_their_hooks() -> None:
    model = lite0()
    later = [model.body.get_submodule(n) for n in ("blocks.4", "blocks.6", "conv_head", "bn2")]
    calls, handles = count_calls(later)
    baseline_hooks = all_forward_hooks(model.body)
    with torch.inference_mode():
        model.pooled_stage_features(images(), [3, 5])
        assert calls["n"] == 0  # stages 6.. never ran
        model.body(images())
        assert calls["n"] == len(later)  # the counting hooks do fire on a full forward
    assert all_forward_hooks(model.body) == baseline_hooks

    # Hooks are removed when the forward fails too.
    with pytest.raises(RuntimeError), torch.inference_mode():
        model.pooled_stage_features(torch.randn(2, 5, 32, 32), [3])
    assert all_forward_hooks(model.body) == baseline_hooks
    for h in handles:
        h.remove()


def test_default_cut_features_are_the_body_output_bit_for_bit() -> None:
    model = lite0()
    assert model.feature_stages == ()
    assert model.head.in_features == 1280
    x = images()
    with torch.inference_mode():
        body = model.body(x)
        assert torch.equal(model.features(x), body)
        assert torch.equal(model(x), model.head(body))
        # The last stage's pooled output is what the body returns (up to rounding).
        torch.testing.assert_close(model.pooled_stage_features(x, [9])[0], body)


def test_cut_head_width_and_features() -> None:
    model = lite0(feature_stages=(3, 5))
    assert model.feature_stages == (3, 5)
    assert model.head.in_features == LITE0_CHANNELS[2] + LITE0_CHANNELS[4] == 104
    x = images()
    with torch.inference_mode():
        feats = model.features(x)
        assert feats.shape == (2, 104)
        assert torch.equal(feats, torch.cat(model.pooled_stage_features(x, [3, 5]), dim=1))
        assert torch.equal(model(x), model.head(feats))
    # Same body weights as a model without a cut: the cut adds no state and drops none.
    plain = lite0()
    assert {k for k in model.state_dict() if k.startswith("body.")} == {
        k for k in plain.state_dict() if k.startswith("body.")
    }


def test_the_resnet_stem_is_read_after_its_activation() -> None:
    torch.manual_seed(0)
    model = bb.create_model("resnet18", 2, pretrained=False, feature_stages=(1, 2)).eval()
    assert model.stage_outputs[0] == "relu" and model.spec.stages[0][-1] == "bn1"
    assert model.head.in_features == 64 + 64
    with torch.inference_mode():
        stem = model.pooled_stage_features(images(4), [1])[0]
    assert stem.min() >= 0  # after ReLU; bn1's own output averages negative in places


def test_a_grid_cut_pools_each_stage_over_grid_cells() -> None:
    model = lite0(feature_stages=(3, 5), feature_grid=2)
    assert model.feature_grid == 2
    assert model.head.in_features == 4 * (LITE0_CHANNELS[2] + LITE0_CHANNELS[4])
    x = images()
    maps: dict[int, torch.Tensor] = {}
    handles = [
        model.body.get_submodule(model.stage_outputs[s - 1]).register_forward_hook(
            lambda _m, _i, out, s=s: maps.__setitem__(s, out)
        )
        for s in (3, 5)
    ]
    with torch.inference_mode():
        feats = model.features(x)
        for h in handles:
            h.remove()
        # Stage 3 of a 32 px input is an 8x8 map: four 4x4 quadrants, channel by channel.
        m3 = maps[3]
        assert m3.shape[-2:] == (8, 8)
        quadrants = torch.stack(
            [m3[..., :4, :4], m3[..., :4, 4:], m3[..., 4:, :4], m3[..., 4:, 4:]], dim=-1
        ).mean(dim=(2, 3))  # (N, C, 4): top-left, top-right, bottom-left, bottom-right
        torch.testing.assert_close(feats[:, : 4 * 24], quadrants.flatten(1))
        # The mean of a stage's four cells is its global average (even-sized maps).
        cells = feats[:, 4 * 24 :].reshape(2, 80, 4)
        torch.testing.assert_close(cells.mean(-1), model.pooled_stage_features(x, [5])[0])
        assert torch.equal(model(x), model.head(feats))


def test_grid_pooling_of_small_maps_and_pooled_outputs_repeats_values() -> None:
    one = torch.arange(6.0).reshape(2, 3, 1, 1)
    assert torch.equal(grid_average_pool(one, 2), one.flatten(1).repeat_interleave(4, 1))
    flat = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(grid_average_pool(flat, 2), flat.repeat_interleave(4, 1))
    assert torch.equal(grid_average_pool(flat, 1), flat)


@pytest.mark.parametrize(
    "kw",
    [
        {"feature_grid": 2},  # a grid needs a cut
        {"feature_stages": (3,), "feature_grid": 5},
        {"feature_stages": (3,), "feature_grid": -1},
    ],
)
def test_invalid_grids_are_invalid_argument_on_plan_feature_grid(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as info:
        bb.create_model(LITE0, 3, pretrained=False, **kw)
    [violation] = info.value.violations
    assert isinstance(violation, FieldViolation)
    assert violation.field == "plan.feature_grid" and violation.description


@pytest.mark.parametrize("stages", [(0,), (10,), (-1, 3), (3, 3), (5, 3)])
def test_invalid_stages_are_invalid_argument_on_plan_feature_stages(
    stages: tuple[int, ...],
) -> None:
    with pytest.raises(InvalidArgument) as info:
        bb.create_model(LITE0, 3, pretrained=False, feature_stages=stages)
    [violation] = info.value.violations
    assert isinstance(violation, FieldViolation)
    assert violation.field == "plan.feature_stages" and violation.description


# --- training and serving --------------------------------------------------------------------


def test_train_with_a_cut_serves_with_it(tmp_path: Path) -> None:
    classes, train_s, val_s = make_colour_dataset(tmp_path / "data", per_class=8)
    plan = TrainingPlan(
        backbone=LITE0,
        strategy=Strategy.FEATURE_EXTRACTION,
        head_learning_rate=3e-3,
        epochs=2,
        batch_size=8,
        image_size=32,
        weight_decay=0.01,
        seed=7,
        feature_stages=(3, 5),
    )

    def run(plan: TrainingPlan, rec: Recorder) -> Any:
        return train(
            job_id="job-cut",
            plan=plan,
            classes=classes,
            train_samples=train_s,
            val_samples=val_s,
            dataset_fingerprint="fp",
            weights_dir=None,
            checkpoint_dir=tmp_path / "ckpt",
            device=torch.device("cpu"),
            emit=rec.emit,
            should_stop=lambda: False,
            pretrained=False,
        )

    rec = Recorder()
    result = run(plan, rec)
    model = result.model
    assert model.feature_stages == (3, 5) and model.head.in_features == 104
    assert any("on the pooled outputs of stages 3, 5" in m for m in rec.messages())

    # Serving: a registered artifact (state dict + card) rebuilt by the predictor.
    spec = bb.get_spec(LITE0)
    card = ModelCard(
        backbone=LITE0,
        labels=tuple(classes),
        preprocessing=Preprocessing.from_spec(spec, plan.image_size),
        plan=plan,
        job_id="job-cut",
    )
    version = ModelVersion(
        name="m",
        version=1,
        create_time=0.0,
        job_id="job-cut",
        backbone=LITE0,
        labels=tuple(classes),
        sha256="",
        card=card.to_dict(),
        artifact_dir="",
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = build_model(version, state, card)
    assert loaded.model.feature_stages == (3, 5)
    batch = torch.stack([loaded.transform(load_image(s.path.read_bytes())) for s in val_s])
    with torch.inference_mode():
        served = loaded.model(batch.contiguous(memory_format=torch.channels_last))
        trained = model(batch)
    torch.testing.assert_close(served, trained)
    assert torch.equal(served.argmax(1), trained.argmax(1))

    # Without the cut in the card the artifact does not load (strict: the head is 104 wide).
    no_cut = dataclasses.replace(card, plan=dataclasses.replace(plan, feature_stages=()))
    with pytest.raises(RuntimeError, match=r"head\.weight"):
        build_model(version, state, no_cut)

    # The same plan again resumes from the checkpoint and the feature cache...
    rec = Recorder()
    again = run(plan, rec)
    assert again.resumed_from_epoch == 2
    assert any("features read from the cache" in m for m in rec.messages())
    assert torch.equal(again.model.head.weight, model.head.weight)
    # ...while another cut gets neither: its features differ, and so does its plan.
    rec = Recorder()
    other = run(dataclasses.replace(plan, feature_stages=(4,)), rec)
    assert other.resumed_from_epoch == 0 and other.model.head.in_features == 40
    assert any("features computed and cached" in m for m in rec.messages())
    assert any("ignoring the checkpoint" in m for m in rec.messages())
    # ...and the same cut pooled over a 2x2 grid is another cut too: four times as wide,
    # its own cache and checkpoint, and it serves with the grid.
    rec = Recorder()
    gridded = dataclasses.replace(plan, feature_grid=2)
    grid_result = run(gridded, rec)
    assert grid_result.resumed_from_epoch == 0
    assert grid_result.model.feature_grid == 2 and grid_result.model.head.in_features == 4 * 104
    assert any("features computed and cached" in m for m in rec.messages())
    assert any("stages 3, 5 (each over a 2x2 grid)" in m for m in rec.messages())
    grid_card = dataclasses.replace(card, plan=gridded)
    grid_state = {k: v.clone() for k, v in grid_result.model.state_dict().items()}
    served_grid = build_model(version, grid_state, grid_card)
    assert served_grid.model.feature_grid == 2
    with torch.inference_mode():
        torch.testing.assert_close(
            served_grid.model(batch.contiguous(memory_format=torch.channels_last)),
            grid_result.model(batch),
        )
    # A card written before grids existed has no feature_grid: it serves pooled globally.
    old_card = card.to_dict()
    del old_card["plan"]["feature_grid"]
    assert build_model(version, state, ModelCard.from_dict(old_card)).model.feature_grid == 1
