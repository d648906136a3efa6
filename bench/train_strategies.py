"""Measure the three strategies on a Fashion-MNIST subset, through `train()` in-process.

    .venv/bin/python bench/train_strategies.py [--per-class 60] [--epochs N] [--device cuda]

Writes `--per-class` PNGs per class to a temporary folder, then runs `train()` once per
strategy with the default plan (epochs overridable) and prints accuracy, wall time and the
checkpoint's size. The figures in docs/TRAINING.md come from this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from graft.backbones import DEFAULT_BACKBONE, get_spec
from graft.data import scan_dataset, split_dataset
from graft.domain import EventKind, ProgressEvent, Strategy, TrainingPlan
from graft.plans import resolve_plan, validate_plan
from graft.training.checkpoint import FILENAME
from graft.training.engine import select_device
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from _inprocess import train_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--epochs", type=int, default=0, help="fine-tune epochs (0: default)")
    ap.add_argument("--fe-epochs", type=int, default=0, help="feature extraction epochs")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--strategies", default="3,2,1", help="strategy numbers, in order")
    ap.add_argument("--device", default="")
    ap.add_argument("--no-pretrained", action="store_true")
    ap.add_argument(
        "--update-bn-statistics", action="store_true", help="let trained stages' BN re-estimate"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = select_device(args.device)
    spec = get_spec(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_fashion_mnist_folder(Path(tmp) / "data", args.per_class)
        ds = scan_dataset(data)
        for number in args.strategies.split(","):
            strategy = Strategy(int(number))
            epochs = args.fe_epochs if strategy == Strategy.FEATURE_EXTRACTION else args.epochs
            given = TrainingPlan(
                backbone=args.backbone,
                strategy=strategy,
                epochs=epochs,
                image_size=args.image_size,
            )
            plan = resolve_plan(
                given, spec, num_train_images=len(ds.samples), median_size=ds.median_size
            )
            validate_plan(plan, spec)
            train_s, val_s = split_dataset(ds, plan.validation_fraction, plan.seed)
            # resolve_plan saw all images; the batch size rule only caps at the train count.
            plan = dataclasses.replace(plan, batch_size=min(plan.batch_size, len(train_s)))
            ckpt = Path(tmp) / f"ckpt-{number}"
            messages: list[str] = []

            def emit(e: ProgressEvent, messages: list[str] = messages) -> None:
                if e.kind == EventKind.MESSAGE:
                    messages.append(e.message)

            t0 = time.monotonic()
            result = train_split(
                plan,
                ds,
                train_s,
                val_s,
                ckpt,
                job_id=f"bench-{number}",
                device=device,
                emit=emit,
                pretrained=not args.no_pretrained,
                update_bn_statistics=True if args.update_bn_statistics else None,
            )
            seconds = time.monotonic() - t0
            size_mb = (ckpt / FILENAME).stat().st_size / 1e6
            print(
                f"{strategy.name.lower():20s} {plan.epochs:3d} epochs  {plan.image_size} px  "
                f"batch {plan.batch_size}  accuracy {result.metrics.accuracy:.3f} "
                f"(best epoch {result.best_epoch})  {seconds:6.1f} s  checkpoint {size_mb:.1f} MB"
                f"  [{len(train_s)} train / {len(val_s)} val, {device}, "
                f"{torch.get_num_threads()} threads]"
            )
            for m in messages:
                if m.startswith("features"):
                    print(f"{'':20s} {m}")


if __name__ == "__main__":
    main()
