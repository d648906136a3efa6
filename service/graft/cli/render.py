"""Text and JSON output: field formatting, tables, field lists, errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from graft_client import GraftError, pb

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
