"""`graft train`, `graft jobs` and `graft cancel`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import graft_client
from graft.cli.context import (
    EXIT_INTERRUPTED,
    EXIT_JOB_NOT_SUCCEEDED,
    EXIT_OK,
    STRATEGIES,
    Context,
    dataset_from,
)
from graft.cli.progress import ProgressPrinter
from graft.cli.render import (
    describe_plan,
    fmt_metrics,
    fmt_model_ref,
    fmt_time,
    job_fields,
    print_fields,
    print_json,
    print_table,
    state_name,
    to_dict,
)
from graft_client import Client, pb


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
    dataset = dataset_from(a, ctx.parser)
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


def cmd_jobs(ctx: Context) -> int:
    """`graft jobs`: the job list."""
    a = ctx.args
    with ctx.client() as client:
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


def cmd_job(ctx: Context) -> int:
    """`graft jobs JOB_ID`: one job."""
    with ctx.client() as client:
        job = client.get_job(ctx.args.job_id)
    if ctx.args.json:
        print_json(job, ctx.out)
    else:
        print_fields(job_fields(job), ctx.out)
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
