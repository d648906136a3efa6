"""Does a linear-probe head help fine-tuning here (LP-FT: Kumar et al., "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022)? The same
plan fine-tuned from the usual freshly initialised head, and from a head fitted first by
the advisor's logistic regression on the frozen features of the training images (its L2
strength chosen by 5-fold cross-validation over L2_GRID, i.e. by the probe's
measurement), both by the worker's own `train()`, scored on held-out test images
(docs/TRAINING.md § A linear-probe head before fine-tuning).

    OMP_NUM_THREADS=2 .venv/bin/python bench/lp_ft.py [--per-class 500]
        [--test-per-class 1000] [--strategy full|partial]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import graft.training.loop as loop
from graft.advisor.probe import feature_statistics, fit_logistic, linear_probe
from graft.backbones import get_spec
from graft.backbones.spec import GraftModel
from graft.data import Sample, eval_transform, scan_dataset, split_dataset
from graft.domain import Strategy, TrainingPlan
from graft.plans.defaults import resolve_plan
from graft.training.features import compute_features, fold_standardization
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from _inprocess import train_split
from departure_sizes import _test_accuracy

L2_GRID = (1.0, 3.0, 10.0)  # times the probe's default, 1 / n


def _probe_head(model: GraftModel, plan: TrainingPlan, train: Sequence[Sample]) -> str:
    """Fit the head as a logistic regression on the frozen features (standardised, then
    folded into the Linear); the L2 strength with the best 5-fold probe."""
    x, y = compute_features(
        model,
        train,
        eval_transform(model.spec, plan.image_size),
        batch_size=128,
        device=torch.device("cpu"),
        should_stop=lambda: False,
    )
    x, labels = x.clone(), y.tolist()  # inference tensors: clone before autograd reads them
    n, c = len(labels), model.head.out_features
    scores = {k: linear_probe(x, labels, num_classes=c, l2=k / n).accuracy for k in L2_GRID}
    best = max(scores, key=lambda k: (scores[k], k))
    mean, std = feature_statistics(x)
    w, b = fit_logistic((x - mean) / std, torch.tensor(labels), c, l2=best / n)
    with torch.no_grad():
        model.head.weight.copy_(w.T)
        model.head.bias.copy_(b)
        fold_standardization(model.head, mean, std)
    probes = ", ".join(f"{k:g}: {100 * a:.1f}%" for k, a in scores.items())
    return f"L2 {best:g}/n (5-fold probe {probes})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--strategy", choices=("full", "partial"), default="full")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-lpft-") as tmp_name:
        tmp = Path(tmp_name)
        ds = scan_dataset(
            write_fashion_mnist_folder(tmp / "train", per_class=args.per_class, split="train")
        )
        test = write_fashion_mnist_folder(tmp / "test", per_class=args.test_per_class, split="test")
        strategy = (
            Strategy.FULL_FINE_TUNE if args.strategy == "full" else Strategy.PARTIAL_FINE_TUNE
        )
        plan = resolve_plan(
            TrainingPlan(backbone="efficientnet_lite0", strategy=strategy, epochs=4, image_size=64),
            get_spec("efficientnet_lite0"),
            num_train_images=len(ds.samples),
            median_size=ds.median_size,
        )
        tr, va = split_dataset(ds, plan.validation_fraction, plan.seed)
        print(
            f"Fashion-MNIST {args.per_class}/class ({len(tr)} train / {len(va)} val), test "
            f"{args.test_per_class}/class; {plan.strategy.name}, {plan.epochs} epochs, head "
            f"warm-up {plan.head_warmup_epochs}, top {plan.trainable_stages} stages"
        )
        runs = {
            "fresh head (as trained today)": (plan, False),
            "probe head, then fine-tune": (dataclasses.replace(plan, head_warmup_epochs=0), True),
            "probe head, warm-up, fine-tune": (plan, True),
        }
        real_build = loop.build_model
        for label, (p, probe_first) in runs.items():
            note: list[str] = []

            def build(
                *a: Any,
                probe_first: bool = probe_first,
                p: TrainingPlan = p,
                note: list[str] = note,
                **k: Any,
            ) -> GraftModel:
                model = real_build(*a, **k)
                if probe_first:
                    note.append(_probe_head(model, p, tr))
                return model

            loop.build_model = build  # type: ignore[assignment]
            t0 = time.perf_counter()
            result = train_split(p, ds, tr, va, tmp / f"ckpt-{probe_first}", job_id=label)
            wall = time.perf_counter() - t0
            accuracy = _test_accuracy(result.model, p, ds.classes, test)
            print(
                f"  {label:32s} test {100 * accuracy:.1f}%, validation "
                f"{100 * result.metrics.accuracy:.1f}% in {wall:.0f} s {' '.join(note)}",
                flush=True,
            )
        loop.build_model = real_build
    return 0


if __name__ == "__main__":
    sys.exit(main())
