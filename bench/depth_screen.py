"""The depth choice with and without screening runs of stages (issue 13: "cuts far behind
the best need no 5 folds"), on the stage features Advise really measures, same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/depth_screen.py [--datasets fmnist-100,digits,photos]

For each dataset: Advise runs once (default backbone only) with choose_depth wrapped to
keep its inputs; then choose_depth runs on those inputs twice, every run probed
(SCREEN_MARGIN None) and screened (the default), each timed (best of two). It prints both
times, their ratio, how many runs were screened out, and whether the cut, its grid and the
partial depth are the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from graft.advisor import advise as advise_module
from graft.advisor import depth as depth_module
from graft.advisor.advise import advise_dataset
from graft.config import Config
from graft.data import scan_dataset

sys.path.insert(0, str(Path(__file__).parent))
from advise_eval import DATASETS


def _timed(args: Any, kwargs: Any, margin: float | None) -> tuple[float, Any]:
    depth_module.SCREEN_MARGIN = margin
    best, result = float("inf"), None
    for _ in range(2):
        t0 = time.perf_counter()
        result = depth_module.choose_depth(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, result


def _capturing(real: Any, captured: dict[str, Any]) -> Any:
    def capture(*a: Any, **k: Any) -> Any:
        captured["call"] = (a, k)
        return real(*a, **k)

    return capture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fmnist-100,digits,photos")
    args = parser.parse_args()
    default_margin = depth_module.SCREEN_MARGIN
    print("| dataset | every run probed s | screened s | ratio | runs screened out | same choice |")
    print("|---|---|---|---|---|---|")
    for key in filter(None, args.datasets.split(",")):
        captured: dict[str, Any] = {}
        real = depth_module.choose_depth
        advise_module.choose_depth = _capturing(real, captured)  # type: ignore[assignment]
        with tempfile.TemporaryDirectory(prefix="graft-depth-screen-") as name:
            root = Path(name)
            train, _ = DATASETS[key](root / key)
            config = Config(data_dir=root / "graft")
            advise_dataset(scan_dataset(train), config=config, candidates=["efficientnet_lite0"])
        advise_module.choose_depth = real
        a, k = captured["call"]
        every_s, every = _timed(a, k, None)
        screened_s, screened = _timed(a, k, default_margin)
        same = (
            every.cut.stages == screened.cut.stages
            and every.cut.grid == screened.cut.grid
            and every.trainable_stages == screened.trainable_stages
        )
        runs = screened.cut.screened_out + len(screened.cut.candidates) - len(screened.stages)
        verdict = "yes" if same else f"no: {every.cut.stages} vs {screened.cut.stages}"
        print(
            f"| {key} | {every_s:.1f} | {screened_s:.1f} | {every_s / screened_s:.2f} | "
            f"{screened.cut.screened_out} of {runs} | {verdict} |",
            flush=True,
        )
    depth_module.SCREEN_MARGIN = default_margin
    return 0


if __name__ == "__main__":
    sys.exit(main())
