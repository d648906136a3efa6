"""`graft models`: the model registry."""

from __future__ import annotations

import json
from collections.abc import Sequence

from graft.cli.context import EXIT_OK, Context
from graft.cli.render import fmt_metrics, fmt_time, print_fields, print_json, print_table
from graft_client import pb


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
    """`graft models`: every version of every model."""
    with ctx.client() as client:
        models = client.list_models()
    return _print_models(ctx, models)


def cmd_model(ctx: Context) -> int:
    """`graft models NAME[:VERSION|@ALIAS]`: one version (or its card), or a model's list."""
    a = ctx.args
    with ctx.client() as client:
        if ":" in a.name or "@" in a.name or a.card:
            mv = client.get_model(a.name)
            if a.json:
                print_json(mv, ctx.out)
            elif a.card:
                print(json.dumps(json.loads(mv.card_json or "{}"), indent=2), file=ctx.out)
            else:
                print_fields(_version_fields(mv), ctx.out)
            return EXIT_OK
        models = [m for m in client.list_models(name_prefix=a.name) if m.name == a.name]
        if not models:
            client.get_model(a.name)  # raises the server's NotFound
    return _print_models(ctx, models)


def cmd_alias(ctx: Context) -> int:
    """`graft models alias NAME ALIAS VERSION [--guard]`."""
    a = ctx.args
    try:
        version = int(a.version)
    except ValueError:
        ctx.parser.error(f"VERSION must be a number, got {a.version!r}")
    with ctx.client() as client:
        mv = client.set_model_alias(a.name, a.alias, version, guard=a.guard)
    if a.json:
        print_json(mv, ctx.out)
    else:
        print(f"{mv.name}@{a.alias} -> version {mv.version}", file=ctx.out)
    return EXIT_OK


def _print_models(ctx: Context, models: Sequence[pb.Model]) -> int:
    if ctx.args.json:
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
