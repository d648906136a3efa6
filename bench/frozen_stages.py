"""Partial fine-tuning with the frozen stages run once (graft.training.prefix) against
running them every epoch, same run, same plan (docs/TRAINING.md § The frozen stages, once).

    OMP_NUM_THREADS=2 .venv/bin/python bench/frozen_stages.py [--per-class 300]
        [--trainable 3] [--epochs 3] [--image-size 64]

On a Fashion-MNIST subset with EfficientNet-Lite0's real weights and the worker's own
`train()`, augmentation off (the plan for a large dataset): each way's wall time, its
ratio, and both runs' validation accuracy, which must be the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from graft.backbones import get_spec
from graft.data import scan_dataset, split_dataset
from graft.domain import Strategy, TrainingPlan
from graft.plans.defaults import resolve_plan
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from _inprocess import train_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--trainable", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-frozen-") as tmp_name:
        tmp = Path(tmp_name)
        ds = scan_dataset(
            write_fashion_mnist_folder(tmp / "train", per_class=args.per_class, split="train")
        )
        plan = resolve_plan(
            TrainingPlan(
                backbone="efficientnet_lite0",
                strategy=Strategy.PARTIAL_FINE_TUNE,
                trainable_stages=args.trainable,
                epochs=args.epochs,
                image_size=args.image_size,
                augmentation=False,
            ),
            get_spec("efficientnet_lite0"),
            num_train_images=len(ds.samples),
            median_size=ds.median_size,
        )
        tr, va = split_dataset(ds, plan.validation_fraction, plan.seed)
        print(
            f"Fashion-MNIST {args.per_class}/class: {len(tr)} train / {len(va)} val images, "
            f"partial fine-tune of the top {plan.trainable_stages} stages, {plan.epochs} epochs, "
            f"batch {plan.batch_size}, {plan.image_size} px, augmentation off"
        )
        results = {}
        for cached in (False, True):
            t0 = time.perf_counter()
            result = train_split(
                plan,
                ds,
                tr,
                va,
                tmp / f"ckpt-{cached}",
                job_id="cached" if cached else "every-epoch",
                cache_frozen_stages=cached,
            )
            results[cached] = (time.perf_counter() - t0, result.metrics.accuracy)
            label = "frozen stages once " if cached else "every epoch        "
            wall, accuracy = results[cached]
            print(f"  {label} {wall:6.1f} s, validation accuracy {100 * accuracy:.2f}%")
        print(f"  speed-up: {results[False][0] / results[True][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
