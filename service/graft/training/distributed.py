"""One job trained by N processes with DistributedDataParallel: what one rank changes.

Every rank runs the same `loop.train` over the whole job, given a `DistributedRank` (launch.py
starts the ranks). N ranks run the one-process training with its work split, not another
algorithm (docs/TRAINING.md § Several devices):

- *batches*: the one-process run's global batches, same seeded shuffle; rank r takes the
  images r, r + N, … of each (ShardedBatches);
- *gradients*: DDP averages the ranks' gradients; each rank's loss is weighted so that the
  average is the gradient of the global batch's mean loss (GlobalMeanLoss);
- *model*: wrapped in DistributedDataParallel, again whenever what trains changes (the head
  warm-up's end);
- *BatchNorm*: frozen stages and kept statistics stay in eval mode, as in one process;
  where statistics train, SyncBatchNorm on CUDA, each rank's own images on the CPU;
- *validation*: each rank predicts a contiguous shard; the logits are gathered, so every
  rank computes the one-process metrics;
- *stopping*: rank 0's `should_stop()` and `stop_at_checkpoint()`, broadcast to all;
- *events and checkpoints*: rank 0's only (the loop asks `is_main`);
- *random draws* (augmentation): reseeded per (seed, epoch, rank) at each epoch.

Collectives: every rank must reach them in the same order. Per step: the stop flag, the
loss's two sums, DDP's gradient buckets; per epoch: the buffers and the gathered logits of
validation, the training accuracy's two sums, then the stop-at-checkpoint flag. Nothing
else communicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence, Sized
from datetime import timedelta
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, Subset

from graft.backbones.spec import GraftModel
from graft.domain import EvaluationMetrics, Strategy
from graft.errors import FailedPrecondition
from graft.training.engine import Tally, predict
from graft.training.evaluation import evaluate_predictions
from graft.training.setup import TrainingData, epoch_generator


def backend_for(device: torch.device) -> str:
    # NCCL carries the CUDA tensors (gradients, the loss's sums); gloo the CPU ones (the
    # stop flag, the gathered validation logits), which NCCL cannot.
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def sharded_steps(n: int, batch_size: int, drop_last: bool, world_size: int) -> int:
    """Steps per epoch of N ranks: the one-process count, less a last batch of fewer than
    N images (which ShardedBatches skips)."""
    last = 0 if drop_last else n % batch_size
    return n // batch_size + (1 if last >= world_size else 0)


class ShardedBatches(Sampler[list[int]]):
    """Rank `rank`'s share of each batch of `batches`: its items rank, rank + N, … So the N
    ranks together see exactly the one-process run's batches. A batch of fewer than N items
    (only the last can be) is skipped: a rank without images could not join the step."""

    def __init__(self, batches: BatchSampler, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.sizes: list[int] = []  # the global batch size of each step yielded so far

    def __iter__(self) -> Iterator[list[int]]:
        self.sizes = []
        for batch in self.batches:
            if len(batch) >= self.world_size:
                self.sizes.append(len(batch))
                yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(cast(Sized, self.batches.sampler))
        return sharded_steps(n, self.batches.batch_size, self.batches.drop_last, self.world_size)


class GlobalMeanLoss(nn.Module):
    """The global batch's cross-entropy, from one rank's share of it.

    CrossEntropyLoss's mean is weighted: sum_i w[y_i] l_i / sum_i w[y_i] (w = 1 without class
    weights; label smoothing's term is normalised the same way). With W_r the weight of rank
    r's images and L_r its local mean, the global mean is sum_r W_r L_r / W (W = sum_r W_r),
    whose gradient is sum_r (W_r / W) grad L_r. DDP averages the ranks' gradients, so each
    rank back-propagates N W_r / W · L_r. The value returned is the global mean itself (what
    one process reports), with the gradient of the rank's weighted share.
    """

    def __init__(self, inner: nn.CrossEntropyLoss, world_size: int) -> None:
        super().__init__()
        self.inner, self.world_size = inner, world_size

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        local = self.inner(logits, targets)
        weight = self.inner.weight
        w = weight[targets].sum() if weight is not None else logits.new_tensor(len(targets))
        sums = torch.stack([w, local.detach() * w])
        dist.all_reduce(sums)  # [W, sum_r W_r L_r]: the same on every rank
        share = local * (self.world_size * w / sums[0])
        return share + (sums[1] / sums[0] - share).detach()


class DistributedRank:
    """One rank of a job's process group, and the hooks `loop.train` calls on it."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.sync_buffers = False
        self._wrapped: DistributedDataParallel | None = None
        self._wrapped_for: tuple[bool, ...] = ()
        self._batches: ShardedBatches | None = None

    @classmethod
    def join(
        cls, store: dist.Store, rank: int, world_size: int, device: torch.device, timeout: float
    ) -> DistributedRank:
        """Join the process group whose rendezvous is `store` (a TCPStore rank 0 holds).
        `timeout` (seconds) bounds every collective: a rank that stops answering fails the
        others after it (one that dies fails them at once: its connections close)."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend_for(device),
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout),
        )
        return cls(rank, world_size, device)

    def close(self) -> None:
        """Leave the process group (also after an error: a group left open aborts the
        process at exit)."""
        self._wrapped = None
        if dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that sends events, writes checkpoints and decides to stop."""
        return self.rank == 0

    def prepare(self, model: GraftModel, data: TrainingData, *, update_bn: bool) -> None:
        """Before the first epoch (and the optimiser): the steps of a sharded epoch, and
        BatchNorm layers whose statistics train (`update_bn`)."""
        if data.plan.strategy == Strategy.FEATURE_EXTRACTION:
            # The head on cached features trains in milliseconds: launch.py keeps such plans
            # on one process, and the features are not sharded.
            raise ValueError("feature extraction trains on one process, not several")
        n = len(cast(Sized, data.train))
        steps = sharded_steps(n, data.plan.batch_size, data.drop_last, self.world_size)
        if steps == 0:
            raise FailedPrecondition(
                f"{n} training images cannot be shared by {self.world_size} processes"
            )
        data.steps_per_epoch = steps
        if not update_bn:
            return  # every BatchNorm is in eval mode: no statistics to share
        if self.device.type == "cuda":
            # Statistics of the global batch on every rank, as one process computes them.
            # timm's conversion also handles its BatchNormAct2d (BatchNorm + activation).
            from timm.layers import convert_sync_batchnorm

            convert_sync_batchnorm(model)
        else:
            # SyncBatchNorm runs on CUDA only: on the CPU each rank normalises with its own
            # images' statistics, and DDP hands rank 0's running statistics to all ranks
            # before each forward, as plain DDP does.
            self.sync_buffers = True

    def begin_epoch(self, module: nn.Module, seed: int, epoch: int) -> nn.Module:
        """The module to train in `epoch` (0-based), after `begin_epoch` set what trains.

        The random draws (augmentation) of each rank start from (seed, epoch, rank): the
        ranks augment their images independently, and a resumed run draws what an
        uninterrupted one would. DDP registers the parameters that need gradients when it
        wraps the module, so it wraps again when that set changes (the head warm-up's end).
        """
        torch.manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + self.rank) % 2**63)
        trains = tuple(p.requires_grad for p in module.parameters())
        if self._wrapped is None or trains != self._wrapped_for:
            self._wrapped = None  # the old wrapper's gradient hooks go first
            self._wrapped = DistributedDataParallel(
                module,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                forward_sync_buffers=self.sync_buffers,
            )
            self._wrapped_for = trains
        return self._wrapped

    def train_batches(self, data: TrainingData, epoch: int) -> DataLoader:
        """This rank's share of epoch `epoch`'s batches: the one-process DataLoader's batches
        (same sampler, same generator, drawn in the same order), each split by ShardedBatches."""
        generator = epoch_generator(data.plan.seed, epoch)
        sampler = RandomSampler(cast(Sized, data.train), generator=generator)
        batches = BatchSampler(sampler, data.plan.batch_size, data.drop_last)
        self._batches = ShardedBatches(batches, self.rank, self.world_size)
        return DataLoader(
            data.train,
            batch_sampler=self._batches,
            generator=generator,
            num_workers=0,
            pin_memory=data.pin_memory,
        )

    def global_batch_size(self, step: int) -> int:
        """Images in step `step` (1-based) of the current epoch, all ranks together."""
        assert self._batches is not None
        return self._batches.sizes[step - 1]

    def agreed(self, decide: Callable[[], bool]) -> Callable[[], bool]:
        """`decide` as rank 0 answers it, on every rank (a collective: all ranks ask at the
        same point). Other ranks never call `decide`."""

        def ask() -> bool:
            flag = torch.tensor([1 if self.is_main and decide() else 0], dtype=torch.uint8)
            dist.broadcast(flag, src=0)
            return bool(flag.item())

        return ask

    def accuracy(self, tally: Tally) -> float:
        """The epoch's training accuracy over all ranks' shares (a collective)."""
        sums = torch.tensor([int(tally.correct.item()), tally.images], dtype=torch.long)
        dist.all_reduce(sums)
        correct, images = sums.tolist()
        return correct / images if images else 0.0

    def evaluate(
        self,
        module: nn.Module,
        loader: DataLoader,
        *,
        labels: Sequence[str],
        device: torch.device,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> EvaluationMetrics:
        """engine.evaluate's metrics of the whole of `loader`'s dataset, each rank predicting
        a contiguous shard. `should_stop` is not asked (a rank stopping alone would leave the
        others waiting in the gather): a cancellation waits for the next step."""
        for buffer in module.buffers():  # rank 0's BatchNorm statistics, for every shard
            dist.broadcast(buffer, src=0)
        n = len(cast(Sized, loader.dataset))
        per = math.ceil(n / self.world_size)
        lo, hi = min(n, self.rank * per), min(n, (self.rank + 1) * per)
        shard = DataLoader(
            Subset(loader.dataset, range(lo, hi)),
            batch_size=loader.batch_size,
            shuffle=False,
            pin_memory=loader.pin_memory,
        )
        logits, targets = predict(module, shard, num_classes=len(labels), device=device)
        return evaluate_predictions(*self._gather(logits, targets.long(), per, n), labels)

    def _gather(
        self, logits: torch.Tensor, targets: torch.Tensor, per: int, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's shard, in rank order (the dataset's order). Shards are padded to
        `per` rows for all_gather, then cut back."""
        padded_logits = torch.zeros(per, logits.shape[1])
        padded_logits[: len(logits)] = logits
        padded_targets = torch.zeros(per, dtype=torch.long)
        padded_targets[: len(targets)] = targets
        all_logits = [torch.empty_like(padded_logits) for _ in range(self.world_size)]
        all_targets = [torch.empty_like(padded_targets) for _ in range(self.world_size)]
        dist.all_gather(all_logits, padded_logits)
        dist.all_gather(all_targets, padded_targets)
        sizes = [min(n, (r + 1) * per) - min(n, r * per) for r in range(self.world_size)]
        return (
            torch.cat([t[:k] for t, k in zip(all_logits, sizes, strict=True)]),
            torch.cat([t[:k] for t, k in zip(all_targets, sizes, strict=True)]),
        )
