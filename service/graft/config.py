"""Configuration is data: one frozen dataclass built from flags and environment, printed at
start and stored with every job. Nothing deeper in the code reads globals or os.environ."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# URL schemes of a PostgreSQL job store (libpq's).
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("graft-data")
    # The job store (docs/SCALING.md): "" is the embedded SQLite file in data_dir
    # (`store_path`); a postgresql://user@host:port/db URL is a PostgreSQL database that
    # the server and every worker share. Its password is best left to libpq's PGPASSWORD
    # or PGPASSFILE; one in the URL is masked where the config is printed or stored.
    store_url: str = ""
    # Where the files several processes or hosts read live (docs/SCALING.md § Shared
    # artifacts): the registry's weights and cards, uploads, checkpoints and feature caches,
    # extracted archives, imported backbone weights. None: the data directory itself (one
    # host, nothing moves). Several hosts: the same shared volume (ReadWriteMany) for the
    # server replicas and every worker, while each keeps its own data_dir.
    artifacts_dir: Path | None = None
    data_roots: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464  # 0 turns the /metrics endpoint off
    worker_metrics_port: int = 9465
    embedded_worker: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    # Hostile files (docs/SECURITY.md § Hostile files). An archive expands to at most
    # max_extract_ratio times its own size and at most max_extract_bytes in all (each entry
    # counts 512 bytes besides its data), with at most max_archive_members entries; counted
    # while extracting. An image may declare at most max_image_pixels (checked from its
    # header before decoding); one Predict request at most max_predict_pixels in all.
    max_extract_ratio: float = 20.0
    max_extract_bytes: int = 8 * 1024 * 1024 * 1024
    max_archive_members: int = 200_000
    max_image_pixels: int = 50_000_000
    max_predict_pixels: int = 200_000_000
    # Classes a dataset may have (0: no limit); more is FAILED_PRECONDITION before decoding.
    max_classes: int = 1000
    max_predict_images: int = 256
    # Uploads (docs/SECURITY.md § Uploads: quota, expiry, deletion). A tenant's uploads
    # (archives plus their extracted copies) store at most upload_quota_bytes (0: no
    # quota); one unused for upload_ttl_seconds is deleted (0: never) by the advisor lane's
    # sweep, which runs every upload_sweep_seconds. The extracted copies of archives in
    # data roots take at most extract_cache_bytes (least recently used evicted first;
    # 0: unbounded).
    upload_quota_bytes: int = 20 * 1024 * 1024 * 1024
    upload_ttl_seconds: float = 7 * 24 * 3600.0
    upload_sweep_seconds: float = 600.0
    extract_cache_bytes: int = 32 * 1024 * 1024 * 1024
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
    # On a machine without CUDA the two cuda ones are refused at once ("no CUDA device").
    predict_runtimes: tuple[str, ...] = ("cuda-fp16", "cuda", "onnxruntime", "torchscript", "eager")
    small_dataset_threshold: int = 1000
    advise_max_per_class: int = 50
    advise_max_images: int = 2000
    # "" = cuda when available, else cpu; a comma list (cuda:0,cuda:1) trains each
    # fine-tune job on all of them (graft.training.launch)
    device: str = ""
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
    # Authentication and tenants (docs/SECURITY.md): "auto" is on unless `host` is a
    # loopback address (so the embedded default on 127.0.0.1 needs no key), "on" and "off"
    # force it. With it off every caller is the default tenant's admin.
    auth: str = "auto"
    # gRPC services answered without a key when authentication is on.
    auth_open_services: tuple[str, ...] = (
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    )
    # The server's /metrics answers only scrapes with an admin API key (Prometheus:
    # `authorization: {credentials_file: ...}`); off by default, like health probes.
    metrics_auth: bool = False
    # TLS: PEM files of the server's certificate chain and private key ("": plaintext);
    # with a client CA bundle, only clients presenting a certificate it signed connect (mTLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # A second, plaintext port that serves grpc.health.v1 only, for probes that cannot
    # speak TLS (Kubernetes' gRPC probes); 0: none.
    health_port: int = 0

    def __post_init__(self) -> None:
        if self.auth not in ("auto", "on", "off"):
            raise ValueError(f"auth must be auto, on or off, not {self.auth!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate (tls_cert) and its key (tls_key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("a client CA (mTLS) needs the server's own tls_cert and tls_key")
        if "graft.v1.AdaptationService" in self.auth_open_services:
            raise ValueError("graft.v1.AdaptationService cannot be open: its calls need a key")
        if min(self.upload_quota_bytes, self.upload_ttl_seconds, self.extract_cache_bytes) < 0:
            raise ValueError(
                "upload_quota_bytes, upload_ttl_seconds and extract_cache_bytes"
                " must not be negative (0 turns each off)"
            )
        if self.upload_sweep_seconds <= 0:
            raise ValueError("upload_sweep_seconds must be positive")
        if self.store_url and not is_postgres_url(self.store_url):
            raise ValueError(
                f"store_url (--store) must be empty (SQLite in the data directory) or a"
                f" postgresql:// URL, not {redact_url(self.store_url)!r}"
            )

    @property
    def auth_enabled(self) -> bool:
        """Whether AdaptationService calls need an API key (see `auth`)."""
        if self.auth == "auto":
            return not is_loopback(self.host)
        return self.auth == "on"

    @property
    def store_path(self) -> Path:
        """The SQLite store's file (used when `store_url` is empty)."""
        return self.data_dir / "graft.sqlite3"

    @property
    def store_name(self) -> str:
        """The store, for logs and messages: its file, or its URL with no password."""
        return redact_url(self.store_url) if self.store_url else str(self.store_path)

    @property
    def worker_ready_seconds(self) -> float:
        """A worker whose heartbeat is older than this is not counted alive."""
        return 3 * self.heartbeat_seconds

    @property
    def artifacts_root(self) -> Path:
        """The shared artifacts' root: `artifacts_dir`, or the data directory."""
        return self.data_dir if self.artifacts_dir is None else self.artifacts_dir

    @property
    def registry_dir(self) -> Path:
        return self.artifacts_root / "registry"

    @property
    def uploads_dir(self) -> Path:
        return self.artifacts_root / "uploads"

    @property
    def cache_dir(self) -> Path:
        return self.artifacts_root / "cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.artifacts_root / "checkpoints"

    @property
    def weights_dir(self) -> Path:
        """Where `graft backbones import` puts weight files."""
        return self.artifacts_root / "weights"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["artifacts_dir"] = None if self.artifacts_dir is None else str(self.artifacts_dir)
        d["data_roots"] = [str(p) for p in self.data_roots]
        return d

    def to_json(self) -> str:
        """Everything, secrets included: what the worker processes are started with."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def public_json(self) -> str:
        """`to_json` with the store URL's password masked: what is logged at start and
        stored with every job."""
        public = {**self.to_dict(), "store_url": redact_url(self.store_url)}
        return json.dumps(public, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "data_dir" in kw:
            kw["data_dir"] = Path(kw["data_dir"])
        if kw.get("artifacts_dir") is not None:
            kw["artifacts_dir"] = Path(kw["artifacts_dir"])
        if "data_roots" in kw:
            kw["data_roots"] = tuple(Path(p) for p in kw["data_roots"])
        for name in (
            "rpc_limits",
            "lanes",
            "predict_model_batching",
            "predict_runtimes",
            "auth_open_services",
        ):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


def env_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """GRAFT_* environment variables as Config keyword arguments (flags override them)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    if "GRAFT_DATA_DIR" in env:
        out["data_dir"] = Path(env["GRAFT_DATA_DIR"])
    if env.get("GRAFT_ARTIFACTS_DIR"):
        out["artifacts_dir"] = Path(env["GRAFT_ARTIFACTS_DIR"])
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
    if "GRAFT_AUTH" in env:
        out["auth"] = env["GRAFT_AUTH"]
    if "GRAFT_STORE_URL" in env:
        out["store_url"] = env["GRAFT_STORE_URL"]
    return out


def is_loopback(host: str) -> bool:
    """Whether `host` (as `--host` takes it) listens on the loopback interface only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False


def is_postgres_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (postgresql:// or postgres://)."""
    return urlsplit(url).scheme in POSTGRES_SCHEMES and "://" in url


def redact_url(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) replaced by
    ***, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        url = url.replace(parts.netloc, f"{user.partition(':')[0]}:***@{host}", 1)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
