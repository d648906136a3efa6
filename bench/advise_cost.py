"""Where Advise's time goes: advise_dataset in-process on a Fashion-MNIST subset, under
cProfile, summed by phase (docs/ADVISOR.md § What Advise itself costs); then the same
question again through the advice cache (scan included), and its ratio to the first.

    OMP_NUM_THREADS=2 .venv/bin/python bench/advise_cost.py [--per-class 100]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from graft.advisor.advice_cache import advise_cached
from graft.config import Config
from graft.data import scan_dataset
from graft_devtools.datasets import write_fashion_mnist_folder

# (phase, module path suffix, function name): cumulative time of each, from the profile.
PHASES = [
    ("backbone passes (features, signals, speed)", "advisor/measure.py", "measure_backbone"),
    ("depth: stage and cut probes", "advisor/depth.py", "choose_depth"),
    ("pilot fine-tune", "advisor/pilot.py", "pilot_fine_tune"),
    ("timed training step", "advisor/pilot.py", "time_training_step"),
    ("all linear probes (ranking, depth, curve)", "advisor/probe.py", "linear_probe"),
    ("all LogME scores", "advisor/logme.py", "logme"),
    ("similarity bootstrap interval", "advisor/bootstrap.py", "similarity_interval"),
    ("learning curve on more images (large datasets)", "advisor/advise.py", "_curve"),
    ("  of which the cuts re-checked on them", "advisor/curve_sample.py", "recheck"),
    ("dataset report (sizes, duplicates)", "advisor/report.py", "dataset_report"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-advise-cost-") as tmp_name:
        tmp = Path(tmp_name)
        data = write_fashion_mnist_folder(tmp / "train", per_class=args.per_class, split="train")
        ds = scan_dataset(data)
        config = Config(data_dir=tmp / "data")
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        advice = advise_cached(ds, config=config)  # the cache is empty: this measures
        profile.disable()
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = advise_cached(scan_dataset(data), config=config)
        repeat = time.perf_counter() - t1
        assert again.from_cache and not advice.from_cache
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    print(
        f"Advise on Fashion-MNIST {args.per_class}/class ({advice.sample_images} sampled "
        f"images, {len(advice.backbones)} candidates): {total:.1f} s"
    )
    for phase, path, func in PHASES:
        seconds = sum(
            v[3] for (file, _, name), v in stats.items() if file.endswith(path) and name == func
        )
        print(f"  {phase:45s} {seconds:5.1f} s  ({100 * seconds / total:.0f}%)")
    low, high = advice.similarity_interval
    print(
        f"similarity {advice.similarity:.3f}, 90% interval {low:.3f}-{high:.3f}"
        f"{' (borderline)' if advice.similarity_borderline else ''}"
    )
    print(
        f"the same Advise again (scan + advice cache): {repeat:.3f} s, "
        f"{total / repeat:.0f}x faster than measuring"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
