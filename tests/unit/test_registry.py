"""The model registry: artifacts on disk, metadata in the store, sha256-checked loads."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from graft.domain import EvaluationMetrics, ModelRef, ModelVersion, TrainingPlan
from graft.errors import FailedPrecondition, InvalidArgument
from graft.registry import (
    CARD_FILE,
    CARD_VERSION,
    WEIGHTS_FILE,
    ModelCard,
    ModelRegistry,
    Preprocessing,
    sha256_file,
)
from graft.store import JobStore, SqliteJobStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    s = SqliteJobStore(tmp_path / "graft.sqlite3")
    yield s
    s.close()


@pytest.fixture
def registry(store: SqliteJobStore, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(store, tmp_path / "registry")


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 6, generator=g)
    return {
        "conv.weight": torch.randn(3, 2, 3, 3, generator=g),
        "head.weight": base.t(),  # not contiguous
        "head.bias": torch.randn(6, generator=g).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(seed, dtype=torch.int64),
        "emb": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0),
    }


PREPROCESSING = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 0.9)


def card(job_id: str = "job0", labels: tuple[str, ...] = ("daisy", "rose")) -> ModelCard:
    return ModelCard(
        backbone="tiny",
        labels=labels,
        preprocessing=PREPROCESSING,
        plan=TrainingPlan(epochs=2, image_size=64),
        job_id=job_id,
        metrics=EvaluationMetrics(accuracy=0.75, labels=labels),
    )


def register(registry: ModelRegistry, name: str = "flowers", seed: int = 0) -> ModelVersion:
    return registry.register(name=name, state_dict=weights(seed), card=card(f"job{seed}"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_register_writes_weights_and_card(registry: ModelRegistry, tmp_path: Path) -> None:
    mv = register(registry)
    assert mv.version == 1
    directory = tmp_path / "registry" / "flowers" / "1"
    assert Path(mv.artifact_dir) == directory.resolve()
    assert sorted(p.name for p in directory.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    card = json.loads((directory / CARD_FILE).read_text())
    assert card["sha256"] == sha256_file(directory / WEIGHTS_FILE) == mv.sha256
    assert (card["name"], card["version"], card["create_time"]) == ("flowers", 1, mv.create_time)
    assert card["preprocessing"] == {
        "image_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "crop_pct": 0.9,
    }
    assert (card["card_version"], card["weights_file"]) == (CARD_VERSION, WEIGHTS_FILE)
    assert (card["backbone"], card["labels"], card["job_id"]) == ("tiny", ["daisy", "rose"], "job0")
    assert card["metrics"]["accuracy"] == 0.75
    assert card == mv.card == registry.get("flowers", 1).card
    assert list((tmp_path / "registry" / ".staging").iterdir()) == []  # nothing left behind
    assert register(registry, seed=1).version == 2


def test_load_round_trips_exactly(registry: ModelRegistry) -> None:
    register(registry, seed=0)
    register(registry, seed=1)
    mv, tensors, loaded = registry.load(ModelRef("flowers", version=1))
    assert mv.version == 1 and loaded.version == 1
    assert loaded == dataclasses.replace(
        card("job0"),
        weights_file=WEIGHTS_FILE,
        name="flowers",
        version=1,
        sha256=mv.sha256,
        create_time=mv.create_time,
    )
    assert_same(tensors, weights(0))
    assert tensors["head.weight"].is_contiguous()

    registry.set_alias("flowers", "production", 1)
    assert registry.load(ModelRef("flowers", alias="production"))[0].version == 1
    newest, tensors, _ = registry.load(ModelRef("flowers"))
    assert newest.version == 2
    assert_same(tensors, weights(1))


def test_tied_weights_are_saved(registry: ModelRegistry) -> None:
    shared = torch.randn(5, 3)
    state = {"embed.weight": shared, "head.weight": shared}
    registry.register(name="tied", state_dict=state, card=card("j", labels=("a",)))
    _, tensors, _ = registry.load(ModelRef("tied"))
    assert_same(tensors, {"embed.weight": shared, "head.weight": shared.clone()})


def test_tampered_weights_are_refused(registry: ModelRegistry) -> None:
    mv = register(registry)
    path = Path(mv.artifact_dir) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition, match="artifact corrupted"):
        registry.load(ModelRef("flowers"))


def test_tampered_card_is_refused(registry: ModelRegistry) -> None:
    mv = register(registry)
    path = Path(mv.artifact_dir) / CARD_FILE
    card = json.loads(path.read_text())
    card["sha256"] = "0" * 64
    path.write_text(json.dumps(card))
    with pytest.raises(FailedPrecondition, match="artifact corrupted"):
        registry.load(ModelRef("flowers"))
    path.write_text("{not json")
    with pytest.raises(FailedPrecondition, match="artifact corrupted"):
        registry.load(ModelRef("flowers"))


def test_missing_weights_are_a_failed_precondition(registry: ModelRegistry) -> None:
    mv = register(registry)
    (Path(mv.artifact_dir) / WEIGHTS_FILE).unlink()
    with pytest.raises(FailedPrecondition, match="artifact missing"):
        registry.load(ModelRef("flowers"))


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", ".", ".hidden", "x" * 101, "with space", "ünï", "a\\b"]
)
def test_bad_names_are_invalid_arguments(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        register(registry, name=name)
    assert [v.field for v in info.value.violations] == ["model_name"]
    assert registry.store.count_model_versions() == 0


def test_good_names(registry: ModelRegistry) -> None:
    for name in ("a", "My-model_1.0", "x" * 100):
        assert register(registry, name=name).version == 1
    with pytest.raises(InvalidArgument) as info:
        registry.set_alias("a", "bad alias", 1)
    assert [v.field for v in info.value.violations] == ["alias"]


def test_concurrent_registrations_get_distinct_versions(registry: ModelRegistry) -> None:
    results: dict[int, ModelVersion] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            results[seed] = register(registry, seed=seed)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(mv.version for mv in results.values()) == [1, 2, 3, 4, 5, 6]
    for seed, mv in results.items():
        loaded, tensors, loaded_card = registry.load(ModelRef("flowers", version=mv.version))
        assert loaded_card.job_id == f"job{seed}" and loaded.job_id == f"job{seed}"
        assert_same(tensors, weights(seed))


class CrashBeforeCommit:
    """A store whose registration 'crashes' after the artifact is renamed into place but
    before the row commits."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def add_model_version(self, **kw: Any) -> ModelVersion:
        publish = kw.pop("publish")

        def publish_then_crash(mv: ModelVersion) -> str:
            publish(mv)
            raise KeyboardInterrupt("power cut")

        return self.store.add_model_version(**kw, publish=publish_then_crash)


def test_an_uncommitted_artifact_is_replaced_by_the_next_registration(
    store: SqliteJobStore, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    crashing = ModelRegistry(cast(JobStore, CrashBeforeCommit(store)), root)
    with pytest.raises(KeyboardInterrupt):
        register(crashing, seed=1)
    assert (root / "flowers" / "1" / WEIGHTS_FILE).exists()  # orphan: no row points at it
    assert store.count_model_versions() == 0

    registry = ModelRegistry(store, root)
    mv = register(registry, seed=2)
    assert mv.version == 1
    _, tensors, loaded = registry.load(ModelRef("flowers", version=1))
    assert loaded.job_id == "job2"
    assert_same(tensors, weights(2))
    assert not (root / ".trash").exists() or list((root / ".trash").iterdir()) == []


def test_stale_staging_folders_are_swept(store: SqliteJobStore, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    ModelRegistry(store, root)
    old = root / ".staging" / "flowers-crashed"
    old.mkdir(parents=True)
    (old / WEIGHTS_FILE).write_bytes(b"partial")
    fresh = root / ".staging" / "flowers-in-progress"
    fresh.mkdir()
    past = time.time() - 7200
    os.utime(old, (past, past))
    ModelRegistry(store, root)
    assert not old.exists()
    assert fresh.exists()  # may belong to a registration running in another process


def test_registry_survives_a_moved_data_dir(store: SqliteJobStore, tmp_path: Path) -> None:
    register(ModelRegistry(store, tmp_path / "registry"))
    (tmp_path / "registry").rename(tmp_path / "moved")
    _, tensors, _ = ModelRegistry(store, tmp_path / "moved").load(ModelRef("flowers"))
    assert_same(tensors, weights(0))


def test_a_card_edited_on_disk_is_refused(registry: ModelRegistry) -> None:
    mv = register(registry)
    path = Path(mv.artifact_dir) / CARD_FILE
    card = json.loads(path.read_text())
    card["labels"] = ["rose", "daisy"]  # same version and sha256: only the store can tell
    path.write_text(json.dumps(card))
    with pytest.raises(FailedPrecondition, match="differs from the card model 'flowers'"):
        registry.load(ModelRef("flowers"))


def test_each_host_reads_the_artifacts_where_it_mounts_them(
    store: SqliteJobStore, tmp_path: Path
) -> None:
    """The shared artifacts mounted at /a on the registering worker's host and at /b on a
    server's: the server reads its own mount, not the path the worker recorded."""
    register(ModelRegistry(store, tmp_path / "a" / "registry"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    weights_at_a = tmp_path / "a" / "registry" / "flowers" / "1" / WEIGHTS_FILE
    data = bytearray(weights_at_a.read_bytes())
    data[-1] ^= 0xFF  # stale or broken there
    weights_at_a.write_bytes(bytes(data))
    _, tensors, _ = ModelRegistry(store, tmp_path / "b" / "registry").load(ModelRef("flowers"))
    assert_same(tensors, weights(0))
    with pytest.raises(FailedPrecondition, match="was registered with"):
        ModelRegistry(store, tmp_path / "a" / "registry").load(ModelRef("flowers"))
