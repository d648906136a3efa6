"""Does feature extraction on Advise's measured cut keep up with the matrix's fine-tuning on
larger datasets? (docs/ADVISOR.md § Feature extraction on the cut at 1,000 and 3,000 per
class: the evidence behind advisor.estimates.DEPARTURE_MAX_PER_CLASS.)

    OMP_NUM_THREADS=2 .venv/bin/python bench/departure_sizes.py --per-class 1000
        [--test-per-class 1000]

On a Fashion-MNIST subset: Advise with the departure switched off (its plan is then the
matrix's fine-tuning, as Advise writes it), feature extraction on the cut Advise measured
(its stages and pooling grid), and partial fine-tuning of the top 3 stages for 4 epochs
(the second hand-written baseline of bench/advise_eval.py), all trained in-process by the
worker's own `train()`, then scored on held-out test images (10,000 by default: one standard error
about 0.3 points); and the hand-written baseline, frozen final features + logistic
regression (bench/baselines.py), on the same images. Wall times are training's alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import graft.advisor.choice as choice
from graft.advisor.advise import advise_dataset
from graft.backbones import get_spec
from graft.config import Config
from graft.data import eval_transform, scan_dataset, split_dataset
from graft.data.images import load_image
from graft.domain import Strategy, TrainingPlan
from graft.plans.defaults import resolve_plan
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from _inprocess import train_split
from baselines import logistic_on_final_features


@torch.inference_mode()
def _test_accuracy(
    model: torch.nn.Module, plan: TrainingPlan, classes: list[str], test: Path
) -> float:
    tf = eval_transform(get_spec(plan.backbone), plan.image_size)
    paths = sorted(test.rglob("*.png"))
    correct = 0
    model.eval()
    for start in range(0, len(paths), 128):
        batch = paths[start : start + 128]
        predicted = model(torch.stack([tf(load_image(p)) for p in batch])).argmax(1)
        correct += sum(
            classes[int(k)] == p.parent.name for k, p in zip(predicted, batch, strict=True)
        )
    return correct / len(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-departure-") as tmp_name:
        tmp = Path(tmp_name)
        data = write_fashion_mnist_folder(tmp / "train", per_class=args.per_class, split="train")
        test = write_fashion_mnist_folder(tmp / "test", per_class=args.test_per_class, split="test")
        ds = scan_dataset(data)
        t0 = time.perf_counter()
        choice.DEPARTURE_MAX_PER_CLASS = -1  # the departure off: the matrix's plan
        advice = advise_dataset(ds, config=Config(data_dir=tmp / "data"))
        print(
            f"Advise, departure off: {advice.plan.strategy.name}, {time.perf_counter() - t0:.0f} s"
        )
        assert advice.depth is not None
        cut = advice.depth.cut
        last = (len(get_spec(advice.plan.backbone).stages),)
        classic = cut.stages == last and cut.grid == 1
        frozen = TrainingPlan(
            strategy=Strategy.FEATURE_EXTRACTION,
            backbone=advice.plan.backbone,
            image_size=advice.plan.image_size,
            feature_stages=() if classic else cut.stages,
            feature_grid=cut.grid if cut.grid > 1 else 0,
        )
        partial = TrainingPlan(
            strategy=Strategy.PARTIAL_FINE_TUNE,
            backbone=advice.plan.backbone,
            image_size=advice.plan.image_size,
            trainable_stages=3,
            epochs=4,
        )
        plans = {
            "matrix": advice.plan,
            # The second hand-written baseline of bench/advise_eval.py: top 3 stages, 4 epochs.
            "partial": resolve_plan(
                partial,
                get_spec(advice.plan.backbone),
                num_train_images=len(ds.samples),
                median_size=ds.median_size,
            ),
            "cut": resolve_plan(
                frozen,
                get_spec(advice.plan.backbone),
                num_train_images=len(ds.samples),
                median_size=ds.median_size,
            ),
        }
        print(
            f"Fashion-MNIST {args.per_class}/class, {len(ds.samples)} images; "
            f"test {args.test_per_class}/class"
        )
        for label, plan in plans.items():
            tr, va = split_dataset(ds, plan.validation_fraction, plan.seed)
            t0 = time.perf_counter()
            result = train_split(plan, ds, tr, va, tmp / f"ckpt-{label}", job_id=label)
            wall = time.perf_counter() - t0
            accuracy = _test_accuracy(result.model, plan, ds.classes, test)
            where = f" stages {plan.feature_stages or 'last'} grid {plan.feature_grid or 1}"
            print(
                f"  {label:8s} {plan.strategy.name}{where if label == 'cut' else ''}, "
                f"{plan.epochs} epochs: test {100 * accuracy:.1f}% in {wall:.0f} s"
            )
        accuracy, wall = logistic_on_final_features(data, test, image_size=64)
        print(f"  baseline logistic on final features: test {100 * accuracy:.1f}% in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
