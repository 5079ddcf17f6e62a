"""The `export-sweep` command: a recorded session's sweep as CSV or safetensors. Imports nothing heavy
until it runs (`mechscope --help` registers it)."""

from __future__ import annotations

import argparse
from typing import Any

from mechscope.cli.output import guarded, printable

FORMATS = ("csv", "safetensors")


def register(subparsers: Any) -> None:
    """Register `export-sweep` on the main parser's sub-parsers."""
    parser = subparsers.add_parser(
        "export-sweep", help="write a session's recorded sweep, set sweep or estimate as CSV or safetensors",
        description="Write one recorded sweep, set sweep or attribution estimate of a session as CSV (one "
        "row per cell, with its labels) or as a safetensors matrix [rows, cols], from the recorded "
        "values: no model is loaded. Exit 2 when the session or the sweep cannot be used.")
    parser.add_argument("name", help="session name or folder")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or safetensors")
    parser.add_argument("--sweep", type=int, default=-1, metavar="N",
                        help="which sweep (set sweeps and estimates count too), 0 = first, -1 = last (default)")
    parser.add_argument("--effect", choices=("delta", "normalised", "both"), default="both",
                        help="the Δ metric (patched - base), its share of the gap (patched - base) / "
                        "(source - base), or both (default)")
    parser.add_argument("-o", "--output", help="output file ('-' for stdout, csv only; default ./sweep-KIND-DIRECTION.FORMAT)")
    parser.set_defaults(run=guarded(cmd_export_sweep))


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
    # the request's method, a checked word: the outcome's copy is free text and names the output file
    return f"estimate-{request.method}", values, nan, nan


GRID_KINDS = ("sweep", "sweep_set", "estimate")


def cmd_export_sweep(args: argparse.Namespace) -> int:
    import sys

    from mechscope.engine.results import SweepResult
    from mechscope.sessions import Session
    from mechscope.sessions.events import work_kind
    from mechscope.sessions.log import reason
    from mechscope.workbench.exports import (
        default_name,
        sweep_to_csv,
        sweep_to_safetensors,
        write_text,
    )

    session = Session.open(args.name)
    sweeps = [e for e in session.work() if work_kind(e) in GRID_KINDS]
    if not sweeps:
        print(f"error: session {printable(repr(session.name))} has no sweep", file=sys.stderr)
        return 2
    if not -len(sweeps) <= args.sweep < len(sweeps):
        print(f"error: --sweep {args.sweep}: the session has {len(sweeps)} sweep(s)", file=sys.stderr)
        return 2
    event = sweeps[args.sweep]
    try:
        request, summary = session.outcome(event)
        name, values, base_metric, source_metric = _grid(str(work_kind(event)), request, summary)
        data = summary.data
        # labels as the workbench restores them: a falsy value is no labels, any item a string
        result = SweepResult(kind=name, values=values, base_metric=base_metric,  # type: ignore[arg-type]
                             source_metric=source_metric,
                             row_labels=[str(x) for x in data.get("row_labels") or []],
                             col_labels=[str(x) for x in data.get("col_labels") or []],
                             complete=bool(data.get("complete", True)), seconds=0.0)
    except Exception as exc:  # a record read from disk: whatever fails is the line's fault
        message = f"{session.events_path}:{event.line}: cannot export this sweep ({reason(exc)})"
        print(f"error: {printable(message)}", file=sys.stderr)
        return 2
    direction = str(getattr(request, "direction", "noising"))  # every grid kind has one
    output = args.output or default_name("sweep", f"{name}-{direction}", args.format)
    try:
        if args.format == "csv":
            text = sweep_to_csv(result, direction=direction, effect=args.effect)
            if output == "-":
                sys.stdout.write(text)
                return 0
            write_text(output, text)
        else:
            if output == "-":
                print("error: safetensors cannot go to stdout: give -o FILE", file=sys.stderr)
                return 2
            sweep_to_safetensors(result, output, direction=direction, effect=args.effect)
    except OSError as exc:
        detail = exc.strerror or reason(exc)
        print(f"error: cannot write {printable(output, 200)} ({printable(detail, 200)})", file=sys.stderr)
        return 2
    print(f"wrote {printable(output, 200)}")
    return 0
