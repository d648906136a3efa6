"""Building blocks of the `graft` parser: a command, and a command group with real
sub-commands (`graft models alias ...`) whose options may come before or after the
sub-command's word."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction
    Commands = argparse._SubParsersAction

Options = Callable[[bool], list[argparse.ArgumentParser]]
"""The options a command group and each of its sub-commands take (see options.py)."""


class _Names(dict[str, argparse.ArgumentParser]):
    """A group's sub-command names. argparse checks the first word against them before the
    action runs; with an implicit sub-command, every word passes that check."""

    open = False

    def __contains__(self, word: object) -> bool:
        return self.open or super().__contains__(word)


class SubCommands(_SubParsers):
    """A command group's sub-commands. With an `implicit` one, a first word that names none
    of them goes, whole, to it: `graft models NAME` runs `show NAME`, while `graft models
    alias ...` runs `alias`. `words` records the sub-command's words as given: its word
    when written, then its positional arguments."""

    implicit: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names = _Names()
        self._name_parser_map = self.choices = self._names

    def set_implicit(self, name: str) -> None:
        self.implicit = name
        self._names.open = True

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        was_open, self._names.open = self._names.open, False  # else every name "conflicts"
        try:
            return super().add_parser(name, **kwargs)
        finally:
            self._names.open = was_open

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = list(values or [])
        explicit = words[0] != self.implicit and self._names.get(words[0]) is not None
        if not explicit and self.implicit:
            words.insert(0, self.implicit)
        super().__call__(parser, namespace, words, option_string)
        dests = self._names[words[0]].get_default("word_dests")
        namespace.words = words[:1] * explicit + [getattr(namespace, d) for d in dests]


def command(
    commands: Commands, name: str, handler: Callable[..., int], **kwargs: Any
) -> argparse.ArgumentParser:
    p = commands.add_parser(name, **kwargs)
    p.set_defaults(handler=handler, command_parser=p)
    return p


def group(
    commands: Commands,
    name: str,
    options: Options,
    handler: Callable[..., int],
    *,
    help: str,
    metavar: str,
    implicit: str | None = None,
) -> SubCommands:
    """A command group: `graft NAME` alone runs `handler`; its sub-commands follow."""
    p = command(commands, name, handler, parents=options(False), help=help)
    p.set_defaults(words=[])
    sub = p.add_subparsers(action=SubCommands, metavar=metavar)
    assert isinstance(sub, SubCommands)
    if implicit:
        sub.set_implicit(implicit)
    return sub


def sub_command(
    subs: SubCommands,
    name: str,
    options: Options,
    handler: Callable[..., int],
    words: Sequence[tuple[str, str]] = (),
    help: str | None = None,
) -> argparse.ArgumentParser:
    """A sub-command taking the group's options (given before or after its word) and the
    positional `words` (dest, METAVAR)."""
    kwargs = {"help": help} if help else {}
    p = command(subs, name, handler, parents=options(True), **kwargs)
    for dest, metavar in words:
        p.add_argument(dest, metavar=metavar)
    p.set_defaults(word_dests=tuple(dest for dest, _ in words))
    return p
