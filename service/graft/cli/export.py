"""`graft export NAME[:VERSION|@ALIAS] --format onnx|torchscript|triton [--out DIR]`: a model
version exported by the server and written into a folder (docs/EXPORTS.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import graft_client
from graft.cli.context import EXIT_OK, Context
from graft.cli.options import client_options, json_option
from graft.cli.render import fmt_size, print_table, to_dict
from graft.cli.subcommands import Commands, command
from graft_client.exports import EXPORT_FORMATS


def add_export(commands: Commands) -> None:
    p = command(
        commands,
        "export",
        cmd_export,
        parents=[client_options(False), json_option(False)],
        help="export a model version to ONNX, TorchScript or a Triton model repository",
    )
    p.add_argument("model", metavar="NAME[:VERSION|@ALIAS]")
    p.add_argument(
        "--format",
        required=True,
        choices=list(EXPORT_FORMATS),
        dest="export_format",
        help="onnx: model.onnx; torchscript: model.pt; triton: a model repository folder",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write the files into (default: ./NAME-VERSION-FORMAT)",
    )


def cmd_export(ctx: Context) -> int:
    a: argparse.Namespace = ctx.args
    ref = graft_client.parse_model_ref(a.model)  # InvalidArgument, printed as usage errors are
    with ctx.client() as client:
        if a.out is None:
            # The version is resolved first so that the folder names the one exported.
            mv = client.get_model(ref)
            ref = graft_client.pb.ModelRef(name=mv.name, version=mv.version)
            out = Path(f"{mv.name}-{mv.version}-{a.export_format}")
        else:
            out = a.out
        manifest = client.export_model(ref, a.export_format, out)
    if a.json:
        print(json.dumps({"out": str(out), **to_dict(manifest)}, indent=2), file=ctx.out)
        return EXIT_OK
    model = f"{manifest.model.name}:{manifest.model.version}"
    print(f"exported {model} as {a.export_format} into {out}", file=ctx.out)
    rows = [[f.path, fmt_size(f.size), f.sha256[:16]] for f in manifest.files]
    print_table(rows, ["FILE", "SIZE", "SHA256"], ctx.out)
    print(f"verification: {manifest.verification}", file=ctx.out)
    return EXIT_OK
