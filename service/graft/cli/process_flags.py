"""Flags of the processes `graft serve` and `graft worker`: each one a Config field,
None when not given (the environment's value, then the default, applies)."""

from __future__ import annotations

import argparse
from pathlib import Path

from graft.cli.options import log_options
from graft.cli.serve import cmd_serve, cmd_worker
from graft.cli.subcommands import Commands, command


def add_serve(commands: Commands) -> None:
    p = command(
        commands,
        "serve",
        cmd_serve,
        parents=[log_options()],
        help="run the API server (and one embedded worker)",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off (default 9464)")
    p.add_argument("--data-dir", type=Path, help="store, registry, uploads (default graft-data)")
    _add_artifacts(p)
    _add_store(p)
    p.add_argument(
        "--data-root",
        type=Path,
        action="append",
        dest="data_roots",
        metavar="PATH",
        help="a folder dataset URIs may point into (repeatable)",
    )
    p.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    p.add_argument("--lease-seconds", type=float, help="job lease length (default 30)")
    p.add_argument("--device", help="torch device for the embedded worker (default: auto)")
    p.add_argument(
        "--worker-metrics-port", type=int, help="embedded worker's Prometheus port (default 9465)"
    )
    _add_serve_limits(p)
    _add_serve_security(p)


def _add_artifacts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts-dir",
        type=Path,
        metavar="DIR",
        help="registry, uploads, checkpoints, caches: the same shared folder for every server"
        " and worker (default: the data directory; $GRAFT_ARTIFACTS_DIR; docs/SCALING.md)",
    )


def _add_store(p: argparse.ArgumentParser, what: str = "the job store") -> None:
    p.add_argument(
        "--store",
        dest="store_url",
        metavar="URL",
        help=f"{what}: a postgresql:// URL (server and workers on several hosts), or none"
        " for SQLite in the data directory (the default; $GRAFT_STORE_URL; docs/SCALING.md)",
    )


def _add_serve_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-message-bytes", type=int, help="gRPC message size limit (default 64 MiB)")
    p.add_argument("--max-upload-bytes", type=int, help="largest dataset upload (default 2 GiB)")
    p.add_argument(
        "--upload-quota-bytes",
        type=int,
        help="bytes each tenant's uploads may store, extracted copies included (default"
        " 20 GiB; 0: no quota)",
    )
    p.add_argument(
        "--upload-ttl-seconds",
        type=float,
        help="delete uploads unused this long (default 7 days; 0: never)",
    )
    p.add_argument(
        "--extract-cache-bytes",
        type=int,
        help="bound on extracted copies of data-root archives (default 32 GiB; 0: none)",
    )
    p.add_argument(
        "--grace-seconds", type=float, help="drain time for in-flight RPCs on SIGTERM (default 10)"
    )
    p.add_argument(
        "--limit",
        action="append",
        dest="rpc_limits",
        metavar="METHOD=C[:Q]",
        help="admission control: at most C concurrent METHOD RPCs and Q more waiting; beyond,"
        " RESOURCE_EXHAUSTED (repeatable; METHOD '*' = every other; docs/OPERATIONS.md)",
    )
    p.add_argument(
        "--predict-max-batch",
        type=int,
        help="Predict: most images in one batched forward pass (default 32)",
    )
    p.add_argument(
        "--predict-max-delay-ms",
        type=float,
        help="Predict: how long an idle runner waits for more requests to batch (default 0:"
        " it takes what is queued at once; batches form while runners are busy)",
    )
    p.add_argument(
        "--predict-runners",
        type=int,
        help="Predict: inference runner threads (default 0: one per core, one thread each)",
    )
    p.add_argument(
        "--max-jobs-per-model",
        type=int,
        help="jobs queued or running per model name before StartFineTune says"
        " RESOURCE_EXHAUSTED (default 16)",
    )


def _add_serve_security(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        choices=("auto", "on", "off"),
        help="require API keys (`graft keys`): auto (default) = on unless --host is loopback",
    )
    p.add_argument(
        "--auth-open",
        action="append",
        dest="auth_open_services",
        metavar="SERVICE",
        help="a gRPC service answered without a key (repeatable; replaces the default:"
        " grpc.health.v1.Health and grpc.reflection.v1alpha.ServerReflection)",
    )
    p.add_argument(
        "--metrics-auth",
        action="store_true",
        default=None,
        help="/metrics answers only scrapes with an admin API key (default: open)",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mTLS: accept only clients with a certificate signed by this CA bundle",
    )
    p.add_argument(
        "--health-port",
        type=int,
        help="also serve grpc.health.v1 alone on this plaintext port, for probes that cannot"
        " speak TLS (default 0: none)",
    )


def add_worker(commands: Commands) -> None:
    p = command(
        commands, "worker", cmd_worker, parents=[log_options()], help="run a training worker"
    )
    p.add_argument(
        "--host", help="address of the /metrics endpoint (default 127.0.0.1; 0.0.0.0 in containers)"
    )
    p.add_argument("--data-dir", type=Path, help="the server's data directory")
    _add_artifacts(p)
    _add_store(p, "the server's job store (same --store as the server's)")
    p.add_argument("--worker-id", help="name in leases and logs (default: host-pid)")
    p.add_argument(
        "--data-root",
        type=Path,
        action="append",
        dest="data_roots",
        metavar="PATH",
        help="a folder dataset URIs may point into (repeatable; same as the server's)",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off (default 9465)")
    p.add_argument("--lease-seconds", type=float, help="job lease length (default 30)")
    p.add_argument(
        "--device",
        help="torch device, e.g. cuda:1, or a comma list (cuda:0,cuda:1) to train each "
        "fine-tune job on all of them with DDP (default: auto)",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        help="on SIGTERM, longest wait for the epoch's checkpoint before stopping at the next"
        " step (default 20)",
    )
    p.add_argument(
        "--lane",
        action="append",
        dest="lanes",
        choices=("trainer", "advisor"),
        help="what this worker runs: fine-tune jobs (trainer), Advise and upload checks"
        " (advisor); repeatable (default: both)",
    )
