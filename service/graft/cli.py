"""The `graft` command line.

`serve` and `worker` start processes (their modules are imported only when run, so the
client commands start fast); `backbones import` works on a local data directory; every
other command is a client of the SDK (`graft_client`). SDK errors print as
`error: CODE: message` with the field violations and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

import graft_client
from graft.config import Config, env_defaults
from graft_client import Client, GraftError, pb

DEFAULT_TARGET = "localhost:50051"

EXIT_OK = 0
EXIT_JOB_NOT_SUCCEEDED = 1  # also: some images in `predict` could not be classified
EXIT_ERROR = 2  # an RPC or usage error
EXIT_INTERRUPTED = 130

STRATEGIES = {
    "full": pb.STRATEGY_FULL_FINE_TUNE,
    "partial": pb.STRATEGY_PARTIAL_FINE_TUNE,
    "feature-extraction": pb.STRATEGY_FEATURE_EXTRACTION,
}
STRATEGY_TEXT = {
    pb.STRATEGY_UNSPECIFIED: "server default",
    pb.STRATEGY_FULL_FINE_TUNE: "1 full fine-tune",
    pb.STRATEGY_PARTIAL_FINE_TUNE: "2 partial fine-tune",
    pb.STRATEGY_FEATURE_EXTRACTION: "3 feature extraction",
}
QUADRANT_TEXT = {
    pb.QUADRANT_UNSPECIFIED: "undetermined",
    pb.QUADRANT_LARGE_DIFFERENT: "1 large & different",
    pb.QUADRANT_LARGE_SIMILAR: "2 large & similar",
    pb.QUADRANT_SMALL_DIFFERENT: "3 small & different",
    pb.QUADRANT_SMALL_SIMILAR: "4 small & similar",
}


# -- formatting helpers ------------------------------------------------------------------


def state_name(state: int) -> str:
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def fmt_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def fmt_time(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_epoch(seconds: float) -> str:
    """Epoch seconds as local time."""
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return fmt_time(ts)


def fmt_size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def fmt_model_ref(ref: pb.ModelRef) -> str:
    if ref.version:
        return f"{ref.name}:{ref.version}"
    if ref.alias:
        return f"{ref.name}@{ref.alias}"
    return ref.name


def fmt_dataset(ref: pb.DatasetRef) -> str:
    return ref.uri or (f"upload {ref.dataset_id}" if ref.dataset_id else "-")


def fmt_metrics(metrics: pb.EvaluationMetrics) -> str:
    if not metrics.labels and not metrics.accuracy and not metrics.loss:
        return "-"
    return (
        f"accuracy {metrics.accuracy:.1%}  top-5 {metrics.top5_accuracy:.1%}  "
        f"macro-F1 {metrics.macro_f1:.3f}  loss {metrics.loss:.4f}"
    )


def describe_plan(plan: pb.TrainingPlan) -> str:
    if plan.ByteSize() == 0:
        return "advised by the server"
    parts = [plan.backbone or "default backbone", STRATEGY_TEXT.get(plan.strategy, "?")]
    if plan.strategy == pb.STRATEGY_PARTIAL_FINE_TUNE and plan.trainable_stages:
        parts[-1] += f" (top {plan.trainable_stages} stages)"
    if plan.strategy == pb.STRATEGY_FEATURE_EXTRACTION and plan.feature_stages:
        stages = "+".join(map(str, plan.feature_stages))
        word = "stage" if len(plan.feature_stages) == 1 else "stages"
        grid = f", {plan.feature_grid}x{plan.feature_grid} grid" if plan.feature_grid > 1 else ""
        parts[-1] += f" ({word} {stages} features{grid})"
    if plan.epochs:
        parts.append(f"{plan.epochs} epochs")
    if plan.batch_size:
        parts.append(f"batch {plan.batch_size}")
    if plan.image_size:
        parts.append(f"{plan.image_size} px")
    if plan.head_learning_rate:
        parts.append(f"head lr {plan.head_learning_rate:g}")
    if plan.base_learning_rate:
        parts.append(f"base lr {plan.base_learning_rate:g}")
    if plan.augmentation:
        parts.append("augmentation")
    if plan.class_weighting:
        parts.append("class weighting")
    if plan.early_stopping_patience:
        parts.append(f"early stopping after {plan.early_stopping_patience}")
    return ", ".join(parts)


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str], out: IO[str]) -> None:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in (header, *rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print(line.rstrip(), file=out)


def print_fields(fields: Iterable[tuple[str, str]], out: IO[str]) -> None:
    items = list(fields)
    width = max(len(k) for k, _ in items)
    for key, value in items:
        lines = value.splitlines() or [""]
        print(f"{key.ljust(width)}  {lines[0]}", file=out)
        for line in lines[1:]:
            print(f"{' ' * width}  {line}", file=out)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Message | Sequence[Message], out: IO[str]) -> None:
    data = to_dict(value) if isinstance(value, Message) else [to_dict(m) for m in value]
    print(json.dumps(data, indent=2), file=out)


def print_violations(message: str, violations: Iterable[tuple[str, str]], err: IO[str]) -> None:
    for field, description in violations:
        if f"{field}: {description}" != message:  # a lone violation is often the message
            print(f"  {field}: {description}", file=err)


def print_error(error: GraftError, err: IO[str], target: str | None = None) -> None:
    print(f"error: {error.code.name}: {error.message}", file=err)
    print_violations(error.message, error.field_violations, err)
    if error.code.name == "UNAVAILABLE" and target:
        print(f"  (is a Graft server running at {target}? see --target / GRAFT_TARGET)", file=err)


def job_fields(job: pb.Job) -> list[tuple[str, str]]:
    fields = [
        ("job", job.job_id),
        ("state", state_name(job.state) + ("  (cancel requested)" if job.cancel_requested else "")),
        ("model", fmt_model_ref(job.model) if job.model.name else job.model_name),
        ("dataset", fmt_dataset(job.dataset)),
        ("plan", describe_plan(job.plan)),
        ("created", fmt_time(job.create_time)),
        ("started", fmt_time(job.start_time)),
        ("ended", fmt_time(job.end_time)),
        ("attempts", str(job.attempts)),
        ("events", str(job.last_sequence)),
    ]
    if job.skipped_files:
        fields.append(("skipped", f"{job.skipped_files} undecodable files"))
    if job.HasField("metrics"):
        fields.append(("metrics", fmt_metrics(job.metrics)))
    if job.error:
        fields.append(("error", job.error))
    return fields


# -- live progress -------------------------------------------------------------------------


class ProgressPrinter:
    """Renders progress events on a stream: a live bar on a terminal (redrawn in place),
    one line every `interval` seconds otherwise; evaluations, state changes and messages
    always get their own line."""

    BAR_WIDTH = 24

    def __init__(self, out: IO[str], *, tty: bool | None = None, interval: float = 10.0) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.interval = interval
        self._last_line = float("-inf")
        self._bar_shown = False

    def __call__(self, event: pb.ProgressEvent) -> None:
        if event.kind == pb.EVENT_KIND_STEP:
            self._step(event)
        elif event.kind == pb.EVENT_KIND_EVALUATION:
            self.line(
                f"epoch {event.epoch}/{event.total_epochs} evaluated: " + fmt_metrics(event.metrics)
            )
        elif event.kind == pb.EVENT_KIND_STATE:
            text = f"job {event.job_id}: {state_name(event.state)}"
            self.line(text + (f" - {event.message}" if event.message else ""))
        elif event.message:
            self.line(event.message)

    def step_text(self, event: pb.ProgressEvent) -> str:
        steps = max(event.steps_per_epoch, 1)
        epochs = max(event.total_epochs, 1)
        done = ((max(event.epoch, 1) - 1) * steps + min(event.step, steps)) / (epochs * steps)
        filled = round(self.BAR_WIDTH * min(done, 1.0))
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        text = (
            f"epoch {event.epoch}/{event.total_epochs} [{bar}] {done:4.0%} "
            f"step {event.step}/{event.steps_per_epoch}  loss {event.loss:.4f}"
        )
        if event.images_per_second:
            text += f"  {event.images_per_second:.0f} img/s"
        if event.eta_seconds > 0:
            text += f"  ETA {fmt_duration(event.eta_seconds)}"
        return text

    def _step(self, event: pb.ProgressEvent) -> None:
        text = self.step_text(event)
        if self.tty:
            self.out.write("\r" + text + "\x1b[K")
            self.out.flush()
            self._bar_shown = True
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            print(text, file=self.out, flush=True)

    def line(self, text: str) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[K")
            self._bar_shown = False
        print(text, file=self.out, flush=True)

    def finish(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False


# -- argument parsing ----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft",
        description="Adapt pretrained image CNNs to your own labelled images.",
    )
    parser.add_argument("--version", action="version", version=f"graft {graft_client.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument(
        "--target",
        default=os.environ.get("GRAFT_TARGET", DEFAULT_TARGET),
        help="server host:port (default: $GRAFT_TARGET or %(default)s)",
    )
    client_opts.add_argument("--timeout", type=float, help="deadline of each call in seconds")
    client_opts.add_argument(
        "--api-key",
        help="API key sent with every call (default: $GRAFT_API_KEY, which keeps it out of"
        " the process list); a server on loopback with its defaults needs none",
    )
    client_opts.add_argument(
        "--tls", action="store_true", help="connect with TLS, verifying against the system CAs"
    )
    client_opts.add_argument(
        "--ca-cert",
        default=os.environ.get("GRAFT_CA_CERT"),
        metavar="PEM",
        help="TLS: CA bundle to verify the server with (default: $GRAFT_CA_CERT)",
    )
    client_opts.add_argument(
        "--client-cert",
        default=os.environ.get("GRAFT_CLIENT_CERT"),
        metavar="PEM",
        help="mTLS: this client's certificate chain (default: $GRAFT_CLIENT_CERT)",
    )
    client_opts.add_argument(
        "--client-key",
        default=os.environ.get("GRAFT_CLIENT_KEY"),
        metavar="PEM",
        help="mTLS: this client's private key (default: $GRAFT_CLIENT_KEY)",
    )
    client_opts.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="TLS: the name on the server's certificate, when not the target's host"
        " (e.g. through kubectl port-forward)",
    )
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print JSON instead of text")

    log_opts = argparse.ArgumentParser(add_help=False)
    log_opts.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="json lines (default) or human-readable text",
    )
    log_opts.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="default info"
    )

    p = commands.add_parser(
        "serve", parents=[log_opts], help="run the API server (and one embedded worker)"
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off (default 9464)")
    p.add_argument("--data-dir", type=Path, help="store, registry, uploads (default graft-data)")
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
    p.set_defaults(handler=cmd_serve, command_parser=p)

    p = commands.add_parser("worker", parents=[log_opts], help="run a training worker")
    p.add_argument(
        "--host", help="address of the /metrics endpoint (default 127.0.0.1; 0.0.0.0 in containers)"
    )
    p.add_argument("--data-dir", type=Path, help="the server's data directory")
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
    p.add_argument("--device", help="torch device, e.g. cuda:1 (default: auto)")
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
    p.set_defaults(handler=cmd_worker, command_parser=p)

    p = commands.add_parser(
        "advise", parents=[client_opts, json_opt], help="measure a dataset, recommend a plan"
    )
    _dataset_args(p)
    p.add_argument(
        "--backbone",
        action="append",
        dest="backbones",
        default=[],
        help="candidate backbone (repeatable; default: all available)",
    )
    p.add_argument("--small-threshold", type=int, default=0, help="images/class below = small")
    p.set_defaults(handler=cmd_advise, command_parser=p)

    p = commands.add_parser(
        "train", parents=[client_opts, json_opt], help="start a fine-tuning job"
    )
    p.add_argument("model_name", metavar="MODEL_NAME", help="registry name to register under")
    _dataset_args(p)
    p.add_argument("--strategy", choices=list(STRATEGIES), help="default: the advised one")
    p.add_argument("--backbone", help="backbone catalog name")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--image-size", type=_positive_int)
    p.add_argument("--trainable-stages", type=_positive_int, help="for --strategy partial")
    p.add_argument("--head-lr", type=float, help="learning rate of the new head")
    p.add_argument("--base-lr", type=float, help="learning rate of the pretrained layers")
    p.add_argument("--seed", type=int)
    p.add_argument("--request-id", help="idempotency key (default: a fresh uuid)")
    p.add_argument("--follow", "-f", action="store_true", help="show progress until it ends")
    p.set_defaults(handler=cmd_train, command_parser=p)

    p = commands.add_parser("predict", parents=[client_opts, json_opt], help="classify image files")
    p.add_argument("model", metavar="MODEL[:VERSION|@ALIAS]")
    p.add_argument("files", metavar="FILE", nargs="+", type=Path)
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per request")
    p.set_defaults(handler=cmd_predict, command_parser=p)

    p = commands.add_parser(
        "jobs",
        parents=[client_opts, json_opt],
        help="list jobs, show one (jobs JOB_ID), or cancel one (jobs cancel JOB_ID)",
    )
    p.add_argument("words", nargs="*", metavar="JOB_ID | cancel JOB_ID")
    p.add_argument("--state", help="only jobs in this state (queued, running, succeeded, ...)")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default 100)")
    p.set_defaults(handler=cmd_jobs, command_parser=p)

    p = commands.add_parser("cancel", parents=[client_opts, json_opt], help="cancel a job")
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(handler=cmd_cancel, command_parser=p)

    p = commands.add_parser(
        "models",
        parents=[client_opts, json_opt],
        help="list models, show one (models NAME[:VERSION|@ALIAS]), "
        "or set an alias (models alias NAME ALIAS VERSION)",
    )
    p.add_argument("words", nargs="*", metavar="NAME | alias NAME ALIAS VERSION")
    p.add_argument("--card", action="store_true", help="print the full model card")
    p.set_defaults(handler=cmd_models, command_parser=p)

    p = commands.add_parser(
        "backbones",
        parents=[client_opts, json_opt],
        help="list the backbone catalog, or import weights (backbones import NAME FILE)",
    )
    p.add_argument("words", nargs="*", metavar="import NAME FILE")
    p.add_argument("--data-dir", type=Path, help="for import: the server's data directory")
    p.set_defaults(handler=cmd_backbones, command_parser=p)

    p = commands.add_parser(
        "upload", parents=[client_opts, json_opt], help="upload a dataset archive or folder"
    )
    p.add_argument("archive", metavar="ARCHIVE", type=Path, help=".zip, .tar, .tar.gz or a folder")
    p.add_argument("--chunk-size", type=_positive_int, default=1024 * 1024)
    p.set_defaults(handler=cmd_upload, command_parser=p)

    p = commands.add_parser(
        "datasets",
        parents=[client_opts, json_opt],
        help="list uploaded datasets, or delete one (datasets delete DATASET_ID)",
    )
    p.add_argument("words", nargs="*", metavar="list | delete DATASET_ID")
    p.set_defaults(handler=cmd_datasets, command_parser=p)

    p = commands.add_parser(
        "keys",
        parents=[json_opt],
        help="API keys, on the server's store: keys create --tenant T [--admin], keys list,"
        " keys revoke KEY_ID",
    )
    p.add_argument("words", nargs="*", metavar="create | list | revoke KEY_ID")
    p.add_argument("--tenant", help="for create: the tenant the key acts for")
    p.add_argument("--admin", action="store_true", help="for create: sees every tenant")
    p.add_argument("--name", default="", help="for create: a note on whose key it is")
    p.add_argument("--data-dir", type=Path, help="the server's data directory")
    p.set_defaults(handler=cmd_keys, command_parser=p)
    return parser


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "uri",
        metavar="URI",
        nargs="?",
        help="dataset path on the server: folder per class, archive, or CSV manifest",
    )
    p.add_argument("--dataset-id", help="an uploaded dataset (see `graft upload`)")


def _dataset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if bool(args.uri) == bool(args.dataset_id):
        parser.error("give a dataset URI or --dataset-id (exactly one)")
    if args.dataset_id:
        return {"dataset_id": args.dataset_id}
    uri: str = args.uri
    # A relative path that exists here is made absolute: the server resolves paths
    # against its own working directory, which is rarely the caller's.
    if "://" not in uri and Path(uri).exists() and not Path(uri).is_absolute():
        uri = str(Path(uri).resolve())
    return {"dataset": uri}


# -- commands ------------------------------------------------------------------------------


class Context:
    """What a command needs: its arguments, the parser (for usage errors) and the streams."""

    def __init__(
        self, args: argparse.Namespace, parser: argparse.ArgumentParser, out: IO[str], err: IO[str]
    ) -> None:
        self.args = args
        self.parser = parser
        self.out = out
        self.err = err

    def client(self) -> Client:
        a = self.args
        kwargs: dict[str, Any] = {}
        if a.timeout is not None:
            kwargs["timeout"] = a.timeout
        return Client(
            a.target,
            api_key=a.api_key,
            tls=a.tls,
            ca_cert=a.ca_cert,
            client_cert=a.client_cert,
            client_key=a.client_key,
            tls_server_name=a.tls_server_name,
            **kwargs,
        )


def _config(**flags: Any) -> Config:
    values = env_defaults()
    values.update({k: v for k, v in flags.items() if v is not None})
    return Config(**values)


def cmd_serve(ctx: Context) -> int:
    a = ctx.args
    config = _config(
        host=a.host,
        port=a.port,
        metrics_port=a.metrics_port,
        data_dir=a.data_dir.expanduser().resolve() if a.data_dir else None,
        data_roots=tuple(p.expanduser().resolve() for p in a.data_roots) if a.data_roots else None,
        embedded_worker=False if a.no_worker else None,
        lease_seconds=a.lease_seconds,
        device=a.device,
        worker_metrics_port=a.worker_metrics_port,
        max_message_bytes=a.max_message_bytes,
        max_upload_bytes=a.max_upload_bytes,
        upload_quota_bytes=a.upload_quota_bytes,
        upload_ttl_seconds=a.upload_ttl_seconds,
        extract_cache_bytes=a.extract_cache_bytes,
        grace_seconds=a.grace_seconds,
        rpc_limits=tuple(a.rpc_limits) if a.rpc_limits else None,
        max_active_jobs_per_model=a.max_jobs_per_model,
        predict_max_batch=a.predict_max_batch,
        predict_max_delay_ms=a.predict_max_delay_ms,
        predict_runners=a.predict_runners,
        log_format=a.log_format,
        log_level=a.log_level,
        auth=a.auth,
        auth_open_services=tuple(a.auth_open_services) if a.auth_open_services else None,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca,
        health_port=a.health_port,
        metrics_auth=a.metrics_auth,
    )
    try:
        from graft.api.admission import parse_limits

        parse_limits(config.rpc_limits)
    except ValueError as exc:
        a.command_parser.error(str(exc))
    from graft.server import run_server

    return run_server(config)


def cmd_worker(ctx: Context) -> int:
    a = ctx.args
    config = _config(
        host=a.host,
        data_dir=a.data_dir.expanduser().resolve() if a.data_dir else None,
        data_roots=tuple(p.expanduser().resolve() for p in a.data_roots) if a.data_roots else None,
        worker_metrics_port=a.metrics_port,
        lease_seconds=a.lease_seconds,
        device=a.device,
        log_format=a.log_format,
        log_level=a.log_level,
        stop_timeout_seconds=a.stop_timeout,
        lanes=tuple(dict.fromkeys(a.lanes)) if a.lanes else None,
    )
    from graft.training.worker import run_worker

    return run_worker(config, a.worker_id)


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _span(low: int, high: int) -> str:
    return str(high) if low == high else f"{low}-{high}"


def _report_text(report: pb.DatasetReport, small_threshold: int) -> str:
    """Advise's dataset report in two lines: counts, then image sizes and colour modes."""
    counts = (
        f"{report.total_images} images in {len(report.classes)} classes"
        f" (small below {small_threshold}/class), imbalance {report.imbalance_ratio:.1f}"
    )
    if report.skipped_files:
        counts += f", {_count(report.skipped_files, 'file')} skipped"
    median = f"{report.median_width}x{report.median_height}"
    if report.max_width:  # older servers send only the median
        images = (
            f"sizes {_span(report.min_width, report.max_width)} x "
            f"{_span(report.min_height, report.max_height)} px (median {median})"
        )
    else:
        images = f"median {median} px"
    if report.modes:
        modes = sorted(report.modes.items(), key=lambda kv: (-kv[1], kv[0]))
        images += ", modes " + ", ".join(f"{mode} {n}" for mode, n in modes)
    return f"{counts}\n{images}"


def _duplicates_text(report: pb.DatasetReport) -> str:
    """Exact duplicates by content: how many, and which of them matter."""
    text = (
        f"{_count(report.duplicate_images, 'extra copy', 'extra copies')} in "
        f"{_count(report.duplicate_groups, 'group')} of identical files"
    )
    worse = []
    if report.cross_split_duplicates:
        worse.append(f"{report.cross_split_duplicates} across the train/validation split")
    if report.conflicting_label_duplicates:
        worse.append(f"{report.conflicting_label_duplicates} with conflicting labels")
    return text + (": " + ", ".join(worse) if worse else "")


def cmd_advise(ctx: Context) -> int:
    a = ctx.args
    with ctx.client() as client:
        advice = client.advise(
            **_dataset(a, ctx.parser),
            candidate_backbones=a.backbones,
            small_dataset_threshold=a.small_threshold,
        )
    if a.json:
        print_json(advice, ctx.out)
        return EXIT_OK
    strategy = STRATEGY_TEXT.get(advice.plan.strategy, "?")
    if advice.matrix_strategy and advice.matrix_strategy != advice.plan.strategy:
        strategy += f"  (the matrix alone says {STRATEGY_TEXT.get(advice.matrix_strategy)})"
    fields = [
        ("quadrant", QUADRANT_TEXT.get(advice.quadrant, "?")),
        ("strategy", strategy),
        ("similarity", f"{advice.similarity:.2f} (1 = like ImageNet)"),
    ]
    report = advice.report
    if report.total_images:
        fields.append(("dataset", _report_text(report, advice.small_dataset_threshold)))
        if report.duplicate_groups:
            fields.append(("duplicates", _duplicates_text(report)))
    if advice.similarity_signals:
        fields.append(
            (
                "signals",
                "\n".join(
                    f"{s.name} = {s.value:.3g} -> {s.score:.2f}" for s in advice.similarity_signals
                ),
            )
        )
    if advice.backbones:
        fields.append(
            (
                "backbones",
                "\n".join(
                    f"{b.backbone}: probe {b.probe_accuracy:.1%}"
                    + (f" (cut {b.cut_probe_accuracy:.1%})" if b.cut_probe_accuracy else "")
                    + f", LogME {b.logme:.3f}, {b.params_millions:.1f}M params,"
                    f" {b.images_per_second:.0f} img/s"
                    for b in advice.backbones
                ),
            )
        )
    fields.append(("plan", describe_plan(advice.plan)))
    if advice.estimated_training_seconds:
        estimate = f"~{fmt_duration(advice.estimated_training_seconds)} training"
        if advice.estimated_accuracy_high:
            estimate += (
                f", accuracy {advice.estimated_accuracy_low:.1%}"
                f"-{advice.estimated_accuracy_high:.1%}"
            )
        fields.append(("estimate", estimate))
    if advice.strategy_estimates:
        fields.append(
            (
                "strategies",
                "\n".join(
                    f"{STRATEGY_TEXT.get(e.strategy, '?')}: {e.accuracy_low:.1%}"
                    f"-{e.accuracy_high:.1%}, ~{fmt_duration(e.training_seconds)}"
                    for e in advice.strategy_estimates
                ),
            )
        )
    if advice.rationale:
        fields.append(("rationale", textwrap.fill(advice.rationale, 76)))
    print_fields(fields, ctx.out)
    return EXIT_OK


def _plan(a: argparse.Namespace) -> pb.TrainingPlan | None:
    plan = pb.TrainingPlan(
        backbone=a.backbone or "",
        strategy=STRATEGIES[a.strategy] if a.strategy else pb.STRATEGY_UNSPECIFIED,
        epochs=a.epochs or 0,
        batch_size=a.batch_size or 0,
        image_size=a.image_size or 0,
        trainable_stages=a.trainable_stages or 0,
        head_learning_rate=a.head_lr or 0.0,
        base_learning_rate=a.base_lr or 0.0,
        seed=a.seed or 0,
    )
    # No flag at all: send no plan, so the server advises and trains with its advice.
    return plan if plan.ByteSize() else None


def cmd_train(ctx: Context) -> int:
    a = ctx.args
    dataset = _dataset(a, ctx.parser)
    with ctx.client() as client:
        job = client.start_fine_tune(
            a.model_name, **dataset, plan=_plan(a), request_id=a.request_id
        )
        if not a.follow:
            if a.json:
                print_json(job, ctx.out)
            else:
                print_fields(job_fields(job), ctx.out)
                print(
                    f"follow it with: graft jobs {job.job_id} / graft train ... --follow",
                    file=ctx.err,
                )
            return EXIT_OK
        return _follow(ctx, client, job)


def _follow(ctx: Context, client: Client, job: pb.Job) -> int:
    a = ctx.args
    printer = ProgressPrinter(ctx.err)

    def print_event_json(event: pb.ProgressEvent) -> None:
        print(json.dumps(to_dict(event)), file=ctx.out, flush=True)

    on_event: Callable[[pb.ProgressEvent], None] = print_event_json if a.json else printer
    if not a.json:
        printer.line(
            f"job {job.job_id} {state_name(job.state)}: model {job.model_name}, "
            f"plan: {describe_plan(job.plan)}"
        )
    try:
        final = client.wait(job.job_id, on_event=on_event)
    except KeyboardInterrupt:
        # Ctrl-C stops following only; the job keeps running on the server.
        printer.finish()
        print(
            f"\nstopped following; job {job.job_id} keeps running "
            f"(graft jobs {job.job_id}, graft cancel {job.job_id})",
            file=ctx.err,
        )
        return EXIT_INTERRUPTED
    finally:
        printer.finish()
    if a.json:
        print_json(final, ctx.out)
    elif final.state == pb.JOB_STATE_SUCCEEDED:
        print(
            f"SUCCEEDED: registered {fmt_model_ref(final.model)}  {fmt_metrics(final.metrics)}",
            file=ctx.out,
        )
    else:
        print(
            f"{state_name(final.state)}: job {final.job_id}"
            + (f": {final.error}" if final.error else ""),
            file=ctx.out,
        )
    return EXIT_OK if final.state == pb.JOB_STATE_SUCCEEDED else EXIT_JOB_NOT_SUCCEEDED


def cmd_predict(ctx: Context) -> int:
    a = ctx.args
    try:
        ref = graft_client.parse_model_ref(a.model)
    except ValueError as e:
        ctx.parser.error(str(e))
    failures = 0
    names: list[str] = []
    images: list[bytes] = []
    lines: list[tuple[str, str]] = []
    results: list[dict[str, Any]] = []
    for path in a.files:
        try:
            images.append(path.read_bytes())
            names.append(str(path))
        except OSError as e:
            failures += 1
            lines.append((str(path), f"error: cannot read: {e.strerror or e}"))
            results.append({"file": str(path), "error": f"cannot read: {e.strerror or e}"})
    answered: pb.ModelRef | None = None
    with ctx.client() as client:
        for start in range(0, len(images), a.batch_size):
            response = client.predict(ref, images[start : start + a.batch_size], top_k=a.top_k)
            if answered is None:
                # Later batches use the version that answered the first, even if an alias
                # moves meanwhile.
                answered = pb.ModelRef(name=response.model.name, version=response.model.version)
                ref = answered
            for name, prediction in zip(
                names[start : start + a.batch_size], response.predictions, strict=False
            ):
                if prediction.HasField("error") and not prediction.classes:
                    failures += 1
                    lines.append(
                        (
                            name,
                            f"error: {_code_name(prediction.error.code)}: "
                            f"{prediction.error.message}",
                        )
                    )
                    results.append({"file": name, "error": prediction.error.message})
                else:
                    lines.append(
                        (name, "  ".join(f"{c.label} {c.score:.3f}" for c in prediction.classes))
                    )
                    results.append(
                        {
                            "file": name,
                            "classes": [
                                {"label": c.label, "score": round(c.score, 6)}
                                for c in prediction.classes
                            ],
                        }
                    )
    if a.json:
        model = fmt_model_ref(answered) if answered else a.model
        print(json.dumps({"model": model, "predictions": results}, indent=2), file=ctx.out)
    else:
        if answered is not None:
            print(f"model {fmt_model_ref(answered)}", file=ctx.out)
        width = max(len(n) for n, _ in lines) if lines else 0
        for name, text in lines:
            print(f"{name.ljust(width)}  {text}", file=ctx.out)
    return EXIT_JOB_NOT_SUCCEEDED if failures else EXIT_OK


def _code_name(code: int) -> str:
    from google.rpc import code_pb2

    try:
        return code_pb2.Code.Name(code)
    except ValueError:
        return str(code)


def cmd_jobs(ctx: Context) -> int:
    a = ctx.args
    words: list[str] = a.words
    if words and words[0] == "cancel":
        if len(words) != 2:
            ctx.parser.error("usage: graft jobs cancel JOB_ID")
        a.job_id = words[1]
        return cmd_cancel(ctx)
    if len(words) > 1:
        ctx.parser.error("usage: graft jobs [JOB_ID] | graft jobs cancel JOB_ID")
    with ctx.client() as client:
        if words:
            job = client.get_job(words[0])
            if a.json:
                print_json(job, ctx.out)
            else:
                print_fields(job_fields(job), ctx.out)
            return EXIT_OK
        try:
            state = graft_client.job_state(a.state)
        except ValueError as e:
            ctx.parser.error(str(e))
        jobs = client.list_jobs(state=state, limit=a.limit)
    if a.json:
        print_json(jobs, ctx.out)
        return EXIT_OK
    rows = []
    for job in jobs:
        if job.state == pb.JOB_STATE_SUCCEEDED:
            result = f"{fmt_model_ref(job.model)} acc {job.metrics.accuracy:.1%}"
        elif job.error:
            result = job.error.splitlines()[0][:60]
        else:
            result = "cancel requested" if job.cancel_requested else ""
        rows.append(
            [job.job_id, state_name(job.state), job.model_name, fmt_time(job.create_time), result]
        )
    print_table(rows, ["JOB", "STATE", "MODEL", "CREATED", "RESULT"], ctx.out)
    return EXIT_OK


def cmd_cancel(ctx: Context) -> int:
    with ctx.client() as client:
        job = client.cancel_job(ctx.args.job_id)
    if ctx.args.json:
        print_json(job, ctx.out)
    else:
        print(
            f"job {job.job_id}: {state_name(job.state)}"
            + (" (cancel requested)" if job.cancel_requested else ""),
            file=ctx.out,
        )
    return EXIT_OK


def _version_fields(v: pb.ModelVersion) -> list[tuple[str, str]]:
    labels = ", ".join(v.labels[:10]) + (
        f", ... ({len(v.labels)} in all)" if len(v.labels) > 10 else ""
    )
    return [
        ("model", f"{v.name}:{v.version}"),
        ("aliases", ", ".join(v.aliases) or "-"),
        ("backbone", v.backbone),
        ("labels", labels or "-"),
        ("metrics", fmt_metrics(v.metrics)),
        ("created", fmt_time(v.create_time)),
        ("job", v.job_id or "-"),
        ("sha256", v.sha256 or "-"),
    ]


def cmd_models(ctx: Context) -> int:
    a = ctx.args
    words: list[str] = a.words
    with ctx.client() as client:
        if words and words[0] == "alias" and len(words) == 4:
            try:
                version = int(words[3])
            except ValueError:
                ctx.parser.error(f"VERSION must be a number, got {words[3]!r}")
            mv = client.set_model_alias(words[1], words[2], version)
            if a.json:
                print_json(mv, ctx.out)
            else:
                print(f"{mv.name}@{words[2]} -> version {mv.version}", file=ctx.out)
            return EXIT_OK
        if len(words) > 1:
            ctx.parser.error(
                "usage: graft models [NAME[:VERSION|@ALIAS]] | "
                "graft models alias NAME ALIAS VERSION"
            )
        if words and (":" in words[0] or "@" in words[0] or a.card):
            mv = client.get_model(words[0])
            if a.json:
                print_json(mv, ctx.out)
            elif a.card:
                print(json.dumps(json.loads(mv.card_json or "{}"), indent=2), file=ctx.out)
            else:
                print_fields(_version_fields(mv), ctx.out)
            return EXIT_OK
        models = client.list_models(name_prefix=words[0] if words else "")
        if words:
            models = [m for m in models if m.name == words[0]]
            if not models:
                client.get_model(words[0])  # raises the server's NotFound
    if a.json:
        print_json(models, ctx.out)
        return EXIT_OK
    rows = [
        [
            m.name,
            str(v.version),
            ",".join(v.aliases),
            v.backbone,
            f"{v.metrics.accuracy:.1%}" if v.HasField("metrics") else "-",
            fmt_time(v.create_time),
        ]
        for m in models
        for v in m.versions
    ]
    print_table(rows, ["NAME", "VERSION", "ALIASES", "BACKBONE", "ACCURACY", "CREATED"], ctx.out)
    return EXIT_OK


def cmd_backbones(ctx: Context) -> int:
    a = ctx.args
    words: list[str] = a.words
    if words and words[0] == "import":
        if len(words) != 3:
            ctx.parser.error("usage: graft backbones import NAME FILE --data-dir DIR")
        return _import_weights(ctx, words[1], Path(words[2]))
    if words:
        ctx.parser.error("usage: graft backbones | graft backbones import NAME FILE")
    with ctx.client() as client:
        backbones = client.list_backbones()
    if a.json:
        print_json(backbones, ctx.out)
        return EXIT_OK
    rows = [
        [
            b.name + (" *" if b.is_default else ""),
            "yes" if b.ready else "no",
            f"{b.input_size}",
            f"{b.num_stages}",
            f"{b.params_millions:.1f}M",
            b.weights,
        ]
        for b in backbones
    ]
    print_table(rows, ["NAME", "READY", "INPUT", "STAGES", "PARAMS", "WEIGHTS"], ctx.out)
    if any(b.is_default for b in backbones):
        print("* default backbone", file=ctx.out)
    return EXIT_OK


def _import_weights(ctx: Context, name: str, file: Path) -> int:
    from graft import errors as domain_errors

    config = _config(data_dir=ctx.args.data_dir.expanduser() if ctx.args.data_dir else None)
    try:
        from graft.backbones import import_weights

        path = import_weights(name, file, config.weights_dir)
    except domain_errors.GraftError as e:
        code = "".join("_" + c if c.isupper() else c.upper() for c in type(e).__name__)
        print(f"error: {code.lstrip('_')}: {e.message}", file=ctx.err)
        violations = [(v.field, v.description) for v in getattr(e, "violations", [])]
        print_violations(e.message, violations, ctx.err)
        return EXIT_ERROR
    print(f"imported {name} weights: {path}", file=ctx.out)
    return EXIT_OK


def cmd_upload(ctx: Context) -> int:
    a = ctx.args
    with ctx.client() as client:
        result = client.upload_dataset(a.archive, chunk_size=a.chunk_size)
    if a.json:
        print_json(result, ctx.out)
        return EXIT_OK
    print_fields(
        [
            ("dataset_id", result.dataset_id),
            ("size", fmt_size(result.size_bytes)),
            (
                "images",
                f"{result.images} in {result.classes} classes"
                + (f", {result.skipped_files} files skipped" if result.skipped_files else ""),
            ),
        ],
        ctx.out,
    )
    print(f"train with: graft train NAME --dataset-id {result.dataset_id}", file=ctx.err)
    return EXIT_OK


def cmd_datasets(ctx: Context) -> int:
    a = ctx.args
    words: list[str] = a.words or ["list"]
    if (words[0], len(words)) not in {("list", 1), ("delete", 2)}:
        ctx.parser.error("usage: graft datasets [list] | graft datasets delete DATASET_ID")
    with ctx.client() as client:
        if words[0] == "delete":
            freed = client.delete_dataset(words[1])
            if a.json:
                print(json.dumps({"dataset_id": words[1], "freed_bytes": freed}), file=ctx.out)
            else:
                print(f"deleted dataset {words[1]} ({fmt_size(freed)} freed)", file=ctx.out)
            return EXIT_OK
        listing = client.list_datasets()
    if a.json:
        print_json(listing, ctx.out)
        return EXIT_OK
    rows = [
        [
            d.dataset_id,
            d.tenant,
            d.filename,
            fmt_size(d.archive_bytes + d.extracted_bytes),
            fmt_time(d.create_time),
            fmt_time(d.last_used_time),
            fmt_time(d.expire_time) if d.HasField("expire_time") else "never",
        ]
        for d in listing.datasets
    ]
    header = ["DATASET", "TENANT", "FILE", "STORED", "UPLOADED", "LAST USED", "EXPIRES"]
    print_table(rows, header, ctx.out)
    quota = fmt_size(listing.quota_bytes) if listing.quota_bytes else "no quota"
    print(f"{fmt_size(listing.used_bytes)} stored; quota {quota}", file=ctx.out)
    return EXIT_OK


def cmd_keys(ctx: Context) -> int:
    """API keys, straight on the server's store (run it where the data directory is:
    `kubectl exec deploy/graft-server -- graft keys ...`). Tokens are shown once, at
    creation; the store keeps only their sha256."""
    a = ctx.args
    words: list[str] = a.words or ["list"]
    action = words[0]
    if (action, len(words)) not in {("create", 1), ("list", 1), ("revoke", 2)}:
        ctx.parser.error("usage: graft keys create --tenant T [--admin] | list | revoke KEY_ID")
    if action == "create" and not a.tenant:
        ctx.parser.error("keys create needs --tenant")
    from graft import errors
    from graft.apikeys import hash_token, new_token, validate_tenant
    from graft.store import ApiKey, open_store

    config = _config(data_dir=a.data_dir.expanduser().resolve() if a.data_dir else None)
    if not config.store_path.is_file():
        print(
            f"error: no Graft store at {config.store_path}: give the server's --data-dir"
            " (or $GRAFT_DATA_DIR), where `graft serve` has run",
            file=ctx.err,
        )
        return EXIT_ERROR

    def fields(key: ApiKey) -> dict[str, Any]:
        return {
            "key_id": key.key_id,
            "tenant": key.tenant,
            "role": "admin" if key.admin else "tenant",
            "name": key.name,
            "created": fmt_epoch(key.create_time),
            "revoked": fmt_epoch(key.revoke_time) if key.revoke_time else "",
        }

    store = open_store(config)
    try:
        if action == "create":
            key_id, token = new_token()
            key = store.add_api_key(
                key_id,
                hash_token(token),
                validate_tenant(a.tenant),
                admin=a.admin,
                name=a.name,
            )
            out = {**fields(key), "token": token}
            if a.json:
                print(json.dumps(out, indent=2), file=ctx.out)
            else:
                print_fields([(k, str(v)) for k, v in out.items() if v], ctx.out)
                print(
                    "the token is shown only now: give it to its user"
                    " (graft --api-key / $GRAFT_API_KEY)",
                    file=ctx.err,
                )
        elif action == "list":
            keys = [fields(k) for k in store.list_api_keys()]
            if a.json:
                print(json.dumps(keys, indent=2), file=ctx.out)
            else:
                header = ["KEY", "TENANT", "ROLE", "NAME", "CREATED", "REVOKED"]
                print_table([list(k.values()) for k in keys], header, ctx.out)
        else:
            key = store.revoke_api_key(words[1])
            if a.json:
                print(json.dumps(fields(key), indent=2), file=ctx.out)
            else:
                print(f"revoked {key.key_id} (tenant {key.tenant})", file=ctx.out)
    except errors.GraftError as exc:
        print(f"error: {type(exc).__name__}: {exc.message}", file=ctx.err)
        return EXIT_ERROR
    finally:
        store.close()
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command and returns its exit status (argparse usage errors included)."""
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_ERROR
        ctx = Context(args, args.command_parser, sys.stdout, sys.stderr)
        return int(args.handler(ctx))
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except GraftError as e:
        print_error(e, sys.stderr, getattr(args, "target", None))
        return EXIT_ERROR
    except (OSError, ValueError) as e:  # unreadable files, invalid values the SDK refused
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
