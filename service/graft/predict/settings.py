"""Predict's settings, resolved once from Config: batching per model, runners and threads
from the cores this process may use, the runtimes to measure.

Runners default to one single-threaded runner per core. Measured here (2 cores,
EfficientNet-Lite0, 64 px, docs/PREDICT.md): two 1-thread ONNX Runtime runners did ~1,900
img/s at batch 8-16 where one 2-thread runner did ~1,300-1,450; frozen TorchScript 2x1
~1,400-1,700 against 1x2 ~500-830. Small convolutions parallelise poorly inside one forward
pass; two independent passes keep both cores busy. The core count honours CPU affinity
and a cgroup (container) CPU quota, not just the host's cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from graft.config import Config
from graft.data.images import DEFAULT_MAX_IMAGE_PIXELS
from graft.predict.batching import BatchPolicy
from graft.predict.preprocess import DEFAULT_MAX_REQUEST_PIXELS
from graft.predict.runtimes import RUNTIMES


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota
    (`cpu.max`, e.g. a Kubernetes CPU limit), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def parse_model_batching(entries: Iterable[str], default: BatchPolicy) -> dict[str, BatchPolicy]:
    """ "NAME=MAX_BATCH[:DELAY_MS]" entries as policies by model name (ValueError if bad)."""
    out: dict[str, BatchPolicy] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        size, _, delay = value.partition(":")
        try:
            policy = BatchPolicy(int(size), float(delay or default.max_delay * 1000) / 1000)
        except ValueError:
            policy = BatchPolicy(0)
        if not sep or not name or policy.max_batch < 1 or policy.max_delay < 0:
            raise ValueError(
                f"bad Predict batching {entry!r}: expected NAME=MAX_BATCH[:DELAY_MS], "
                "MAX_BATCH >= 1, DELAY_MS >= 0"
            )
        out[name] = policy
    return out


@dataclass(frozen=True)
class PredictSettings:
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    per_model: Mapping[str, BatchPolicy] = field(default_factory=dict)
    runners: int = 1
    threads_per_runner: int = 1
    decode_threads: int = 1
    runtimes: tuple[str, ...] = RUNTIMES
    ref_cache_seconds: float = 1.0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # per image, from its header
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # per call, all images' headers

    def policy_for(self, model_name: str) -> BatchPolicy:
        return self.per_model.get(model_name, self.policy)

    @classmethod
    def from_config(cls, config: Config, cpus: int | None = None) -> PredictSettings:
        cpus = cpus or available_cpus()
        if config.predict_max_batch < 1 or config.predict_max_delay_ms < 0:
            raise ValueError("predict_max_batch must be >= 1 and predict_max_delay_ms >= 0")
        if config.predict_ref_cache_seconds < 0:
            raise ValueError("predict_ref_cache_seconds must be >= 0")
        policy = BatchPolicy(config.predict_max_batch, config.predict_max_delay_ms / 1000)
        runners = config.predict_runners or cpus
        runtimes = tuple(config.predict_runtimes) or ("eager",)
        unknown = [r for r in runtimes if r not in RUNTIMES]
        if unknown:
            raise ValueError(f"unknown Predict runtimes {unknown}; expected some of {RUNTIMES}")
        return cls(
            policy=policy,
            per_model=parse_model_batching(config.predict_model_batching, policy),
            runners=runners,
            threads_per_runner=config.predict_threads_per_runner or max(1, cpus // runners),
            decode_threads=config.predict_decode_threads or cpus,
            runtimes=runtimes,
            ref_cache_seconds=config.predict_ref_cache_seconds,
            max_image_pixels=config.max_image_pixels,
            max_request_pixels=config.max_predict_pixels,
        )
