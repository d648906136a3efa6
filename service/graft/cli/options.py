"""Option sets several `graft` commands share: the client's connection, --json, logging and
the dataset argument. Built with `suppress=True` for a group's sub-commands, whose options
then leave alone what was given before the sub-command word (`graft jobs --json cancel J`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from graft.cli.context import DEFAULT_TARGET


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def suppressible(value: Any, suppress: bool) -> Any:
    return argparse.SUPPRESS if suppress else value


def client_options(suppress: bool = False) -> argparse.ArgumentParser:
    """Where the server is and how to reach it; defaults from $GRAFT_* when built."""
    target = os.environ.get("GRAFT_TARGET", DEFAULT_TARGET)
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--target",
        default=suppressible(target, suppress),
        help=f"server host:port (default: $GRAFT_TARGET or {target.replace('%', '%%')})",
    )
    opts.add_argument(
        "--timeout",
        type=float,
        default=suppressible(None, suppress),
        help="deadline of each call in seconds",
    )
    opts.add_argument(
        "--api-key",
        default=suppressible(None, suppress),
        help="API key sent with every call (default: $GRAFT_API_KEY, which keeps it out of"
        " the process list); a server on loopback with its defaults needs none",
    )
    opts.add_argument(
        "--tls",
        action="store_true",
        default=suppressible(False, suppress),
        help="connect with TLS, verifying against the system CAs",
    )
    opts.add_argument(
        "--ca-cert",
        default=suppressible(os.environ.get("GRAFT_CA_CERT"), suppress),
        metavar="PEM",
        help="TLS: CA bundle to verify the server with (default: $GRAFT_CA_CERT)",
    )
    opts.add_argument(
        "--client-cert",
        default=suppressible(os.environ.get("GRAFT_CLIENT_CERT"), suppress),
        metavar="PEM",
        help="mTLS: this client's certificate chain (default: $GRAFT_CLIENT_CERT)",
    )
    opts.add_argument(
        "--client-key",
        default=suppressible(os.environ.get("GRAFT_CLIENT_KEY"), suppress),
        metavar="PEM",
        help="mTLS: this client's private key (default: $GRAFT_CLIENT_KEY)",
    )
    opts.add_argument(
        "--tls-server-name",
        default=suppressible(None, suppress),
        metavar="NAME",
        help="TLS: the name on the server's certificate, when not the target's host"
        " (e.g. through kubectl port-forward)",
    )
    return opts


def json_option(suppress: bool = False) -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--json",
        action="store_true",
        default=suppressible(False, suppress),
        help="print JSON instead of text",
    )
    return opts


def log_options() -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="json lines (default) or human-readable text",
    )
    opts.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="default info"
    )
    return opts


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "uri",
        metavar="URI",
        nargs="?",
        help="dataset path on the server: folder per class, archive, or CSV manifest",
    )
    p.add_argument("--dataset-id", help="an uploaded dataset (see `graft upload`)")
