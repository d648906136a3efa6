"""`graft backbones`: the backbone catalog, and importing weights locally."""

from __future__ import annotations

from pathlib import Path

from graft.cli.context import EXIT_ERROR, EXIT_OK, Context, config_from
from graft.cli.render import print_json, print_table, print_violations


def cmd_backbones(ctx: Context) -> int:
    """`graft backbones`: the catalog, as the server sees it."""
    a = ctx.args
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


def cmd_import(ctx: Context) -> int:
    """`graft backbones import NAME FILE`: straight into the weights folder of the shared
    artifacts (the data directory's by default), no server."""
    name, file = ctx.args.name, Path(ctx.args.file)
    from graft import errors as domain_errors

    a = ctx.args
    config = config_from(
        data_dir=a.data_dir.expanduser() if a.data_dir else None,
        artifacts_dir=a.artifacts_dir.expanduser() if a.artifacts_dir else None,
    )
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
