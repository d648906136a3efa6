"""The `graft` command line.

`serve` and `worker` start processes (their modules are imported only when run, so the
client commands start fast); `backbones import` works on a local data directory; every
other command is a client of the SDK (`graft_client`). SDK errors print as
`error: CODE: message` with the field violations and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from graft.cli.context import EXIT_ERROR, EXIT_INTERRUPTED, Context
from graft.cli.parser import build_parser
from graft.cli.progress import ProgressPrinter
from graft.cli.render import describe_plan, print_error
from graft_client import GraftError

__all__ = ["ProgressPrinter", "build_parser", "describe_plan", "main"]


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
