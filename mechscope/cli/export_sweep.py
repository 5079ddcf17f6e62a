"""The `export-sweep` command: a recorded session's sweep as CSV or safetensors. Imports nothing heavy
until it runs (`mechscope --help` registers it)."""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("csv", "safetensors")


def register(subparsers: Any) -> None:
    """Register `export-sweep` on the main parser's sub-parsers."""
    parser = subparsers.add_parser("export-sweep", help="write a session's recorded sweep as CSV or safetensors")
    parser.add_argument("name", help="session name or folder")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or safetensors")
    parser.add_argument("--sweep", type=int, default=-1, metavar="N",
                        help="which sweep of the session, 0 = first, -1 = last (default)")
    parser.add_argument("-o", "--output", help="output file ('-' for stdout, csv only; default ./sweep-KIND-DIRECTION.FORMAT)")
    parser.set_defaults(run=cmd_export_sweep)


def cmd_export_sweep(args: argparse.Namespace) -> int:
    import sys

    from mechscope.engine.results import SweepResult
    from mechscope.sessions import Session
    from mechscope.sessions.errors import SessionError
    from mechscope.workbench.exports import (
        default_name,
        sweep_to_csv,
        sweep_to_safetensors,
        write_text,
    )

    try:
        session = Session.open(args.name)
    except SessionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sweeps = [e for e in session.events if e.kind == "sweep"]
    if not sweeps:
        print(f"session {args.name!r} has no sweep", file=sys.stderr)
        return 2
    if not -len(sweeps) <= args.sweep < len(sweeps):
        print(f"--sweep {args.sweep}: the session has {len(sweeps)} sweep(s)", file=sys.stderr)
        return 2
    event = sweeps[args.sweep]
    result = SweepResult(kind=event["sweep"], values=session.tensor(event),
                         base_metric=float(event["base_metric"]),
                         source_metric=float(event["source_metric"]) if event["source_metric"] is not None
                         else float("nan"),
                         row_labels=list(event.get("row_labels", [])), col_labels=list(event.get("col_labels", [])),
                         complete=bool(event["complete"]), seconds=0.0)
    direction = event["direction"]
    output = args.output or default_name("sweep", f"{result.kind}-{direction}", args.format)
    if args.format == "csv":
        text = sweep_to_csv(result, direction=direction)
        if output == "-":
            sys.stdout.write(text)
            return 0
        write_text(output, text)
    else:
        if output == "-":
            print("safetensors cannot go to stdout: give -o FILE", file=sys.stderr)
            return 2
        sweep_to_safetensors(result, output, direction=direction)
    print(f"wrote {output}")
    return 0
