"""graft.training.engine: the trainer and the advisor's pilot and timed steps build and run
the same model, optimiser, schedule and loss, so a pilot measures what a real run does;
and cancellation stops the pilot and the timing. Random-init models on 32 px PNGs."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import graft.training.engine as engine
from graft.advisor.measure import DecodedSample
from graft.advisor.pilot import pilot_fine_tune, time_training_step
from graft.data import Sample, load_image
from graft.domain import Strategy, TrainingPlan
from graft.training import TrainingCancelled, train
from tests.unit.test_training import make_colour_dataset

SERVICE = Path(__file__).resolve().parents[2] / "service" / "graft"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def random_init(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """Every model the engine builds gets random weights (the pilot always asks for the
    pretrained ones); returns the models built, in order, each with its initial state."""
    built: list[nn.Module] = []
    real = engine.create_model

    def create(*args: Any, **kw: Any) -> Any:
        kw["pretrained"] = False
        model = real(*args, **kw)
        model.initial_state = {k: v.clone() for k, v in model.state_dict().items()}
        built.append(model)
        return model

    monkeypatch.setattr(engine, "create_model", create)
    return built


@pytest.fixture(scope="module")
def colours(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[str], list[Sample], list[Sample]]:
    return make_colour_dataset(tmp_path_factory.mktemp("colours"))


def as_sample(samples: list[Sample]) -> DecodedSample:
    return DecodedSample(
        samples=list(samples),
        images=[load_image(s.path) for s in samples],
        labels=[s.label for s in samples],
        decode_seconds_per_image=0.0,
    )


def plan_for(strategy: Strategy, **kw: Any) -> TrainingPlan:
    plan = TrainingPlan(
        backbone="efficientnet_lite0",
        strategy=strategy,
        trainable_stages=3 if strategy == Strategy.PARTIAL_FINE_TUNE else 9,
        head_learning_rate=3e-3,
        base_learning_rate=1e-3,
        epochs=2,
        batch_size=8,
        image_size=32,
        weight_decay=0.01,
        # 36 training images, batch 8: 5 steps per epoch. 0.4 epochs = 2 steps, which is
        # also the pilot's warm-up (half an epoch), so both schedules are the same here.
        warmup_epochs=0.4,
        seed=0,
    )
    return dataclasses.replace(plan, **kw)


class Spy:
    """Records the optimisers, schedule factors and losses the engine makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.optimizers: list[torch.optim.AdamW] = []
        self.factors: list[tuple[int, int, int]] = []
        self.losses: list[nn.CrossEntropyLoss] = []
        real_adamw, real_factor, real_loss = (
            torch.optim.AdamW,
            engine.lr_factor,
            nn.CrossEntropyLoss,
        )
        spy = self

        class AdamW(real_adamw):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, **k)
                spy.optimizers.append(self)

        class Loss(real_loss):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, **k)
                spy.losses.append(self)

        def factor(start: int, warmup: int, total: int) -> Any:
            spy.factors.append((start, warmup, total))
            return real_factor(start, warmup, total)

        monkeypatch.setattr(torch.optim, "AdamW", AdamW)
        monkeypatch.setattr(nn, "CrossEntropyLoss", Loss)
        monkeypatch.setattr(engine, "lr_factor", factor)


def describe_groups(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[Any, ...]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (g["name"], g["lr"], g["weight_decay"], tuple(names[id(p)] for p in g["params"]))
        for g in optimizer.param_groups
    ]


@pytest.mark.parametrize(
    "plan",
    [
        plan_for(Strategy.PARTIAL_FINE_TUNE, label_smoothing=0.1, class_weighting=True),
        plan_for(Strategy.FULL_FINE_TUNE, head_warmup_epochs=1),
    ],
    ids=["partial", "full-head-warmup"],
)
def test_pilot_and_trainer_build_the_same_model_optimiser_schedule_and_loss(
    plan: TrainingPlan,
    colours: tuple[list[str], list[Sample], list[Sample]],
    random_init: list[nn.Module],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    classes, train_s, val_s = colours
    spy = Spy(monkeypatch)
    train(
        job_id="j",
        plan=plan,
        classes=classes,
        train_samples=train_s,
        val_samples=val_s,
        dataset_fingerprint="fp",
        weights_dir=None,
        checkpoint_dir=tmp_path,
        device=torch.device("cpu"),
        emit=lambda e: None,
        should_stop=lambda: False,
        pretrained=False,
        update_bn_statistics=False,  # the pilot keeps pretrained statistics
    )
    sample = as_sample(train_s + val_s)
    n = len(train_s)
    pilot_fine_tune(plan, sample, range(n), range(n, len(sample)), len(classes), epochs=plan.epochs)
    trainer_model, pilot_model = random_init
    trainer_opt, pilot_opt = spy.optimizers

    # The same seeded initial weights (the new head included), the same parameters in the
    # same AdamW groups at the same rates and decays, the same AdamW settings.
    assert trainer_model.initial_state.keys() == pilot_model.initial_state.keys()
    for k, v in trainer_model.initial_state.items():
        assert torch.equal(v, pilot_model.initial_state[k]), k
    assert describe_groups(trainer_model, trainer_opt) == describe_groups(pilot_model, pilot_opt)
    assert trainer_opt.defaults == pilot_opt.defaults
    # After the last epoch the same parameters train.
    trains = [
        {name for name, p in m.named_parameters() if p.requires_grad}
        for m in (trainer_model, pilot_model)
    ]
    assert trains[0] == trains[1]
    # The same schedule: per group (start after the head warm-up, warm-up, total steps).
    groups = len(trainer_opt.param_groups)
    assert spy.factors[:groups] == spy.factors[groups:]
    starts = {start for start, _, _ in spy.factors}
    assert starts == ({0, 5} if plan.head_warmup_epochs else {0})
    # The same loss: label smoothing and class weights of the same training labels.
    trainer_loss, pilot_loss = spy.losses[0], spy.losses[1]
    assert trainer_loss.label_smoothing == pilot_loss.label_smoothing == plan.label_smoothing
    if plan.class_weighting:
        assert trainer_loss.weight is not None and pilot_loss.weight is not None
        assert torch.equal(trainer_loss.weight, pilot_loss.weight)
    else:
        assert trainer_loss.weight is None and pilot_loss.weight is None


def counting_stop(after: int) -> tuple[list[int], Any]:
    """A should_stop that turns True on its `after`-th call; the list counts the calls."""
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] >= after

    return calls, should_stop


def test_should_stop_stops_the_pilot(
    colours: tuple[list[str], list[Sample], list[Sample]],
    random_init: list[nn.Module],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    classes, train_s, val_s = colours
    sample = as_sample(train_s + val_s)
    n = len(train_s)
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE)
    steps: list[int] = []
    real_step = engine.train_step

    def counted_step(*a: Any, **k: Any) -> Any:
        steps.append(1)
        return real_step(*a, **k)

    monkeypatch.setattr(engine, "train_step", counted_step)
    pilot = dict(train_idx=range(n), val_idx=range(n, len(sample)), num_classes=len(classes))

    # Asked before the first epoch: nothing trains.
    calls, stop = counting_stop(1)
    with pytest.raises(TrainingCancelled):
        pilot_fine_tune(plan, sample, **pilot, epochs=2, should_stop=stop)  # type: ignore[arg-type]
    assert calls == [1] and steps == []

    # Before epoch 1, then before each of its 5 steps, then before epoch 2: the 7th call
    # stops it between the epochs, after exactly one epoch's steps.
    calls, stop = counting_stop(7)
    with pytest.raises(TrainingCancelled, match="before epoch 2"):
        pilot_fine_tune(plan, sample, **pilot, epochs=2, should_stop=stop)  # type: ignore[arg-type]
    assert calls == [7] and len(steps) == 5

    # Mid-epoch: the 3rd call is before the 2nd step, which does not run.
    steps.clear()
    calls, stop = counting_stop(3)
    with pytest.raises(TrainingCancelled, match="epoch 1, step 2"):
        pilot_fine_tune(plan, sample, **pilot, epochs=2, should_stop=stop)  # type: ignore[arg-type]
    assert len(steps) == 1

    # Never True: the pilot runs to its score.
    result = pilot_fine_tune(plan, sample, **pilot, epochs=1, should_stop=lambda: False)  # type: ignore[arg-type]
    assert 0.0 <= result.accuracy <= 1.0 and result.val_images == len(val_s)


def test_should_stop_stops_the_timed_training_steps(
    colours: tuple[list[str], list[Sample], list[Sample]], random_init: list[nn.Module]
) -> None:
    classes, train_s, _ = colours
    sample = as_sample(train_s)
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE)
    calls, stop = counting_stop(2)
    with pytest.raises(TrainingCancelled):
        time_training_step(plan, sample, len(classes), should_stop=stop)
    assert calls == [2]
    assert time_training_step(plan, sample, len(classes)) > 0


def test_the_pilot_drops_a_last_batch_of_one_image_as_the_trainer_does(
    colours: tuple[list[str], list[Sample], list[Sample]],
    random_init: list[nn.Module],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    classes, train_s, _ = colours
    sample = as_sample(train_s)
    sizes: list[int] = []
    real_step = engine.train_step

    def counted_step(model: Any, inputs: torch.Tensor, *a: Any, **k: Any) -> Any:
        sizes.append(len(inputs))
        return real_step(model, inputs, *a, **k)

    monkeypatch.setattr(engine, "train_step", counted_step)
    # 33 training images in batches of 8: four steps, the 33rd image is left out.
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE)
    pilot_fine_tune(plan, sample, range(33), range(33, 36), len(classes), epochs=1)
    assert sizes == [8, 8, 8, 8]


def _calls(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            yield f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


# What only the engine (and strategies.py, which it calls) may construct or set.
ENGINE_ONLY = {
    "AdamW",
    "LambdaLR",
    "CrossEntropyLoss",
    "create_model",
    "apply_strategy",
    "param_groups",
    "set_trainable",
    "set_train_mode",
}


def test_only_the_engine_builds_models_optimisers_schedules_and_losses() -> None:
    """So that the trainer, the pilot and the timing cannot drift apart again: a module that
    trains goes through graft.training.engine."""
    modules = [
        *sorted((SERVICE / "training").glob("*.py")),
        SERVICE / "advisor" / "pilot.py",
        SERVICE / "advisor" / "measure.py",
    ]
    allowed = {"engine.py", "strategies.py"}
    offenders = {
        f"{path.name}: {name}"
        for path in modules
        if path.name not in allowed
        for name in _calls(path)
        if name in ENGINE_ONLY
    }
    assert offenders == set()


def test_train_epoch_tallies_the_top1_of_the_batches_as_trained() -> None:
    """With a learning rate of 0 nothing moves, so the tally must equal the top-1 of the
    same model on the same batches; a second tally over an epoch counts from 0 again."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    expected = float((model(x).argmax(1) == y).float().mean())
    for _ in range(2):
        tally = engine.Tally(torch.device("cpu"))
        engine.train_epoch(
            model,
            batches,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=nn.CrossEntropyLoss(),
            device=torch.device("cpu"),
            should_stop=lambda: False,
            epoch=1,
            tally=tally,
        )
        assert tally.images == 20 and tally.accuracy() == pytest.approx(expected)
    assert 0 < expected < 1  # the seed gives a mix of hits and misses, so this can fail
    assert engine.Tally(torch.device("cpu")).accuracy() == 0.0
