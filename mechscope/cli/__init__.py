"""Command line: `mechscope` opens the workbench; sub-commands run the engine and sessions headlessly.

Each sub-command group is one module of this package listed in `COMMANDS`; a module provides
`register(subparsers)` (adds its parsers, each with `set_defaults(run=...)`) and imports nothing
heavy until a command runs. Adding a sub-command is one module plus one line in `COMMANDS`.

Exit codes: 0 success (replay: every step matches), 1 replay drift, 2 a bad option, session or model
(printed as one line, naming file and line for bad files), 130 interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from mechscope import __version__
from mechscope.cli.common import UsageError, add_model_args, add_session_arg, check_common_options

# Sub-command modules, in the order `mechscope --help` lists them.
COMMANDS: list[str] = [
    "mechscope.cli.inspect",
    "mechscope.cli.sessions",
    "mechscope.cli.replay",
    "mechscope.cli.export",
    "mechscope.cli.export_sweep",
    "mechscope.cli.serve",
    "mechscope.cli.plan",
    "mechscope.cli.features",
]


class CommandParser(argparse.ArgumentParser):
    """The top-level parser: a mistyped sub-command is one line naming the closest one."""

    commands: tuple[str, ...] = ()

    def error(self, message: str) -> NoReturn:
        typed = re.match(r"argument COMMAND: invalid choice: (['\"]?)(.*?)\1 \(", message)
        if typed is None:
            super().error(message)
        close = difflib.get_close_matches(typed.group(2), self.commands, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(self.commands)}"
        self.exit(2, f"{self.prog}: error: unknown command {typed.group(2)!r}; {hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="mechscope",
        description="A terminal workbench for mechanistic interpretability. "
        "With no sub-command, opens the workbench.",
    )
    parser.add_argument("--version", action="version", version=f"mechscope {__version__}")
    add_model_args(parser, top_level=True)
    add_session_arg(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(sub)
    parser.commands = tuple(sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_common_options(args)
        if args.command is None:
            from mechscope.cli.workbench import run_workbench

            return run_workbench(args)
        return int(args.run(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main"]
