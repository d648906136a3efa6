"""ExportModel through the real service: a model trained on Fashion-MNIST at --image-size,
exported to each format (first time: made and checked by the advisor worker; second time:
the cached files), with the wall time the caller waits, the files' size and the worker's
verification line (docs/EXPORTS.md § Measured).

    OMP_NUM_THREADS=2 .venv/bin/python bench/exports.py [--image-size 224] [--cut 6+7@2]

A cut is stages joined by '+'; '@g' pools each over a g x g grid (plan.feature_grid).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from graft_client import pb
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from demo_strategies import serving, train_timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--cut", default="", help="feature cut, e.g. 6+7@2 (default: none)")
    args = parser.parse_args()
    stages, _, grid = args.cut.partition("@")
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_FEATURE_EXTRACTION,
        epochs=1,
        image_size=args.image_size,
        feature_stages=[int(s) for s in stages.split("+") if s],
        feature_grid=int(grid or 0),
    )
    with serving("graft-exports-", timeout=1800) as (client, root):
        classes = (1, 7, 8, 9)
        train = write_fashion_mnist_folder(
            root / "train", per_class=args.per_class, classes=classes, split="train"
        )
        _, wall = train_timed(client, "exported", train, plan)
        print(f"trained at {args.image_size} px, cut {args.cut or 'none'} in {wall:.0f} s")
        print("| format | first export | again (cached) | files | verification |")
        print("|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as out:
            for fmt in ("onnx", "torchscript", "triton"):
                times = []
                for attempt in range(2):
                    t0 = time.perf_counter()
                    manifest = client.export_model("exported", fmt, Path(out) / f"{fmt}{attempt}")
                    times.append(time.perf_counter() - t0)
                size = sum(f.size for f in manifest.files) / 1e6
                print(
                    f"| {fmt} | {times[0]:.1f} s | {times[1]:.2f} s | {size:.1f} MB | "
                    f"{manifest.verification} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
