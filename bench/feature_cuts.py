"""Held-out accuracy of feature extraction by feature cut, on Fashion-MNIST subsets of
several sizes, through the real service: which stages should a linear head read as the
dataset grows? (docs/ADVISOR.md § Depth.)

    OMP_NUM_THREADS=2 .venv/bin/python bench/feature_cuts.py [--per-class 100,500]
        [--cuts 6+7,6+7@2]

A cut is stages joined by '+'; '@g' pools each over a g x g grid (plan.feature_grid)
instead of globally.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graft_client import pb
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from demo_strategies import held_out_accuracy, serving, train_timed

CUTS = ["9", "8", "7", "6", "5", "7+8+9", "6+7+8+9", "5+6+7+8+9", "6+7"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", default="100,300,500,1000")
    parser.add_argument("--cuts", default=",".join(CUTS))
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.per_class.split(",")]
    cuts = [c for c in args.cuts.split(",") if c]
    with serving("graft-cuts-") as (client, root):
        test = write_fashion_mnist_folder(
            root / "test", per_class=args.test_per_class, split="test"
        )
        print("| images per class | " + " | ".join(f"stages {c}" for c in cuts) + " |")
        print("|---" * (len(cuts) + 1) + "|")
        for n in sizes:
            train = write_fashion_mnist_folder(root / f"train-{n}", per_class=n, split="train")
            cells = []
            for c in cuts:
                stages, _, grid = c.partition("@")
                plan = pb.TrainingPlan(
                    backbone="efficientnet_lite0",
                    strategy=pb.STRATEGY_FEATURE_EXTRACTION,
                    image_size=64,
                    feature_stages=[int(s) for s in stages.split("+")],
                    feature_grid=int(grid or 0),
                )
                name = f"fx-{n}-{c.replace('+', '-').replace('@', '-grid')}"
                _, wall = train_timed(client, name, train, plan)
                acc = held_out_accuracy(client, name, test)
                cells.append(f"{100 * acc:.1f}% ({wall:.0f} s)")
                print(f"  {n}/class stages {c}: {100 * acc:.1f}% {wall:.0f} s", flush=True)
            print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
