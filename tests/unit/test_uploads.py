"""Uploads' quota, deletion and expiry, through a real in-process grpc.aio server, its
advisor lane (uploads are checked) and the SDK: a tenant's uploads store at most its quota
(RESOURCE_EXHAUSTED while receiving or extracting, nothing left on disk), one tenant can
neither see nor delete another's (NOT_FOUND), deleting frees the bytes but not while a job
uses the upload (FAILED_PRECONDITION naming it), and unused uploads expire while used ones
stay."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import graft_client
from graft import cli
from graft.advisor.housekeeping import Housekeeping
from graft.apikeys import hash_token, new_token
from graft.config import Config
from graft.data import resolve_dataset, save_upload
from graft.domain import DatasetRef, TrainingPlan
from graft.server import BackgroundServer
from graft.store import JobStore, open_store
from graft_client import Client

PLAN = {"strategy": graft_client.pb.STRATEGY_FEATURE_EXTRACTION, "epochs": 1}
QUOTA = 64 * 1024  # a few of the small datasets below


def new_key(store: JobStore, tenant: str, *, admin: bool = False) -> tuple[str, str]:
    """(key_id, token) of a fresh key, created as `graft keys create` does."""
    key_id, token = new_token()
    store.add_api_key(key_id, hash_token(token), tenant, admin=admin)
    return key_id, token


def _dataset(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8, 3), 40 * i + (100 if label == "b" else 0), np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _noise_dataset(root: Path, noise_bytes: int) -> Path:
    """A dataset folder that also holds `noise_bytes` of incompressible bytes."""
    _dataset(root)
    (root / "a" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(noise_bytes))
    return root


def _upload_folders(config: Config) -> set[str]:
    return {p.name for p in config.uploads_dir.iterdir()} if config.uploads_dir.exists() else set()


def _config(tmp: Path, **overrides: object) -> Config:
    return Config(
        data_dir=tmp / "data",
        data_roots=(tmp / "datasets",),
        embedded_worker=False,
        auth="on",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """Authentication on, a 64 KiB upload quota, no trainer (jobs stay queued), an
    in-process advisor lane (uploads are checked)."""
    tmp = tmp_path_factory.mktemp("uploads")
    _dataset(tmp / "datasets" / "two")
    with BackgroundServer(_config(tmp, upload_quota_bytes=QUOTA), advisor=True) as running:
        yield running


@pytest.fixture(scope="module")
def small(server: BackgroundServer) -> Path:
    return Path(server.config.data_roots[0]) / "two"


def _client(server: BackgroundServer, tenant: str, *, admin: bool = False) -> Client:
    return Client(server.target, api_key=new_key(server.services.store, tenant, admin=admin)[1])


def _received_messages(server: BackgroundServer) -> float:
    value = server.metrics.registry.get_sample_value(
        "grpc_server_msg_received_total",
        {
            "grpc_type": "client_stream",
            "grpc_service": "graft.v1.AdaptationService",
            "grpc_method": "UploadDataset",
        },
    )
    return value or 0.0


# --- quota -------------------------------------------------------------------------------


def test_an_archive_past_the_quota_is_refused_while_it_arrives(
    server: BackgroundServer, tmp_path: Path
) -> None:
    big = _noise_dataset(tmp_path / "big", 2 * QUOTA)
    before, received = _upload_folders(server.config), _received_messages(server)
    with _client(server, "hoarder") as client:
        with pytest.raises(graft_client.ResourceExhausted, match="upload quota") as info:
            client.upload_dataset(big, chunk_size=4096)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        listing = client.list_datasets()
    # Refused at the first chunk past the quota: the rest of the 38 chunks were not read.
    read = _received_messages(server) - received
    assert QUOTA // 4096 <= read <= QUOTA // 4096 + 2, read
    assert _upload_folders(server.config) == before  # the partial archive is gone
    assert (list(listing.datasets), listing.used_bytes, listing.quota_bytes) == ([], 0, QUOTA)


def test_an_archive_that_expands_past_the_quota_is_refused_while_extracting(
    server: BackgroundServer, tmp_path: Path
) -> None:
    bomb = tmp_path / "zeros.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for label in ("a", "b"):
            zf.writestr(
                f"{label}/0.png",
                (Path(server.config.data_roots[0]) / "two" / label / "0.png").read_bytes(),
            )
        zf.writestr("a/zeros.bin", bytes(2 * QUOTA))
    assert bomb.stat().st_size < QUOTA // 8  # the archive itself fits easily
    before = _upload_folders(server.config)
    with _client(server, "expander") as client:
        with pytest.raises(graft_client.ResourceExhausted, match="extracted archive"):
            client.upload_dataset(bomb)
        assert client.list_datasets().used_bytes == 0
    assert _upload_folders(server.config) == before
    assert server.services.store.upload_usage("expander") == 0


def test_uploads_fill_the_quota_and_deleting_one_frees_its_bytes(
    server: BackgroundServer, small: Path
) -> None:
    with _client(server, "filler") as client:
        first = client.upload_dataset(small)
        (listed,) = client.list_datasets().datasets
        stored = listed.archive_bytes + listed.extracted_bytes
        assert listed.dataset_id == first.dataset_id and listed.tenant == "filler"
        assert listed.archive_bytes == first.size_bytes and listed.extracted_bytes > 0
        assert listed.filename == "two.tar" and len(listed.sha256) == 64
        fits = QUOTA // stored
        assert fits >= 2
        ids = [first.dataset_id] + [
            client.upload_dataset(small).dataset_id for _ in range(fits - 1)
        ]
        before = _upload_folders(server.config)
        with pytest.raises(graft_client.ResourceExhausted, match="upload quota"):
            client.upload_dataset(small)
        assert _upload_folders(server.config) == before
        listing = client.list_datasets()
        assert listing.used_bytes == fits * stored <= QUOTA
        assert {d.dataset_id for d in listing.datasets} == set(ids)

        assert client.delete_dataset(ids[0]) == stored
        assert not (server.config.uploads_dir / ids[0]).exists()
        assert client.list_datasets().used_bytes == (fits - 1) * stored
        with pytest.raises(graft_client.NotFound):
            client.start_fine_tune("flowers", dataset_id=ids[0], plan=PLAN)
        client.upload_dataset(small)  # it fits again


# --- tenants and deletion ----------------------------------------------------------------


def test_another_tenant_can_neither_see_nor_delete_an_upload(
    server: BackgroundServer, small: Path
) -> None:
    with _client(server, "acme") as acme:
        dataset_id = acme.upload_dataset(small).dataset_id
    with _client(server, "globex") as globex:
        assert list(globex.list_datasets().datasets) == []
        with pytest.raises(graft_client.NotFound) as theirs:
            globex.delete_dataset(dataset_id)
        missing_id = "0" * 32
        with pytest.raises(graft_client.NotFound) as missing:
            globex.delete_dataset(missing_id)
        # Word for word what an upload that does not exist gets: nothing leaks.
        assert theirs.value.message.replace(dataset_id, "ID") == missing.value.message.replace(
            missing_id, "ID"
        )
        with pytest.raises(graft_client.InvalidArgument):
            globex.delete_dataset("../etc")
    with _client(server, "ops", admin=True) as admin:
        seen = {d.dataset_id: d.tenant for d in admin.list_datasets().datasets}
        assert seen[dataset_id] == "acme"
    with _client(server, "acme") as acme:
        assert [d.dataset_id for d in acme.list_datasets().datasets] == [dataset_id]
        assert (server.config.uploads_dir / dataset_id).is_dir()
        assert acme.delete_dataset(dataset_id) > 0


def test_an_upload_a_queued_job_uses_cannot_be_deleted(
    server: BackgroundServer, small: Path
) -> None:
    with _client(server, "busy") as client:
        dataset_id = client.upload_dataset(small).dataset_id
        used = client.list_datasets().datasets[0].last_used_time.ToNanoseconds()
        job = client.start_fine_tune("flowers", dataset_id=dataset_id, plan=PLAN)
        # Naming it in a new job is a use: its expiry starts again.
        assert client.list_datasets().datasets[0].last_used_time.ToNanoseconds() > used
        with pytest.raises(graft_client.FailedPrecondition, match=job.job_id):
            client.delete_dataset(dataset_id)
        assert (server.config.uploads_dir / dataset_id).is_dir()
        client.cancel_job(job.job_id)
        assert client.delete_dataset(dataset_id) > 0
        assert list(client.list_datasets().datasets) == []
    assert not (server.config.uploads_dir / dataset_id).exists()


def test_the_cli_lists_and_deletes_datasets(
    server: BackgroundServer, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = new_key(server.services.store, "clitenant")[1]
    with Client(server.target, api_key=token) as client:
        dataset_id = client.upload_dataset(small).dataset_id
    flags = ["--target", server.target, "--api-key", token]
    assert cli.main(["datasets", *flags]) == 0
    out = capsys.readouterr().out
    assert dataset_id in out and "two.tar" in out and "quota 64.0 KiB" in out
    assert cli.main(["datasets", "delete", dataset_id, *flags]) == 0
    assert f"deleted dataset {dataset_id}" in capsys.readouterr().out
    assert cli.main(["datasets", "delete", dataset_id, *flags]) == cli.EXIT_ERROR
    assert "NOT_FOUND" in capsys.readouterr().err


# --- expiry ------------------------------------------------------------------------------


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_unused_uploads_expire_and_those_a_queued_job_uses_stay(tmp_path: Path) -> None:
    small = _dataset(tmp_path / "datasets" / "two")
    config = _config(tmp_path, upload_ttl_seconds=4.0, upload_sweep_seconds=0.2)
    with BackgroundServer(config, advisor=True) as running:
        store: JobStore = running.services.store
        with _client(running, "acme") as client:
            used = client.upload_dataset(small).dataset_id
            job = client.start_fine_tune("flowers", dataset_id=used, plan=PLAN)
            unused = client.upload_dataset(small).dataset_id
            (entry,) = [d for d in client.list_datasets().datasets if d.dataset_id == unused]
            ttl = entry.expire_time.ToNanoseconds() - entry.last_used_time.ToNanoseconds()
            assert ttl == 4 * 10**9
            # The advisor lane's own sweep removes the unused one, record and folder.
            _wait_for(lambda: unused not in {d.dataset_id for d in client.list_datasets().datasets})
            assert not (config.uploads_dir / unused).exists()
            assert {d.dataset_id for d in client.list_datasets().datasets} == {used}
            # However late it gets, the queued job's upload stays (a fake clock, a week on).
            later = Housekeeping(config, store, clock=lambda: time.time() + 7 * 86400)
            assert later.run().expired == []
            assert (config.uploads_dir / used / "extracted").is_dir()
            client.cancel_job(job.job_id)
            report = later.run()
            assert report.expired == [used] and report.expired_bytes > 0
            assert not (config.uploads_dir / used).exists()
            assert list(client.list_datasets().datasets) == []
            with pytest.raises(graft_client.NotFound):
                client.advise(dataset_id=used)


def test_uploads_from_before_records_are_adopted_and_debris_removed(tmp_path: Path) -> None:
    """An upload folder the store has no record of: adopted (the default tenant's) when its
    meta file names no tenant (it predates upload records); removed when it names one (its
    record was deleted, the folder survived a crash) or has no meta (its check never ended)
    once a day old."""
    config = _config(tmp_path)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.add(_dataset(tmp_path / "ds"), arcname="ds")
    legacy = save_upload(config, "legacy.tar", [data.getvalue()]).dataset_id
    deleted = save_upload(config, "gone.tar", [data.getvalue()]).dataset_id
    meta = config.uploads_dir / deleted / "upload.json"
    meta.write_text(meta.read_text().replace("{", '{"tenant": "acme",', 1))
    unfinished = config.uploads_dir / ("f" * 32)
    unfinished.mkdir()
    (unfinished / "x.tar.part").write_bytes(b"x")
    doomed = config.uploads_dir / ".deleting-abc"
    doomed.mkdir()
    day_ago = time.time() - 2 * 86400
    for folder in (legacy, deleted, "f" * 32, ".deleting-abc"):
        for path in [config.uploads_dir / folder, *(config.uploads_dir / folder).iterdir()]:
            os.utime(path, (day_ago, day_ago))
    with BackgroundServer(config) as running:
        report = Housekeeping(config, running.services.store).run()
        assert (report.adopted, report.removed_folders) == (1, 3)
        assert _upload_folders(config) == {legacy}
        (adopted,) = running.services.store.list_uploads()
        assert (adopted.dataset_id, adopted.tenant, adopted.filename) == (
            legacy,
            "default",
            "legacy.tar",
        )
        assert adopted.size_bytes == len(data.getvalue())


# --- the extraction cache of data-root archives --------------------------------------------


def test_the_extraction_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    """Least recently used first, never the archive of a queued job nor one used within the
    hour; an evicted archive is extracted again when it is next used."""
    root = tmp_path / "datasets"
    root.mkdir()
    config = _config(tmp_path)
    for name in ("a", "b", "c", "d"):
        folder = _noise_dataset(tmp_path / "src" / name, 4096)
        (folder / "b" / f"{name}.txt").write_text(name)  # distinct contents, distinct entries
        with zipfile.ZipFile(root / f"{name}.zip", "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, path.relative_to(folder).as_posix())
    entries = {}
    for name in ("a", "b", "c", "d"):
        extracted = resolve_dataset(DatasetRef(uri=f"{name}.zip"), config)
        entries[name] = extracted
        assert extracted.parent == config.cache_dir / "extracted"
    sizes = {n: int((p.parent / f"{p.name}.size").read_text()) for n, p in entries.items()}
    assert min(sizes.values()) > 4096
    now = time.time()
    for hours, name in ((4, "a"), (3, "b"), (2, "c")):  # d: used just now
        os.utime(entries[name], (now - hours * 3600, now - hours * 3600))
    store = open_store(config)
    try:
        store.create_job(  # a queued job on the oldest: kept
            model_name="m", dataset=DatasetRef(uri="a.zip"), plan=TrainingPlan(), request_id=""
        )
        bound = sum(sizes.values()) - sizes["b"] // 2  # one eviction is enough
        sweep = Housekeeping(dataclasses.replace(config, extract_cache_bytes=bound), store)
        report = sweep.run()
        assert (report.evicted, report.evicted_bytes) == (1, sizes["b"])
        assert {n for n, p in entries.items() if p.is_dir()} == {"a", "c", "d"}
        assert not (entries["b"].parent / f"{entries['b'].name}.size").exists()
        # Nothing else may go: a is in use, d was used within the hour; c is enough.
        tight = Housekeeping(dataclasses.replace(config, extract_cache_bytes=1), store).run()
        assert tight.evicted == 1 and not entries["c"].exists()
        assert entries["a"].is_dir() and entries["d"].is_dir()
    finally:
        store.close()
    again = resolve_dataset(DatasetRef(uri="b.zip"), config)  # extracted again
    assert again == entries["b"] and again.is_dir()
    assert again.stat().st_mtime > now - 60
