"""`graft report NAME[:VERSION|@ALIAS] [--out DIR]`: a model version's report, written
into a folder (report.html to open in a browser, report.json, the PNGs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graft.cli.context import EXIT_OK, Context
from graft.cli.options import client_options, json_option
from graft.cli.subcommands import Commands, command
from graft_client.reports import save_report


def add_report(commands: Commands) -> None:
    p = command(
        commands,
        "report",
        cmd_report,
        parents=[client_options(False), json_option(False)],
        help="write a model version's report (curves, confusion, calibration, suspects, plan)",
    )
    p.add_argument("model", metavar="NAME[:VERSION|@ALIAS]", help="default: the newest version")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder to write it into (default: ./report-NAME-VERSION)",
    )


def cmd_report(ctx: Context) -> int:
    a = ctx.args
    with ctx.client() as client:
        report = client.get_model_report(a.model)
    name, version = report.model.name, report.model.version
    out = a.out or Path(f"report-{name}-{version}")
    html = save_report(report, out)
    data = json.loads(report.report_json)
    if a.json:
        print(json.dumps({"model": f"{name}:{version}", "html": str(html), **data}), file=ctx.out)
        return EXIT_OK
    for line in summary(f"{name}:{version}", data):
        print(line, file=ctx.out)
    print(f"report: {html}", file=ctx.out)
    return EXIT_OK


def summary(model: str, data: dict[str, Any]) -> list[str]:
    """A few lines on the report: metrics, calibration, the worst pair, the plan."""
    m, c = data["metrics"], data["calibration"]
    lines = [
        f"{model}: accuracy {m['accuracy']:.1%}, macro-F1 {m['macro_f1']:.3f}, loss "
        f"{m['loss']:.4f} on {c['images']} validation images",
        f"calibration: temperature {c['temperature']:.3f} "
        + ("applied" if c["applied"] else "not applied")
        + f" (held-out ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}, "
        f"NLL {c['nll_before']:.3f} -> {c['nll_after']:.3f})",
    ]
    pairs = data["confused_pairs"]
    if pairs:
        p = pairs[0]
        lines.append(
            f"most confused: {p['true']} taken for {p['predicted']} ({p['count']} images, "
            f"{p['share']:.0%} of {p['true']})"
        )
    plan = data["plan"]
    lines.append(f"plan: {plan['strategy']} of {plan['plan']['backbone']} ({plan['source']})")
    return lines
