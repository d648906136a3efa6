"""How much would the feature-extraction head gain from a stronger L2 penalty? Exact
L2-penalised logistic regression (graft.advisor.probe.fit_logistic) on the frozen
features of a cut (EfficientNet-Lite0, 64 px, pretrained), Fashion-MNIST, split 80/20 as
the worker splits; for each C (scikit-learn's inverse strength): the 5-fold probe on the
training part, accuracy on the validation part, and on 200 test images per class from the
test split.

    OMP_NUM_THREADS=2 .venv/bin/python bench/head_l2.py [--per-class 100] [--cut 6+7]
        [--grid 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from graft.advisor.probe import fit_logistic, linear_probe
from graft.backbones import get_spec
from graft.data import Sample, scan_dataset, split_dataset
from graft.data.transforms import eval_transform
from graft.domain import Strategy, TrainingPlan
from graft.plans import resolve_plan
from graft.training.engine import build_model
from graft.training.features import compute_features, feature_statistics
from graft_devtools.datasets import write_fashion_mnist_folder

C_VALUES = (1.0, 0.3, 0.1, 0.03, 0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--cut", default="6+7")
    parser.add_argument("--grid", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.gettempdir()) / f"graft-head-l2-{args.per_class}"
    if not root.exists():
        write_fashion_mnist_folder(root / "train", per_class=args.per_class)
        write_fashion_mnist_folder(root / "test", per_class=200, split="test")
    ds, test = scan_dataset(root / "train"), scan_dataset(root / "test")
    spec = get_spec("efficientnet_lite0")
    draft = TrainingPlan(
        backbone=spec.name,
        strategy=Strategy.FEATURE_EXTRACTION,
        image_size=64,
        feature_stages=tuple(int(s) for s in args.cut.split("+")),
        feature_grid=args.grid,
    )
    plan = resolve_plan(draft, spec, num_train_images=len(ds.samples), median_size=(28, 28))
    train, val = split_dataset(ds, plan.validation_fraction, plan.seed)
    model = build_model(plan, len(ds.classes), device=torch.device("cpu"), seed=0)
    transform = eval_transform(spec, plan.image_size)

    def features(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        return compute_features(
            model,
            samples,
            transform,
            batch_size=64,
            device=torch.device("cpu"),
            should_stop=lambda: False,
        )

    (xtr, ytr), (xva, yva), (xte, yte) = features(train), features(val), features(test.samples)
    mean, std = feature_statistics(xtr)
    n, k = len(ytr), len(ds.classes)

    def accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((((x - mean) / std) @ w + b).argmax(1) == y).float().mean())

    width = xtr.shape[1]
    print(f"{args.per_class}/class, cut {args.cut} @{args.grid}: {width} features, {n} train")
    for c in C_VALUES:
        started = time.perf_counter()
        w, b = fit_logistic((xtr - mean) / std, ytr, k, l2=1.0 / (c * n), max_iter=200)
        # The probe's folds train on 4/5 of the images: the same C is 1 / (C * 0.8 n).
        cv = linear_probe(xtr, ytr.tolist(), num_classes=k, l2=1.0 / (c * n * 0.8)).accuracy
        print(
            f"C={c}: 5-fold {cv:.4f}  validation {accuracy(w, b, xva, yva):.4f}  "
            f"test {accuracy(w, b, xte, yte):.4f}  ({time.perf_counter() - started:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
