"""Sweeps, attributions and logit-lens tables as CSV, the sweep matrix as safetensors; the `export-sweep`
command that writes a recorded session's sweep. Pure functions over the engine's plain results."""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # kept out of import time: `mechscope --help` registers this module's command
    from mechscope.engine.results import Attribution, LogitLens, SweepResult

FORMATS = ("csv", "safetensors")


def _number(value: float) -> str:
    """A cell: full float32 precision, empty for a cell the sweep did not reach."""
    return "" if not math.isfinite(value) else repr(float(value))


def _row_label(kind: str, row: int, labels: Sequence[str]) -> str:
    return str(labels[row]) if row < len(labels) and labels[row] else f"L{row}"


def sweep_to_csv(result: SweepResult, *, direction: str = "noising") -> str:
    """One row per cell: layer, head or position, the metric change; unreached cells are empty."""
    values = np.asarray(result.values, dtype=np.float64)  # head/atp: [layer, head]; others: [layer, pos]
    column = "head" if result.kind in ("head", "atp") else "position"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["kind", "direction", "layer", column, "label", "delta_metric",
                     "base_metric", "source_metric"])
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            label = f"L{row}.H{col}" if column == "head" else f"{_row_label(result.kind, row, result.row_labels)} pos {col}"
            writer.writerow([result.kind, direction, row, col, label, _number(values[row, col]),
                             _number(result.base_metric), _number(result.source_metric)])
    return out.getvalue()


def attribution_to_csv(attribution: Attribution) -> str:
    """Every part of the direct logit attribution (they add up to `total`, the last row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["component", "layer", "head", "value"])
    writer.writerow(["embed", "", "", _number(attribution.embed)])
    heads = np.asarray(attribution.heads, dtype=np.float64)  # [layer, head]
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            writer.writerow([f"L{layer}.H{head}", layer, head, _number(heads[layer, head])])
        writer.writerow([f"L{layer}.attn_bias", layer, "", _number(attribution.attn_bias[layer])])
        writer.writerow([f"L{layer}.mlp", layer, "", _number(attribution.mlp[layer])])
    if attribution.resid_edits is not None:  # [layer]
        for layer, value in enumerate(np.asarray(attribution.resid_edits, dtype=np.float64)):
            writer.writerow([f"L{layer}.resid_edits", layer, "", _number(value)])
    writer.writerow(["final_bias", "", "", _number(attribution.final_bias)])
    writer.writerow(["total", "", "", _number(attribution.total)])
    return out.getvalue()


def lens_to_csv(lens: LogitLens) -> str:
    """One row per layer and rank: the decoded token and its probability (and the target's rank)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "rank", "token_id", "token", "prob", "target_rank", "target_prob"])
    probs = np.asarray(lens.top_probs, dtype=np.float64)  # [layer, k]
    for layer in range(probs.shape[0]):
        target_rank = "" if lens.target_rank is None else int(lens.target_rank[layer])
        target_prob = "" if lens.target_prob is None else _number(lens.target_prob[layer])
        for rank in range(probs.shape[1]):
            writer.writerow([layer, rank, int(lens.top_ids[layer, rank]), lens.top_tokens[layer][rank],
                             _number(probs[layer, rank]), target_rank, target_prob])
    return out.getvalue()


def sweep_to_safetensors(result: SweepResult, path: str | Path, *, direction: str = "noising") -> None:
    """The matrix as `values` [rows, cols] float32, with kind, direction and labels as metadata."""
    from safetensors.numpy import save_file

    values = np.ascontiguousarray(np.asarray(result.values, dtype=np.float32))
    metadata = {"kind": result.kind, "direction": direction, "base_metric": repr(float(result.base_metric)),
                "source_metric": repr(float(result.source_metric)),
                "row_labels": ",".join(map(str, result.row_labels)),
                "col_labels": ",".join(map(str, result.col_labels))}
    save_file({"values": values}, str(path), metadata=metadata)


def default_name(what: str, kind: str, fmt: str) -> str:
    """`sweep-head-noising.csv`, `attribution.csv`… in the current directory."""
    return f"{what}{'-' + kind if kind else ''}.{fmt}"


def write_text(path: str | Path, text: str) -> Path:
    target = Path(path).expanduser()
    target.write_text(text, encoding="utf-8")
    return target


# -- the CLI command ------------------------------------------------------------------------------

def add_parser(subparsers: Any) -> None:
    """Register `export-sweep` on the main parser's sub-parsers."""
    parser = subparsers.add_parser("export-sweep", help="write a session's recorded sweep as CSV or safetensors")
    parser.add_argument("name", help="session name or folder")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or safetensors")
    parser.add_argument("--sweep", type=int, default=-1, metavar="N",
                        help="which sweep of the session, 0 = first, -1 = last (default)")
    parser.add_argument("-o", "--output", help="output file ('-' for stdout, csv only; default ./sweep-KIND-DIRECTION.FORMAT)")
    parser.set_defaults(handler=cmd_export_sweep)


def cmd_export_sweep(args: argparse.Namespace) -> int:
    import sys

    from mechscope.engine.results import SweepResult
    from mechscope.sessions import Session
    from mechscope.sessions.errors import SessionError

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
