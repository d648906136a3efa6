"""One job on several processes (graft.training.distributed, launch): two gloo ranks on the
CPU against one process on the same data, cancellation, resume, a failing rank, the worker's
device list. Random-init ResNet-18 on the 32 px colour images of test_training.

Tolerances, measured (docs/TRAINING.md § Several devices): one step's DDP gradient equals
the one-process gradient to 6e-7 (relative L2), and the per-step losses match to 2e-6 while
the weights are still the same up to rounding. Over ten AdamW steps of the whole network
the rounding of two half-batches instead of one batch grows (Adam's first steps move every
weight by about the learning rate whatever its gradient's size, so a gradient near 0 flips
sign on noise): the final weights differ by 4e-4 (relative L2), the last validation loss
by 2e-4. One process splitting each batch the same way gets DDP's weights bit for bit: the
rounding is all there is.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import graft.training.engine as engine
from graft.backbones import create_model
from graft.config import Config
from graft.data import Sample
from graft.domain import DatasetRef, EventKind, JobState, Strategy, TrainingPlan
from graft.training import TrainingCancelled, load_checkpoint, train
from graft.training.distributed import DistributedRank, GlobalMeanLoss, sharded_steps
from graft.training.launch import DataParallelTraining, select_devices, train_on_devices
from graft.training.setup import TrainingData, epoch_generator, loader
from graft.training.state import TrainResult
from graft.training.strategies import set_train_mode
from graft.worker import Worker
from tests.unit.test_training import Recorder, assert_same_state, make_colour_dataset, plan_for

CPU = torch.device("cpu")
Data = tuple[list[str], list[Sample], list[Sample]]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the spawned ranks take the same number


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Data:
    classes, train_s, val_s = make_colour_dataset(tmp_path_factory.mktemp("colours"))
    # 35 images: the last batch of 3 splits 2 / 1, so the ranks' shares differ in size.
    return classes, train_s[:-1], val_s


def the_plan(**kw: Any) -> TrainingPlan:
    """Full fine-tune after a head warm-up (DDP wraps again when the base starts training),
    class weights and label smoothing (GlobalMeanLoss's weighted mean), no augmentation."""
    settings: dict[str, Any] = dict(
        backbone="resnet18",
        epochs=3,
        head_warmup_epochs=1,
        class_weighting=True,
        label_smoothing=0.1,
    )
    return plan_for(Strategy.FULL_FINE_TUNE, **(settings | kw))


def job(data: Data, plan: TrainingPlan, ckpt: Path) -> dict[str, Any]:
    classes, train_s, val_s = data
    # BatchNorm statistics kept (eval mode), as for every pretrained model: no statistics
    # differ between one batch of 8 and two of 4.
    return dict(
        job_id="job-1",
        plan=plan,
        classes=classes,
        train_samples=train_s,
        val_samples=val_s,
        dataset_fingerprint="fp-1",
        weights_dir=None,
        checkpoint_dir=ckpt,
        pretrained=False,
        update_bn_statistics=False,
        step_event_interval=0.0,
    )


def relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    diff = sum(float((a[k] - b[k]).double().square().sum()) for k in keys)
    norm = sum(float(a[k].double().square().sum()) for k in keys)
    return (diff / norm) ** 0.5


@dataclasses.dataclass
class Run:
    result: TrainResult
    events: Recorder
    ckpt: Path
    ranks: list[Any] = dataclasses.field(default_factory=list)


@pytest.fixture(scope="module")
def one_rank(colours: Data, tmp_path_factory: pytest.TempPathFactory) -> Run:
    rec, ckpt = Recorder(), tmp_path_factory.mktemp("one")
    result = train(**job(colours, the_plan(), ckpt), device=CPU, emit=rec.emit, should_stop=never)
    return Run(result, rec, ckpt)


@pytest.fixture(scope="module")
def two_ranks(colours: Data, tmp_path_factory: pytest.TempPathFactory) -> Run:
    rec, ckpt = Recorder(), tmp_path_factory.mktemp("two")
    ddp = DataParallelTraining([CPU, CPU], timeout=120.0)
    result = ddp.train(**job(colours, the_plan(), ckpt), emit=rec.emit, should_stop=never)
    return Run(result, rec, ckpt, ddp.reports)


def never() -> bool:
    return False


# --- the pieces, in one process ------------------------------------------------------------


@pytest.mark.parametrize(("n", "world"), [(35, 2), (35, 3), (33, 2), (6, 3)])
def test_the_ranks_shares_are_the_one_process_batches(n: int, world: int) -> None:
    plan = TrainingPlan(batch_size=8, seed=7)
    drop_last = n > 8 and n % 8 == 1
    data = TrainingData(
        TensorDataset(torch.arange(n)),
        None,
        plan,
        drop_last,
        0,
        False,  # type: ignore[arg-type]
    )
    for epoch in (0, 1):
        one = [b[0].tolist() for b in data.train_loader(epoch)]
        ranks = [DistributedRank(r, world, CPU) for r in range(world)]
        shares = [[b[0].tolist() for b in rank.train_batches(data, epoch)] for rank in ranks]
        # A last batch of fewer images than ranks is skipped; all others are split.
        kept = [b for b in one if len(b) >= world]
        assert len(kept) == sharded_steps(n, 8, drop_last, world) == len(shares[0])
        assert all(len(s) == len(kept) for s in shares)
        for step, batch in enumerate(kept):
            assert sorted(i for s in shares for i in s[step]) == sorted(batch)
            assert [rank.global_batch_size(step + 1) for rank in ranks] == [len(batch)] * world
    assert one != [b[0].tolist() for b in data.train_loader(0)]  # each epoch reshuffles


@pytest.mark.parametrize(("n", "drop_last"), [(35, False), (33, True), (32, False), (5, False)])
def test_tensors_in_memory_come_in_a_plain_dataloaders_batches(n: int, drop_last: bool) -> None:
    """setup.loader gathers cached features a batch at a time: the batches and their order
    must be exactly those DataLoader(shuffle=True, generator=…) draws from the same seed
    (and shuffle=False for validation), or a change of loader would change every model."""
    data = TensorDataset(torch.randn(n, 3), torch.arange(n))
    for epoch in (0, 1):
        fast = list(loader(data, 8, generator=epoch_generator(7, epoch), drop_last=drop_last))
        plain = list(
            DataLoader(
                data,
                batch_size=8,
                shuffle=True,
                generator=epoch_generator(7, epoch),
                drop_last=drop_last,
            )
        )
        assert len(fast) == len(plain) == (n // 8 if drop_last else -(-n // 8))
        for (x, y), (px, py) in zip(fast, plain, strict=True):
            assert torch.equal(x, px) and torch.equal(y, py)
    ordered = torch.cat([y for _, y in loader(data, 8)])
    assert ordered.tolist() == list(range(n))


@pytest.mark.parametrize("preference", ["", "cpu", "cpu,cpu", " cpu , cpu "])
def test_device_lists(preference: str) -> None:
    devices = select_devices(preference)
    assert len(devices) == max(1, preference.count(",") + 1)
    assert all(isinstance(d, torch.device) for d in devices)


@pytest.mark.parametrize("preference", ["cpu,", "cuda:0,cuda:0", "cuda:0,cpu"])
def test_bad_device_lists(preference: str) -> None:
    with pytest.raises(ValueError, match="device list"):
        select_devices(preference)


def test_feature_extraction_stays_on_one_process(colours: Data, tmp_path: Path) -> None:
    plan = plan_for(Strategy.FEATURE_EXTRACTION, epochs=1)
    rec = Recorder()
    result = train_on_devices(
        [CPU, CPU], **job(colours, plan, tmp_path), emit=rec.emit, should_stop=never
    )
    assert result.epochs_run == 1
    assert not any("data-parallel" in m for m in rec.messages())


def test_sync_batchnorm_conversion_keeps_weights_names_and_freezing() -> None:
    """Where BatchNorm statistics train on CUDA, prepare() converts to SyncBatchNorm. The
    conversion runs without a GPU (only a training-mode forward needs one): it must keep the
    state dict, the very parameter objects, and what set_train_mode puts in eval mode."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, pretrained=False)
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    expected = model.eval()(x)
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, batch_size=4)
    data = TrainingData(
        TensorDataset(torch.zeros(16)),
        None,
        plan,
        False,
        0,
        False,  # type: ignore[arg-type]
    )
    DistributedRank(0, 2, torch.device("cuda")).prepare(model, data, update_bn=True)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert data.steps_per_epoch == 4
    assert_same_state(before, model.state_dict())
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    torch.testing.assert_close(model.eval()(x), expected)
    set_train_mode(model, plan, update_bn_statistics=True)
    stages = model.stage_modules()
    frozen = [m for stage in stages[:-3] for s in stage for m in s.modules() if m in norms]
    trained = [m for stage in stages[-3:] for s in stage for m in s.modules() if m in norms]
    assert frozen and trained
    assert not any(m.training for m in frozen) and all(m.training for m in trained)


# --- two gloo ranks against one process ----------------------------------------------------


def _gradient_rank(
    rank: int, port: int, store: dist.Store | None = None
) -> dict[str, torch.Tensor]:
    """Rank `rank` of two: one step's DDP gradient on its share of a batch of 3 (2 / 1)."""
    torch.set_num_threads(1)
    store = store or dist.TCPStore("127.0.0.1", port, 2, False)
    ddp = DistributedRank.join(store, rank, 2, CPU, timeout=60.0)
    try:
        model, (x, y), loss_fn = _gradient_problem()
        wrapped = ddp.begin_epoch(model, seed=0, epoch=0)
        GlobalMeanLoss(loss_fn, 2)(wrapped(x[rank::2]), y[rank::2]).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    finally:
        ddp.close()


def _gradient_problem() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], nn.Module]:
    torch.manual_seed(0)
    model = create_model("resnet18", 3, pretrained=False).eval()  # BatchNorm as when kept
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    weight = torch.tensor([0.5, 1.5, 3.0])
    return model, (x, torch.tensor([0, 2, 2])), nn.CrossEntropyLoss(weight, label_smoothing=0.1)


def test_one_step_gradient_equals_the_one_process_gradient() -> None:
    model, (x, y), loss_fn = _gradient_problem()
    loss_fn(model(x), y).backward()
    expected = {k: p.grad for k, p in model.named_parameters()}
    store = dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)
    child = mp.get_context("spawn").Process(target=_gradient_rank, args=(1, store.port))
    child.start()
    try:
        got = _gradient_rank(0, store.port, store)
    finally:
        child.join(60)
    assert child.exitcode == 0
    assert got.keys() == expected.keys()
    assert relative_l2(expected, got) < 1e-5  # measured 6e-7


def test_two_ranks_match_one(one_rank: Run, two_ranks: Run) -> None:
    one, two = one_rank.result, two_ranks.result
    assert relative_l2(one.model.state_dict(), two.model.state_dict()) < 5e-3  # measured 4e-4
    assert (two.epochs_run, two.best_epoch) == (one.epochs_run, one.best_epoch)
    assert two.metrics.accuracy == one.metrics.accuracy
    for a, b in zip(
        one_rank.events.of(EventKind.EVALUATION),
        two_ranks.events.of(EventKind.EVALUATION),
        strict=True,
    ):
        assert a.metrics is not None and b.metrics is not None
        assert b.metrics.confusion == a.metrics.confusion  # every validation image, once
        assert b.metrics.loss == pytest.approx(a.metrics.loss, rel=5e-3 if a.epoch == 3 else 1e-5)

    # One event stream, the one-process stream plus one message: rank 1's events go nowhere.
    assert [
        (e.kind, e.epoch, e.step)
        for e in two_ranks.events.events
        if "data-parallel" not in e.message
    ] == [(e.kind, e.epoch, e.step) for e in one_rank.events.events]
    steps = list(
        zip(one_rank.events.of(EventKind.STEP), two_ranks.events.of(EventKind.STEP), strict=True)
    )
    assert len(steps) == 15
    for a, b in steps[:6]:  # the head warm-up, and the first step of the whole network
        assert b.loss == pytest.approx(a.loss, rel=1e-5)
    for a, b in steps[6:]:
        assert b.loss == pytest.approx(a.loss, rel=1e-2)

    # Rank 1 took every step with rank 0 and wrote no checkpoint; rank 0 wrote the job's.
    (report,) = two_ranks.ranks
    assert (report.rank, report.steps, report.checkpoints, report.outcome) == (1, 15, 0, "finished")
    ckpt = load_checkpoint(two_ranks.ckpt)
    assert ckpt is not None and ckpt.epoch == 3
    assert [h["epoch"] for h in ckpt.history] == [1, 2, 3]


def split_step(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: nn.CrossEntropyLoss,
    device: torch.device,
    tally: engine.Tally | None = None,
) -> tuple[torch.Tensor, float]:
    """engine.train_step as two ranks compute it, in one process: the batch's two shares
    (images 0, 2, … and 1, 3, …), each loss weighted as GlobalMeanLoss weights it, the
    gradients averaged as DDP averages them, the hits counted as the ranks' tallies."""
    optimizer.zero_grad(set_to_none=True)
    shares = [(inputs[r::2], targets[r::2]) for r in range(2)]
    weights = [
        loss_fn.weight[t].sum() if loss_fn.weight is not None else torch.tensor(float(len(t)))
        for _, t in shares
    ]
    total, mean = sum(weights), torch.zeros(())
    for (x, t), w in zip(shares, weights, strict=True):
        logits = model(x.contiguous(memory_format=torch.channels_last))
        if tally is not None:
            tally.add(logits, t)
        local = loss_fn(logits.float(), t)
        (local * (2 * w / total) / 2).backward()
        mean = mean + local.detach() * w / total
    lr: float = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return mean, lr


def test_two_ranks_compute_what_one_process_computes_with_the_same_split(
    colours: Data, two_ranks: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What separates two ranks from one process is the float rounding of two half-batches
    instead of one batch: with that split made in one process, DDP's result is the same to
    the last bit here (the bound leaves room for other kernels' rounding). So sharding,
    weighting, averaging, wrapping again after the warm-up, and the gathered validation
    are exact."""
    monkeypatch.setattr(engine, "train_step", split_step)
    rec = Recorder()
    split = train(
        **job(colours, the_plan(), tmp_path), device=CPU, emit=rec.emit, should_stop=never
    )
    # The training accuracy of both ranks' shares together, as the one process counts it.
    trained = [e.train_accuracy for e in rec.of(EventKind.EVALUATION)]
    assert trained == [e.train_accuracy for e in two_ranks.events.of(EventKind.EVALUATION)]
    assert len(trained) == 3 and max(trained) > 0
    assert relative_l2(split.model.state_dict(), two_ranks.result.model.state_dict()) < 1e-7
    assert split.metrics.loss == pytest.approx(two_ranks.result.metrics.loss, rel=1e-6)
    assert split.metrics.confusion == two_ranks.result.metrics.confusion


@pytest.mark.slow  # two two-rank runs: about 25 s here
def test_a_cancel_stops_both_ranks_and_either_count_resumes(
    colours: Data, one_rank: Run, two_ranks: Run, tmp_path: Path
) -> None:
    rec = Recorder(stop_after_epoch=1)  # CancelJob right after epoch 1's evaluation
    ddp = DataParallelTraining([CPU, CPU], timeout=120.0)
    with pytest.raises(TrainingCancelled):
        ddp.train(
            **job(colours, the_plan(), tmp_path / "a"), emit=rec.emit, should_stop=lambda: rec.stop
        )
    (report,) = ddp.reports
    assert (report.steps, report.outcome) == (5, "cancelled")  # rank 1 stopped at the same step
    first = load_checkpoint(tmp_path / "a")
    assert first is not None and first.epoch == 1
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    rec = Recorder()
    again = DataParallelTraining([CPU, CPU], timeout=120.0)
    resumed = again.train(
        **job(colours, the_plan(), tmp_path / "a"), emit=rec.emit, should_stop=never
    )
    assert (resumed.resumed_from_epoch, resumed.epochs_run) == (1, 3)
    assert any("resumed from checkpoint at epoch 1" in m for m in rec.messages())
    assert [e.epoch for e in rec.of(EventKind.EVALUATION)] == [2, 3]
    assert again.reports[0].steps == 10
    # Every rank loaded the checkpoint: the result is the uninterrupted two-rank run's.
    assert_same_state(two_ranks.result.model.state_dict(), resumed.model.state_dict())

    # A worker with one device resumes it too (the job's next attempt may land anywhere).
    alone = train(
        **job(colours, the_plan(), tmp_path / "b"),
        device=CPU,
        emit=Recorder().emit,
        should_stop=never,
    )
    assert (alone.resumed_from_epoch, alone.epochs_run) == (1, 3)
    assert relative_l2(one_rank.result.model.state_dict(), alone.model.state_dict()) < 5e-3


def test_a_failing_rank_fails_the_job_at_once(colours: Data, tmp_path: Path) -> None:
    classes, train_s, val_s = colours
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    # The last validation image is in rank 1's shard: rank 1 fails while rank 0 waits for it.
    val = [*val_s[:-1], Sample(broken, val_s[-1].label)]
    ddp = DataParallelTraining([CPU, CPU], timeout=120.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="training rank 1 failed: "):
        ddp.train(
            **job(
                (classes, train_s, val), the_plan(epochs=1, head_warmup_epochs=0), tmp_path / "c"
            ),
            emit=Recorder().emit,
            should_stop=never,
        )
    assert time.monotonic() - started < 60  # not the 120 s collective timeout
    assert load_checkpoint(tmp_path / "c") is None


@pytest.mark.slow  # a worker's job end to end, with a spawned rank: about 15 s here
@pytest.mark.pretrained
def test_a_worker_with_two_devices_trains_a_job_on_both(tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "two"
    for label, shade in (("a", 40), ("b", 210)):
        (root / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (16, 16), (shade, shade - 30 + 6 * i, 90)).save(
                root / label / f"{i}.png"
            )
    config = Config(data_dir=tmp_path / "data", data_roots=(root.parent,), device="cpu,cpu")
    worker = Worker(config, "w1")
    try:
        assert worker.devices == [CPU, CPU]
        plan = TrainingPlan(
            strategy=Strategy.PARTIAL_FINE_TUNE, epochs=2, batch_size=8, image_size=32
        )
        job, _ = worker.store.create_job(
            model_name="shades",
            dataset=DatasetRef(uri=str(root)),
            plan=plan,
            request_id="",
            plan_resolved=False,
        )
        claimed = worker.store.claim_job("w1", 60)
        assert claimed is not None
        worker.run_job(claimed)
        done = worker.store.get_job(job.job_id)
        assert (done.state, done.model_version) == (JobState.SUCCEEDED, 1), done.error
        events = worker.store.events_after(job.job_id, 0)
        # One stream: numbered without gap, one EVALUATION per epoch, from rank 0 alone.
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert [e.epoch for e in events if e.kind == EventKind.EVALUATION] == [1, 2]
        assert sum("data-parallel training on 2 processes" in e.message for e in events) == 1
    finally:
        worker.store.close()
