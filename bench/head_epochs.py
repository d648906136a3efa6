"""How many epochs does a feature-extraction head need, and what does one cost? (docs/TRAINING.md
§ The head's epochs on cached features.)

    OMP_NUM_THREADS=2 .venv/bin/python bench/head_epochs.py --per-class 1000 --stages 5+6+7
        [--grid 2] [--epochs 30,10,6] [--test-per-class 300]

On a Fashion-MNIST subset, feature extraction on EfficientNet-Lite0's cut (`--stages` pooled
over a `--grid`) trained by the worker's own `train()` in-process, once per epoch count, the
features computed once and read from the run's cache after that; each model scored on
held-out test images. Then, in the same run, one head epoch's batches drawn from the cached
features by a plain DataLoader against `training.setup.loader` (the batches are the same; the
ratio is the loader's speed-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, TensorDataset

from graft.backbones import get_spec
from graft.data import scan_dataset, split_dataset
from graft.domain import Strategy, TrainingPlan
from graft.plans.defaults import resolve_plan
from graft.training.features import FEATURES_FILE
from graft.training.setup import epoch_generator, loader
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from _inprocess import train_split
from departure_sizes import _test_accuracy

BACKBONE = "efficientnet_lite0"


def _loader_seconds(data: TensorDataset, batch_size: int, fast: bool, repeats: int) -> float:
    best = float("inf")
    for r in range(repeats):
        g = epoch_generator(0, r)
        batches = (
            loader(data, batch_size, generator=g)
            if fast
            else DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
        )
        t0 = time.perf_counter()
        for _ in batches:
            pass
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--stages", default="5+6+7")
    parser.add_argument("--grid", type=int, default=2)
    parser.add_argument("--epochs", default="30,10,6")
    parser.add_argument("--test-per-class", type=int, default=300)
    args = parser.parse_args()
    stages = tuple(int(s) for s in args.stages.split("+"))
    with tempfile.TemporaryDirectory(prefix="graft-head-epochs-") as tmp_name:
        tmp = Path(tmp_name)
        data = write_fashion_mnist_folder(tmp / "train", per_class=args.per_class, split="train")
        test = write_fashion_mnist_folder(tmp / "test", per_class=args.test_per_class, split="test")
        ds = scan_dataset(data)
        base = resolve_plan(
            TrainingPlan(
                strategy=Strategy.FEATURE_EXTRACTION,
                backbone=BACKBONE,
                image_size=64,
                feature_stages=stages,
                feature_grid=args.grid,
            ),
            get_spec(BACKBONE),
            num_train_images=len(ds.samples),
            median_size=ds.median_size,
        )
        tr, va = split_dataset(ds, base.validation_fraction, base.seed)
        steps = -(-len(tr) // base.batch_size)
        print(
            f"Fashion-MNIST {args.per_class}/class ({len(tr)} train / {len(va)} val, "
            f"{steps} steps an epoch), cut {args.stages} grid {args.grid}; "
            f"test {args.test_per_class}/class"
        )

        def run(epochs: int) -> tuple[TrainingPlan, torch.nn.Module, float]:
            plan = dataclasses.replace(base, epochs=epochs)
            t0 = time.perf_counter()
            # One checkpoint folder: the features' cache is shared by the runs.
            result = train_split(plan, ds, tr, va, tmp / "run", job_id=f"epochs-{epochs}")
            return plan, result.model, time.perf_counter() - t0

        print(f"  the features pass and one head epoch: {run(1)[2]:.1f} s")
        for epochs in (int(e) for e in args.epochs.split(",")):
            plan, model, wall = run(epochs)
            accuracy = _test_accuracy(model, plan, ds.classes, test)
            print(
                f"  {epochs:3d} epochs ({epochs * steps} steps): test {100 * accuracy:.2f}%, "
                f"training on the cached features {wall:.1f} s"
            )
        features = _cached_training_features(tmp / "run" / FEATURES_FILE)
        plain = _loader_seconds(features, base.batch_size, fast=False, repeats=5)
        fast = _loader_seconds(features, base.batch_size, fast=True, repeats=5)
        print(
            f"one head epoch's batches from {len(features)} cached feature rows "
            f"({features.tensors[0].shape[1]} wide), best of 5: DataLoader {1000 * plain:.0f} ms, "
            f"setup.loader {1000 * fast:.0f} ms: {plain / fast:.1f}x"
        )
    return 0


def _cached_training_features(path: Path) -> TensorDataset:
    with safe_open(str(path), framework="pt") as f:
        return TensorDataset(f.get_tensor("train_x"), f.get_tensor("train_y"))


if __name__ == "__main__":
    sys.exit(main())
