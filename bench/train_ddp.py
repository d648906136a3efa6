"""One job on one process against the same job on several (DistributedDataParallel).

    .venv/bin/python bench/train_ddp.py [--per-class 30] [--epochs 3] [--strategy 2]
        [--devices cpu,cpu] [--threads 1] [--no-pretrained]

Writes a Fashion-MNIST subset as PNGs, resolves the default plan of `--strategy` for it,
then trains it twice in this process: `train()` on the first device, and
`DataParallelTraining` over all of `--devices` (this process is rank 0) with the same
global batch. Prints each run's wall time and per-epoch validation loss and accuracy, the
ratio of the times (whole run, process start included; and the epochs after the first,
whose images are decoded and cached by then), and how far the final weights are apart
(relative L2). The figures in
docs/TRAINING.md § Several devices come from this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from graft.backbones import DEFAULT_BACKBONE, get_spec
from graft.data import scan_dataset, split_dataset
from graft.domain import EventKind, ProgressEvent, Strategy, TrainingPlan
from graft.plans import resolve_plan, validate_plan
from graft.training.checkpoint import load_checkpoint
from graft.training.launch import DataParallelTraining, select_devices
from graft.training.loop import train
from graft_devtools.datasets import write_fashion_mnist_folder


def relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    diff = sum(float((a[k] - b[k]).double().square().sum()) for k in keys)
    return (diff / sum(float(a[k].double().square().sum()) for k in keys)) ** 0.5


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--strategy", type=int, default=2, help="1 full or 2 partial fine-tune")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=0, help="global batch (0: the default)")
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each rank")
    ap.add_argument("--no-pretrained", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = select_devices(args.devices)
    spec = get_spec(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        ds = scan_dataset(write_fashion_mnist_folder(Path(tmp) / "data", args.per_class))
        given = TrainingPlan(
            backbone=args.backbone,
            strategy=Strategy(args.strategy),
            epochs=args.epochs,
            batch_size=args.batch_size,
        )
        plan = resolve_plan(
            given, spec, num_train_images=len(ds.samples), median_size=ds.median_size
        )
        validate_plan(plan, spec)
        train_s, val_s = split_dataset(ds, plan.validation_fraction, plan.seed)
        plan = dataclasses.replace(plan, batch_size=min(plan.batch_size, len(train_s)))
        print(
            f"{plan.strategy.name.lower()} of {plan.backbone}, {plan.epochs} epochs, "
            f"{plan.image_size} px, global batch {plan.batch_size}; {len(train_s)} train / "
            f"{len(val_s)} val; {args.threads} thread(s) per rank"
        )
        results = {}
        for name in ("1 rank", f"{len(devices)} ranks"):
            evaluations: list[ProgressEvent] = []

            def emit(e: ProgressEvent, evaluations: list[ProgressEvent] = evaluations) -> None:
                if e.kind == EventKind.EVALUATION:
                    evaluations.append(e)

            job = dict(
                job_id="bench",
                plan=plan,
                classes=ds.classes,
                train_samples=train_s,
                val_samples=val_s,
                dataset_fingerprint=ds.fingerprint,
                weights_dir=None,
                checkpoint_dir=Path(tmp) / name.replace(" ", "-"),
                emit=emit,
                should_stop=lambda: False,
                pretrained=not args.no_pretrained,
            )
            t0 = time.monotonic()
            if name == "1 rank":
                result = train(device=devices[0], **job)  # type: ignore[arg-type]
            else:
                result = DataParallelTraining(devices).train(**job)
            seconds = time.monotonic() - t0
            ckpt = load_checkpoint(Path(str(job["checkpoint_dir"])))
            assert ckpt is not None
            later = sum(float(h["seconds"]) for h in ckpt.history[1:])  # type: ignore[arg-type]
            results[name] = (result, seconds, later)
            per_epoch = "  ".join(
                f"e{e.epoch}: loss {e.loss:.6f} acc {e.metrics.accuracy:.3f}"
                for e in evaluations
                if e.metrics is not None
            )
            print(f"{name:8s} {seconds:6.1f} s (epochs 2+: {later:5.1f} s)   {per_epoch}")
        (one, t1, l1), (many, tn, ln) = results.values()
        print(
            f"time {len(devices)} ranks / 1 rank: {tn / t1:.2f} "
            f"(epochs 2+: {ln / max(l1, 1e-9):.2f}); final weights apart by "
            f"{relative_l2(one.model.state_dict(), many.model.state_dict()):.1e} (relative L2); "
            f"best epoch {one.best_epoch} / {many.best_epoch}"
        )


if __name__ == "__main__":
    main()
