"""Self-describing training checkpoints, without pickle.

One file, `checkpoint.safetensors`, in the job's checkpoint directory:

- tensors: `model.<key>` (the state dict after the last completed epoch; the head's alone,
  `extra.weights` "head", under feature extraction from pretrained weights, whose body the
  weights file rebuilds), `best.<key>` (the best epoch's tensors that differ from
  `model.<key>`; none when the best epoch is the last one), `optim.<index>.<name>`
  (AdamW's per-parameter state), `rng.torch`, `rng.cuda.<device>`, `rng.numpy`;
- header metadata `graft.checkpoint` (JSON): format version, job id, backbone, class names,
  dataset fingerprint, the resolved plan, the number of completed epochs, best metric and
  epoch with its metrics, per-epoch history, cumulative training time, the optimizer's
  param groups and non-tensor state, the scheduler's state dict, Python's RNG state.

The safetensors header is plain JSON, so `python -c "from safetensors import safe_open; ..."`
or any hex viewer shows what a checkpoint is. Writes are graft.artifacts' (a temporary
file in the same directory, fsynced, renamed over the old one), so a crash mid-write leaves
the previous checkpoint intact; its sha256 is recorded beside it and checked before a
resume (on whichever host) reads it: a mismatch is a CheckpointError, never resumed from.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graft.artifacts import CorruptArtifact, verify_file, write_artifact
from graft.domain import EvaluationMetrics, TrainingPlan

log = logging.getLogger(__name__)

FORMAT = "graft.checkpoint.v1"
FILENAME = "checkpoint.safetensors"
_META_KEY = "graft.checkpoint"


class CheckpointError(Exception):
    """A checkpoint file exists but cannot be read as one."""


@dataclass
class RngState:
    """Every random number generator the training loop draws from."""

    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] = field(default_factory=list)
    numpy: dict[str, Any] | None = None
    python: Any = None

    @classmethod
    def capture(cls) -> RngState:
        np_state = np.random.get_state()
        assert isinstance(np_state, tuple)
        return cls(
            torch_cpu=torch.get_rng_state(),
            cuda=list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
            numpy={
                "kind": np_state[0],
                "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            python=random.getstate(),
        )

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda and torch.cuda.is_available():
            n = min(len(self.cuda), torch.cuda.device_count())
            torch.cuda.set_rng_state_all(self.cuda[:n])
        if self.numpy is not None:
            np.random.set_state(
                (
                    self.numpy["kind"],
                    self.numpy["keys"].numpy().astype(np.uint32),
                    self.numpy["pos"],
                    self.numpy["has_gauss"],
                    self.numpy["cached_gaussian"],
                )
            )
        if self.python is not None:
            version, internal, gauss = self.python
            random.setstate((version, tuple(internal), gauss))


@dataclass
class Checkpoint:
    """Everything needed to continue a job after `epoch` completed epochs, or to serve its
    best model."""

    job_id: str
    backbone: str
    classes: list[str]
    dataset_fingerprint: str
    plan: TrainingPlan
    epoch: int  # completed epochs
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    rng: RngState | None
    best_metric: float = float("-inf")
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_metrics: EvaluationMetrics | None = None
    best_state: dict[str, torch.Tensor] | None = None  # None: the same as model_state
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def best_weights(self) -> dict[str, torch.Tensor]:
        return self.best_state if self.best_state is not None else self.model_state

    def mismatch(self, plan: TrainingPlan, dataset_fingerprint: str, classes: list[str]) -> str:
        """Why this checkpoint cannot continue a job with these inputs ("" when it can)."""
        if list(classes) != list(self.classes):
            return "its class names differ from this job's"
        if dataset_fingerprint != self.dataset_fingerprint:
            return "it was written for a different dataset (fingerprint differs)"
        if plan != self.plan:
            ours, theirs = plan.to_dict(), self.plan.to_dict()
            diff = sorted(k for k in ours if ours[k] != theirs.get(k))
            return f"its plan differs from this job's ({', '.join(diff)})"
        if self.epoch > plan.epochs:
            return f"it is at epoch {self.epoch} of a {plan.epochs}-epoch plan"
        return ""


def _clean(t: torch.Tensor) -> torch.Tensor:
    # safetensors wants dense, contiguous CPU tensors; channels_last weights are not
    # contiguous. No copy when the tensor already is one (a checkpoint is written every
    # epoch, and copying the whole model each time is measurable on CPU).
    return t.detach().to("cpu").contiguous()


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses two keys on one storage (tied weights would be); copy the later.
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def _split_optimizer(
    state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = _clean(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, float | int | str | bool) or o is None:
        return o
    raise TypeError(f"cannot store {type(o).__name__} in a checkpoint header")


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> Path:
    """Write `ckpt` atomically to `directory/checkpoint.safetensors` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": _clean(v) for k, v in ckpt.model_state.items()
    }
    if ckpt.best_state is not None:
        # Only what differs from the current weights: frozen stages (all of the body under
        # feature extraction) are the same in both and are stored once.
        tensors.update(
            {
                f"best.{k}": _clean(v)
                for k, v in ckpt.best_state.items()
                if k not in ckpt.model_state or not torch.equal(v.cpu(), ckpt.model_state[k].cpu())
            }
        )
    optim_meta = None
    if ckpt.optimizer_state is not None:
        optim_tensors, optim_meta = _split_optimizer(ckpt.optimizer_state)
        tensors.update(optim_tensors)
    rng_meta: dict[str, Any] | None = None
    if ckpt.rng is not None:
        tensors["rng.torch"] = _clean(ckpt.rng.torch_cpu)
        for i, s in enumerate(ckpt.rng.cuda):
            tensors[f"rng.cuda.{i}"] = _clean(s)
        rng_meta = {"cuda_devices": len(ckpt.rng.cuda), "python": ckpt.rng.python}
        if ckpt.rng.numpy is not None:
            tensors["rng.numpy"] = _clean(ckpt.rng.numpy["keys"])
            rng_meta["numpy"] = {k: v for k, v in ckpt.rng.numpy.items() if k != "keys"}

    header = {
        "format": FORMAT,
        "job_id": ckpt.job_id,
        "backbone": ckpt.backbone,
        "classes": list(ckpt.classes),
        "dataset_fingerprint": ckpt.dataset_fingerprint,
        "plan": ckpt.plan.to_dict(),
        "epoch": ckpt.epoch,
        "best_metric": ckpt.best_metric,
        "best_loss": ckpt.best_loss,
        "best_epoch": ckpt.best_epoch,
        "best_metrics": ckpt.best_metrics.to_dict() if ckpt.best_metrics else None,
        "best_is_last": ckpt.best_state is None,
        "history": ckpt.history,
        "train_seconds": ckpt.train_seconds,
        "optimizer": optim_meta,
        "scheduler": ckpt.scheduler_state,
        "rng": rng_meta,
        "extra": ckpt.extra,
    }
    meta = {_META_KEY: json.dumps(header, default=_json_default)}
    final = directory / FILENAME
    write_artifact(final, lambda tmp: save_file(_unshare(tensors), str(tmp), metadata=meta))
    return final


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in `directory`, or None when there is none.

    Raises CheckpointError when a file is there but is not a readable checkpoint of this
    format (the caller decides to start over, and says so).
    """
    path = directory / FILENAME
    if not path.is_file():
        return None
    try:
        verify_file(path)
    except CorruptArtifact as e:
        raise CheckpointError(e.message) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        header = json.loads(meta[_META_KEY])
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown format {header.get('format')!r}")
    except CheckpointError:
        raise
    except Exception as e:  # a torn or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e

    def prefixed(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    rng = None
    rng_meta = header.get("rng")
    if rng_meta is not None:
        numpy_state = None
        if "numpy" in rng_meta and "rng.numpy" in tensors:
            numpy_state = dict(rng_meta["numpy"], keys=tensors["rng.numpy"])
        rng = RngState(
            torch_cpu=tensors["rng.torch"],
            cuda=[tensors[f"rng.cuda.{i}"] for i in range(rng_meta["cuda_devices"])],
            numpy=numpy_state,
            python=rng_meta.get("python"),
        )
    optim = header.get("optimizer")
    return Checkpoint(
        job_id=header["job_id"],
        backbone=header["backbone"],
        classes=list(header["classes"]),
        dataset_fingerprint=header["dataset_fingerprint"],
        plan=TrainingPlan.from_dict(header["plan"]),
        epoch=int(header["epoch"]),
        model_state=prefixed("model."),
        optimizer_state=_join_optimizer(prefixed("optim."), optim) if optim else None,
        scheduler_state=header.get("scheduler"),
        rng=rng,
        best_metric=float(header["best_metric"]),
        best_loss=float(header["best_loss"]),
        best_epoch=int(header["best_epoch"]),
        best_metrics=EvaluationMetrics.from_dict(header.get("best_metrics")),
        best_state=None
        if header.get("best_is_last", True)
        else {**prefixed("model."), **prefixed("best.")},
        history=list(header.get("history", [])),
        train_seconds=float(header.get("train_seconds", 0.0)),
        extra=dict(header.get("extra", {})),
    )
