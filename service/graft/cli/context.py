"""What every command shares: exit statuses, the Context it runs in, config and datasets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO, Any

from graft.config import Config, env_defaults
from graft_client import Client, pb

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


def dataset_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
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


def config_from(**flags: Any) -> Config:
    values = env_defaults()
    values.update({k: v for k, v in flags.items() if v is not None})
    return Config(**values)
