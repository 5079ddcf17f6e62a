"""Export a session as a standalone Python script that reproduces its runs through `mechscope.engine`.

Safe by construction: the script is a fixed template. Every value taken from the session (names,
prompts, tokens, numbers, vectors) enters it only as a Python literal built by `literal` from plain
JSON types, and comments are escaped to printable text, so a hostile session cannot add code: the
script's calls, imports and names are the template's whatever the session holds (a test checks the
AST). Interventions and metrics are rebuilt through their classes first, so keyword names come from
the dataclass fields, never from the file.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import math
import re
import textwrap
from typing import Any

import numpy as np

from mechscope.sessions import outcomes
from mechscope.sessions.errors import SessionError
from mechscope.sessions.events import Event
from mechscope.sessions.store import Session

_SAFE_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")


def literal(value: Any) -> str:
    """Python source for a plain value (None, bool, int, finite float, str, list, tuple, dict).

    ValueError for anything else, non-finite floats included (the script would not run them back).
    """
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"the number {float(value)!r} is not finite")
        return repr(float(value))
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(literal(item) + ", " for item in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()
                               if isinstance(k, str)) + "}"
    raise ValueError(f"a value of type {type(value).__name__} cannot be exported")


def _comment(text: str) -> str:
    """Text safe inside a `#` comment: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)[:300]


def _call(obj: Any, used: set[str]) -> str:
    """`HeadAblation(layer=1, head=2)` from a validated dataclass; keyword names are its fields."""
    name = type(obj).__name__
    if not name.isidentifier():
        raise ValueError(f"cannot export a {name!r}")
    used.add(name)
    args = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "enabled" and value is True:
            continue
        args.append(f"{f.name}={literal(value)}")
    return f"{name}({', '.join(args)})"


def _interventions_code(dicts: list[dict[str, Any]], used: set[str]) -> str:
    from mechscope.engine.interventions import Intervention

    calls = [_call(iv, used) for iv in (Intervention.from_dict(d) for d in dicts) if iv.enabled]
    if not calls:
        return "[]"
    return "[\n    " + ",\n    ".join(calls) + ",\n]"


def _metric_code(data: dict[str, Any] | None, used: set[str]) -> str:
    from mechscope.engine.interventions import Metric

    return "None" if data is None else _call(Metric.from_dict(data), used)


def _vector_literal(array: np.ndarray) -> str:
    """Base64 of little-endian float32: exact and compact."""
    encoded = base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")
    chunks = [encoded[i:i + 88] for i in range(0, len(encoded), 88)] or [""]
    return "(\n    " + "\n    ".join(repr(chunk) for chunk in chunks) + "\n)"


def _event_code(session: Session, event: Event, used: set[str]) -> str | None:
    seq = event.seq
    if event.kind == "vector":
        return (f"# seq {seq}: steering vector {_comment(repr(event['name']))} [{event['shape'][0]}]\n"
                f"engine.add_vector({literal(event['name'])}, "
                f"vector{_vector_literal(session.tensor(event))})")
    if event.kind == "reference_prompts":
        return (f"# seq {seq}: reference prompts for mean ablation\n"
                f"engine.set_reference_prompts({literal(list(event['prompts']))})")
    if event.kind == "run":
        recorded = outcomes.format_outcome(event["outcome"])
        return (
            f"# seq {seq}: recorded {_comment(recorded)}\n"
            "result = engine.run(\n"
            f"    {literal(event['prompt'])},\n"
            f"    interventions={_interventions_code(event['interventions'], used)},\n"
            f"    metric={_metric_code(event['metric'], used)},\n"
            f"    corrupted={literal(event['corrupted'])},\n"
            f"    top_k={literal(event['top_k'])},\n"
            ")\n"
            f"print({literal(f'seq {seq} run:')}, format_outcome(outcome_from_result(result)))"
        )
    if event.kind == "sweep":
        recorded = outcomes.format_sweep(session.tensor(event), event["base_metric"])
        return (
            f"# seq {seq}: recorded {_comment(recorded)}\n"
            f"sweep = engine.sweep({literal(event['sweep'])}, {literal(event['clean'])}, "
            f"{literal(event['corrupt'])},\n"
            f"                     {_metric_code(event['metric'], used)}, "
            f"direction={literal(event['direction'])})\n"
            f"print({literal(f'seq {seq} sweep:')}, format_sweep(sweep.values, sweep.base_metric))"
        )
    if event.kind == "generate":
        params = event["params"]
        recorded = outcomes.format_generation(event["token_ids"], event["tokens"])
        # What was recorded is all that is compared: never ask for more tokens than it holds.
        max_new_tokens = min(params["max_new_tokens"], len(event["token_ids"]))
        return (
            f"# seq {seq}: recorded {_comment(recorded)}\n"
            "tokens = engine.generate(\n"
            f"    {literal(event['prompt'])},\n"
            f"    interventions={_interventions_code(event['interventions'], used)},\n"
            f"    max_new_tokens={literal(max_new_tokens)}, "
            f"temperature={literal(params['temperature'])}, seed={literal(params['seed'])},\n"
            f"    corrupted={literal(event['corrupted'])},\n"
            ")\n"
            f"print({literal(f'seq {seq} generate:')}, format_generation([t.id for t in tokens], "
            "[t.text for t in tokens]))"
        )
    if event.kind == "note":
        return "\n".join(f"# note (seq {seq}): {_comment(line)}"
                         for line in event["text"].splitlines()[:50] or [""])
    return None


def export_script(session: Session, filename: str | None = None, attach: str | None = None) -> str:
    """The text of a script that loads the recorded model and re-runs the session's runs in order.

    Each run prints `seq N run: <top-3 tokens and probabilities; metric>`, the same summary that
    `mechscope replay` shows, so the two can be compared line by line. `filename` is the name the
    script is saved under, for its usage line. With `attach` (a `mechscope serve` name or socket
    path) the script connects to that server instead of loading a model. SessionError for a session
    that cannot be exported.
    """
    used: set[str] = set()
    blocks = []
    for event in session.events:
        try:
            code = _event_code(session, event, used)
        except (TypeError, ValueError) as exc:
            raise SessionError(f"{session.events_path}:{event.line}: cannot export this "
                               f"{event.kind} event ({str(exc)[:200]})") from None
        if code is not None:
            blocks.append(code)
    helpers = "\n\n\n".join(inspect.getsource(fn).strip() for fn in (
        outcomes.outcome_from_result, outcomes.format_outcome, outcomes.format_generation,
        outcomes.format_sweep))
    imports = ", ".join(sorted({"Engine", *used}))
    shown_name = filename if filename and _SAFE_FILENAME.fullmatch(filename) else "SCRIPT"
    body = textwrap.indent("\n\n".join(blocks), "    ") if blocks else "    pass"
    return f'''#!/usr/bin/env python
"""Reproduce the runs of a recorded mechscope session (named in SESSION below).

Usage: python {shown_name} [MODEL]    MODEL defaults to RECORDED_MODEL, the model it was recorded on.
When ATTACH names a running `mechscope serve` (name or socket path), the script uses its model instead.
Exported by `mechscope export`; each run prints its top tokens and metric like `mechscope replay`.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import numpy as np

from mechscope.engine import {imports}
from mechscope.engine.errors import MechscopeError
from mechscope.serve import connect

SESSION = {literal(session.name)}
RECORDED_AT = {literal(str(session.manifest.get("created", "")))}
RECORDED_MODEL = {literal(session.model_source or "demo")}
ATTACH = {literal(attach)}


def vector(*chunks: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode("".join(chunks)), dtype="<f4").copy()


{helpers}


def main(model: str) -> None:
    engine = connect(ATTACH) if ATTACH is not None else Engine.load(model)
{body}


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else RECORDED_MODEL)
    except MechscopeError as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        sys.exit(2)
'''
