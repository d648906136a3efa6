"""The `graft` argument parser: one sub-parser per command, and real sub-commands under the
command groups (`graft jobs`, `models`, `backbones`, `datasets`, `keys`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import graft_client
from graft.cli import backbones, datasets, jobs, keys, models
from graft.cli.advise import cmd_advise
from graft.cli.compare import cmd_compare
from graft.cli.context import STRATEGIES
from graft.cli.export import add_export
from graft.cli.options import (
    add_dataset_arguments,
    client_options,
    json_option,
    positive_int,
    suppressible,
)
from graft.cli.predict import cmd_predict
from graft.cli.process_flags import add_serve, add_worker
from graft.cli.report import add_report
from graft.cli.subcommands import Commands, command, group, sub_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft",
        description="Adapt pretrained image CNNs to your own labelled images.",
    )
    parser.add_argument("--version", action="version", version=f"graft {graft_client.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve(commands)
    add_worker(commands)
    _add_advise_train_predict(commands)
    _add_jobs(commands)
    _add_cancel(commands)
    _add_models(commands)
    add_export(commands)
    add_report(commands)
    _add_backbones(commands)
    _add_upload(commands)
    _add_datasets(commands)
    _add_keys(commands)
    return parser


# -- the client commands ---------------------------------------------------------------------


def _client(suppress: bool) -> list[argparse.ArgumentParser]:
    return [client_options(suppress), json_option(suppress)]


def _add_advise_train_predict(commands: Commands) -> None:
    p = command(
        commands,
        "advise",
        cmd_advise,
        parents=_client(False),
        help="measure a dataset, recommend a plan",
    )
    add_dataset_arguments(p)
    p.add_argument(
        "--backbone",
        action="append",
        dest="backbones",
        default=[],
        help="candidate backbone (repeatable; default: all available)",
    )
    p.add_argument("--small-threshold", type=int, default=0, help="images/class below = small")
    p = command(
        commands, "train", jobs.cmd_train, parents=_client(False), help="start a fine-tuning job"
    )
    p.add_argument("model_name", metavar="MODEL_NAME", help="registry name to register under")
    add_dataset_arguments(p)
    p.add_argument("--strategy", choices=list(STRATEGIES), help="default: the advised one")
    p.add_argument("--backbone", help="backbone catalog name")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--trainable-stages", type=positive_int, help="for --strategy partial")
    p.add_argument("--head-lr", type=float, help="learning rate of the new head")
    p.add_argument("--base-lr", type=float, help="learning rate of the pretrained layers")
    p.add_argument("--seed", type=int)
    p.add_argument("--request-id", help="idempotency key (default: a fresh uuid)")
    p.add_argument("--follow", "-f", action="store_true", help="show progress until it ends")
    p = command(
        commands, "predict", cmd_predict, parents=_client(False), help="classify image files"
    )
    p.add_argument("model", metavar="MODEL[:VERSION|@ALIAS]")
    p.add_argument("files", metavar="FILE", nargs="+", type=Path)
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per request")


def _jobs_options(suppress: bool) -> list[argparse.ArgumentParser]:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--state",
        default=suppressible(None, suppress),
        help="only jobs in this state (queued, running, succeeded, ...)",
    )
    opts.add_argument(
        "--limit",
        type=int,
        default=suppressible(0, suppress),
        help="at most this many (default 100)",
    )
    return [*_client(suppress), opts]


def _add_jobs(commands: Commands) -> None:
    subs = group(
        commands,
        "jobs",
        _jobs_options,
        jobs.cmd_jobs,
        help="list jobs, show one (jobs JOB_ID), or cancel one (jobs cancel JOB_ID)",
        metavar="JOB_ID | cancel JOB_ID",
        implicit="show",
    )
    sub_command(subs, "show", _jobs_options, jobs.cmd_job, [("job_id", "JOB_ID")])
    sub_command(
        subs, "cancel", _jobs_options, jobs.cmd_cancel, [("job_id", "JOB_ID")], "cancel a job"
    )


def _add_cancel(commands: Commands) -> None:
    p = command(commands, "cancel", jobs.cmd_cancel, parents=_client(False), help="cancel a job")
    p.add_argument("job_id", metavar="JOB_ID")


def _models_options(suppress: bool) -> list[argparse.ArgumentParser]:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--card",
        action="store_true",
        default=suppressible(False, suppress),
        help="print the full model card",
    )
    return [*_client(suppress), opts]


def _add_models(commands: Commands) -> None:
    subs = group(
        commands,
        "models",
        _models_options,
        models.cmd_models,
        help="list models, show one (models NAME[:VERSION|@ALIAS]), set an alias "
        "(models alias NAME ALIAS VERSION [--guard]), or compare two versions "
        "(models compare NAME V1 V2)",
        metavar="NAME | alias NAME ALIAS VERSION | compare NAME V1 V2",
        implicit="show",
    )
    sub_command(subs, "show", _models_options, models.cmd_model, [("name", "NAME")])
    words = [("name", "NAME"), ("alias", "ALIAS"), ("version", "VERSION")]
    sub_command(subs, "alias", _alias_options, models.cmd_alias, words, "point ALIAS at VERSION")
    words = [("name", "NAME"), ("baseline", "V1"), ("candidate", "V2")]
    help = "V2 against V1 (versions or aliases) on V2's held-out images"
    sub_command(subs, "compare", _models_options, cmd_compare, words, help)


def _alias_options(suppress: bool) -> list[argparse.ArgumentParser]:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--guard",
        action="store_true",
        help="refuse unless VERSION is not worse than the alias's current version on the "
        "same held-out images (docs/COMPARE.md)",
    )
    return [*_models_options(suppress), opts]


def _backbones_options(suppress: bool) -> list[argparse.ArgumentParser]:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--data-dir",
        type=Path,
        default=suppressible(None, suppress),
        help="for import: the server's data directory",
    )
    opts.add_argument(
        "--artifacts-dir",
        type=Path,
        default=suppressible(None, suppress),
        help="for import: the servers' and workers' shared artifacts (default: the data directory)",
    )
    return [*_client(suppress), opts]


def _add_backbones(commands: Commands) -> None:
    subs = group(
        commands,
        "backbones",
        _backbones_options,
        backbones.cmd_backbones,
        help="list the backbone catalog, or import weights (backbones import NAME FILE)",
        metavar="import NAME FILE",
    )
    words = [("name", "NAME"), ("file", "FILE")]
    help = "install a weights file into the server's data directory (local)"
    sub_command(subs, "import", _backbones_options, backbones.cmd_import, words, help)


def _add_upload(commands: Commands) -> None:
    p = command(
        commands,
        "upload",
        datasets.cmd_upload,
        parents=_client(False),
        help="upload a dataset archive or folder",
    )
    p.add_argument("archive", metavar="ARCHIVE", type=Path, help=".zip, .tar, .tar.gz or a folder")
    p.add_argument("--chunk-size", type=positive_int, default=1024 * 1024)


def _add_datasets(commands: Commands) -> None:
    subs = group(
        commands,
        "datasets",
        _client,
        datasets.cmd_datasets,
        help="list uploaded datasets, or delete one (datasets delete DATASET_ID)",
        metavar="list | delete DATASET_ID",
    )
    sub_command(subs, "list", _client, datasets.cmd_datasets, help="list uploaded datasets")
    words = [("dataset_id", "DATASET_ID")]
    sub_command(subs, "delete", _client, datasets.cmd_delete, words, "delete one")


def _keys_options(suppress: bool) -> list[argparse.ArgumentParser]:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--tenant",
        default=suppressible(None, suppress),
        help="for create: the tenant the key acts for",
    )
    opts.add_argument(
        "--admin",
        action="store_true",
        default=suppressible(False, suppress),
        help="for create: sees every tenant",
    )
    opts.add_argument(
        "--name", default=suppressible("", suppress), help="for create: a note on whose key it is"
    )
    opts.add_argument(
        "--data-dir",
        type=Path,
        default=suppressible(None, suppress),
        help="the server's data directory",
    )
    opts.add_argument(
        "--store",
        dest="store_url",
        metavar="URL",
        default=suppressible(None, suppress),
        help="the server's job store, if it is not SQLite in --data-dir: its postgresql:// URL",
    )
    return [json_option(suppress), opts]


def _add_keys(commands: Commands) -> None:
    subs = group(
        commands,
        "keys",
        _keys_options,
        keys.cmd_list,
        help="API keys, on the server's store: keys create --tenant T [--admin], keys list,"
        " keys revoke KEY_ID",
        metavar="create | list | revoke KEY_ID",
    )
    sub_command(subs, "create", _keys_options, keys.cmd_create, help="create a key (--tenant)")
    sub_command(subs, "list", _keys_options, keys.cmd_list, help="list the keys")
    words = [("key_id", "KEY_ID")]
    sub_command(subs, "revoke", _keys_options, keys.cmd_revoke, words, "revoke a key")
