"""Configuration is data: one frozen dataclass built from flags and environment, printed at
start and stored with every job. Nothing deeper in the code reads globals or os.environ."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("graft-data")
    data_roots: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464  # 0 turns the /metrics endpoint off
    worker_metrics_port: int = 9465
    embedded_worker: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    max_predict_images: int = 256
    lease_seconds: float = 30.0
    poll_seconds: float = 0.5
    grace_seconds: float = 10.0
    model_cache_size: int = 4
    # Predict (docs/PREDICT.md). Concurrent calls for one model version share a forward
    # pass of at most predict_max_batch images: an idle runner takes what is queued at once,
    # and waits up to predict_max_delay_ms for more only when that is above 0.
    # "NAME=MAX_BATCH[:DELAY_MS]" entries override both for the model NAME.
    predict_max_batch: int = 32
    predict_max_delay_ms: float = 0.0
    predict_model_batching: tuple[str, ...] = ()
    # Inference runners (threads, one forward pass each at a time) and the threads each one
    # computes with; decode threads. 0: one runner per core, cores // runners threads each,
    # one decode thread per core.
    predict_runners: int = 0
    predict_threads_per_runner: int = 0
    predict_decode_threads: int = 0
    # How long Predict may reuse a model reference's resolution (name or alias -> version)
    # before reading the store again. SetModelAlias on this server takes effect at once;
    # a new version registered by a worker, or an alias moved through another replica, is
    # seen within this time. 0: read the store on every call.
    predict_ref_cache_seconds: float = 1.0
    # Runtimes measured at model load, in this order; the fastest one that answers like
    # eager is served ("eager" alone turns the others off; eager is always the fallback).
    predict_runtimes: tuple[str, ...] = ("onnxruntime", "torchscript", "eager")
    small_dataset_threshold: int = 1000
    advise_max_per_class: int = 50
    advise_max_images: int = 2000
    device: str = ""  # "" = cuda when available, else cpu
    log_format: str = "json"  # or "text"
    log_level: str = "info"
    heartbeat_seconds: float = 5.0  # how often a worker reports itself alive
    # On SIGTERM a worker stops its job at the next epoch checkpoint, or after this long at
    # the next step (resuming from the previous checkpoint), and hands the job back.
    stop_timeout_seconds: float = 20.0
    # Admission control (docs/OPERATIONS.md § Admission control): "Method=C[:Q]" entries
    # override graft.api.admission.DEFAULT_LIMITS; jobs queued or running per model name;
    # Advise tasks queued or running in all; the server-side deadline of an Advise whose
    # caller set none (the advisor lane stops the work then).
    rpc_limits: tuple[str, ...] = ()
    max_active_jobs_per_model: int = 16
    max_pending_advice: int = 32
    advise_timeout_seconds: float = 900.0
    # Threads that run blocking store calls for the asyncio API (each call is milliseconds).
    store_threads: int = 8
    # What `graft worker` runs: "trainer" (fine-tune jobs), "advisor" (Advise and upload
    # checks), or both ("trainer,advisor"). `graft serve` runs one process per lane.
    lanes: tuple[str, ...] = ("trainer", "advisor")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "graft.sqlite3"

    @property
    def worker_ready_seconds(self) -> float:
        """A worker whose heartbeat is older than this is not counted alive."""
        return 3 * self.heartbeat_seconds

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def weights_dir(self) -> Path:
        """Where `graft backbones import` puts weight files."""
        return self.data_dir / "weights"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["data_roots"] = [str(p) for p in self.data_roots]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "data_dir" in kw:
            kw["data_dir"] = Path(kw["data_dir"])
        if "data_roots" in kw:
            kw["data_roots"] = tuple(Path(p) for p in kw["data_roots"])
        for name in ("rpc_limits", "lanes", "predict_model_batching", "predict_runtimes"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


def env_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """GRAFT_* environment variables as Config keyword arguments (flags override them)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    if "GRAFT_DATA_DIR" in env:
        out["data_dir"] = Path(env["GRAFT_DATA_DIR"])
    if "GRAFT_DATA_ROOTS" in env:
        out["data_roots"] = tuple(Path(p) for p in env["GRAFT_DATA_ROOTS"].split(os.pathsep) if p)
    if "GRAFT_DEVICE" in env:
        out["device"] = env["GRAFT_DEVICE"]
    if "GRAFT_LOG_FORMAT" in env:
        out["log_format"] = env["GRAFT_LOG_FORMAT"]
    if "GRAFT_LOG_LEVEL" in env:
        out["log_level"] = env["GRAFT_LOG_LEVEL"]
    if "GRAFT_LEASE_SECONDS" in env:
        out["lease_seconds"] = float(env["GRAFT_LEASE_SECONDS"])
    return out
