"""`mechscope export`: write a standalone Python script that reproduces a session's runs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mechscope.cli.output import guarded, printable


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help="write a Python script reproducing a session's runs",
        description="Write a standalone Python script that re-runs each piece of work the session "
        "recorded, in order, and prints its outcome. The session's values (prompts, numbers, vectors) "
        "enter the script only as Python literals. Exit 2 when the session cannot be read.")
    parser.add_argument("name", help="session name or folder")
    parser.add_argument("-o", "--output", help="output file ('-' for stdout; default ./NAME.py)")
    parser.add_argument("--attach", dest="script_attach", metavar="NAME|PATH",
                        help="the script connects to this running `mechscope serve` instead of "
                        "loading a model")
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    from mechscope.sessions.export import export_script
    from mechscope.sessions.store import Session

    session = Session.open(args.name)
    for warning in session.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    output = args.output or f"{session.name}.py"
    text = export_script(session, filename=None if output == "-" else os.path.basename(output),
                         attach=args.script_attach)
    if output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(output, 0o755)
    except OSError as exc:
        print(f"error: cannot write {printable(output, 200)} ({exc.strerror})", file=sys.stderr)
        return 2
    usage = f"python {output}" + (f" (connects to {args.script_attach})" if args.script_attach else " [MODEL]")
    print(f"wrote {output}: {printable(usage, 300)}")
    return 0
