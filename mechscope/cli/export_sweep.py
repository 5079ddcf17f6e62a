"""The `export-sweep` command: a recorded session's sweep as CSV or safetensors. Imports nothing heavy
until it runs (`mechscope --help` registers it)."""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("csv", "safetensors")


def register(subparsers: Any) -> None:
    """Register `export-sweep` on the main parser's sub-parsers."""
    parser = subparsers.add_parser("export-sweep", help="write a session's recorded sweep, set sweep or "
                                   "estimate as CSV or safetensors")
    parser.add_argument("name", help="session name or folder")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or safetensors")
    parser.add_argument("--sweep", type=int, default=-1, metavar="N",
                        help="which sweep (set sweeps and estimates count too), 0 = first, -1 = last (default)")
    parser.add_argument("--effect", choices=("delta", "normalised", "both"), default="both",
                        help="the Δ metric (patched - base), its share of the gap (patched - base) / "
                        "(source - base), or both (default)")
    parser.add_argument("-o", "--output", help="output file ('-' for stdout, csv only; default ./sweep-KIND-DIRECTION.FORMAT)")
    parser.set_defaults(run=cmd_export_sweep)


def _grid(kind: str, request: Any, summary: Any) -> tuple[str, Any, float, float]:
    """The name, [rows, cols] matrix, base and source metric of a recorded sweep, set sweep (their
    means over the rows) or estimate."""
    import numpy as np

    nan = float("nan")
    if kind == "sweep":
        source = summary.data.get("source_metric")
        return (request.sweep_kind, summary.arrays["values"], float(summary.data["base_metric"]),
                nan if source is None else float(source))
    if kind == "sweep_set":
        sources = summary.arrays.get("source_metrics")
        source = nan if sources is None or not len(sources) else float(np.mean(sources))
        return "set", summary.arrays["mean"], float(summary.data["base_metric"]), source
    values = np.asarray(summary.arrays["estimated"], dtype=np.float64).copy()  # [layer, head]
    for layer, head, exact in summary.data["exact"]:  # verified heads hold their exact value
        values[int(layer), int(head)] = exact
    return f"estimate-{summary.data['method']}", values, nan, nan


GRID_KINDS = ("sweep", "sweep_set", "estimate")


def cmd_export_sweep(args: argparse.Namespace) -> int:
    import sys

    from mechscope.engine.results import SweepResult
    from mechscope.sessions import Session
    from mechscope.sessions.errors import SessionError
    from mechscope.sessions.events import work_kind
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
    sweeps = [e for e in session.work() if work_kind(e) in GRID_KINDS]
    if not sweeps:
        print(f"session {args.name!r} has no sweep", file=sys.stderr)
        return 2
    if not -len(sweeps) <= args.sweep < len(sweeps):
        print(f"--sweep {args.sweep}: the session has {len(sweeps)} sweep(s)", file=sys.stderr)
        return 2
    event = sweeps[args.sweep]
    try:
        request, summary = session.outcome(event)
        name, values, base_metric, source_metric = _grid(str(work_kind(event)), request, summary)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"error: seq {event.seq} cannot be exported ({exc})", file=sys.stderr)
        return 2
    data = summary.data
    result = SweepResult(kind=name, values=values, base_metric=base_metric,  # type: ignore[arg-type]
                         source_metric=source_metric,
                         row_labels=list(data.get("row_labels", [])), col_labels=list(data.get("col_labels", [])),
                         complete=bool(data.get("complete", True)), seconds=0.0)
    direction = str(getattr(request, "direction", "noising"))  # every grid kind has one
    output = args.output or default_name("sweep", f"{name}-{direction}", args.format)
    if args.format == "csv":
        text = sweep_to_csv(result, direction=direction, effect=args.effect)
        if output == "-":
            sys.stdout.write(text)
            return 0
        write_text(output, text)
    else:
        if output == "-":
            print("safetensors cannot go to stdout: give -o FILE", file=sys.stderr)
            return 2
        sweep_to_safetensors(result, output, direction=direction, effect=args.effect)
    print(f"wrote {output}")
    return 0
