"""Export a session as a standalone Python script that re-runs its work through `mechscope.requests`.

Safe by construction: the script is a fixed template. Every piece of work is its request as a dict
literal passed to `request_from_dict` and then `execute`; every value taken from the session (names,
prompts, tokens, numbers, vectors) enters the script only as a Python literal built by `literal` from
plain JSON types, and comments are escaped to printable text, so a hostile session cannot add code:
the script's calls, imports and names are the template's whatever the session holds (a test checks
the AST). Requests are rebuilt through their classes first, so the dict's keys are dataclass fields.
"""

from __future__ import annotations

import base64
import math
import re
import textwrap
from typing import Any

import numpy as np

from mechscope.sessions.errors import SessionError
from mechscope.sessions.events import Event, work_kind
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


def _vector_literal(array: np.ndarray) -> str:
    """Base64 of little-endian float32: exact and compact."""
    encoded = base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")
    chunks = [encoded[i:i + 88] for i in range(0, len(encoded), 88)] or [""]
    return "(\n    " + "\n    ".join(repr(chunk) for chunk in chunks) + "\n)"


def _field_literal(value: Any) -> str:
    """A request field's value; a list of objects (interventions) one item per line, 4 spaces deeper."""
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return "[\n" + "".join(f"        {literal(item)},\n" for item in value) + "    ]"
    return literal(value)


def _request_literal(data: dict[str, Any]) -> str:
    """A request dict as a literal, one field per line."""
    return "{\n" + "".join(f"    {literal(key)}: {_field_literal(value)},\n" for key, value in data.items()) + "}"


def _event_code(session: Session, event: Event) -> str | None:
    from mechscope.requests.kinds import request_to_dict
    from mechscope.requests.registry import handler_for

    seq = event.seq
    if event.kind == "vector":
        return (f"# seq {seq}: steering vector {_comment(repr(event['name']))} [{event['shape'][0]}]\n"
                f"engine.add_vector({literal(event['name'])}, "
                f"vector{_vector_literal(session.tensor(event))})")
    if event.kind == "reference_prompts":
        return (f"# seq {seq}: reference prompts for mean ablation\n"
                f"engine.set_reference_prompts({literal(list(event['prompts']))})")
    if event.kind == "effect_scale":
        return f"# seq {seq}: the workbench shows patching effects as {_comment(str(event['scale']))} from here on"
    if event.kind == "feature_label":
        return (f"# seq {seq}: feature {event['feature']} of {_comment(str(event['sae_folder']))} is named "
                f"{_comment(repr(event['label']))}")
    if event.kind == "note":
        return "\n".join(f"# note (seq {seq}): {_comment(line)}"
                         for line in event["text"].splitlines()[:50] or [""])
    if work_kind(event) is None:
        return None
    request, recorded = session.outcome(event)
    handler = handler_for(request)
    # What was recorded is all that is compared: never ask for more than it holds.
    data = request_to_dict(handler.bounded(request, recorded))
    return (f"# seq {seq}: recorded {_comment(handler.describe(recorded))}\n"
            f"step(engine, {literal(seq)}, {_request_literal(data)})")


def export_script(session: Session, filename: str | None = None, attach: str | None = None) -> str:
    """The text of a script that loads the recorded model and re-runs the session's work in order.

    Each step prints `seq N KIND: <summary>` (for a run: top-3 tokens and probabilities; metric), the
    summary `mechscope replay` shows, so the two can be compared line by line. `filename` is the name the
    script is saved under, for its usage line. With `attach` (a `mechscope serve` name or socket
    path) the script connects to that server instead of loading a model. SessionError for a session
    that cannot be exported.
    """
    blocks = []
    for event in session.events:
        try:
            code = _event_code(session, event)
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"{session.events_path}:{event.line}: cannot export this "
                               f"{event.kind} event ({str(exc)[:200]})") from None
        if code is not None:
            blocks.append(code)
    shown_name = filename if filename and _SAFE_FILENAME.fullmatch(filename) else "SCRIPT"
    body = textwrap.indent("\n\n".join(blocks), "    ") if blocks else "    pass"
    return f'''#!/usr/bin/env python
"""Reproduce the runs of a recorded mechscope session (named in SESSION below).

Usage: python {shown_name} [MODEL] [--summaries FILE]
MODEL defaults to RECORDED_MODEL, the model it was recorded on. When ATTACH names a running
`mechscope serve` (name or socket path), the script uses its model instead. Exported by `mechscope
export`; each step prints its outcome like `mechscope replay`; --summaries writes every outcome as JSON.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np

from mechscope.engine import Engine
from mechscope.engine.errors import MechscopeError
from mechscope.requests import execute, handler_for, request_from_dict
from mechscope.serve import connect

SESSION = {literal(session.name)}
RECORDED_AT = {literal(str(session.manifest.get("created", "")))}
RECORDED_MODEL = {literal(session.model_source or "demo")}
ATTACH = {literal(attach)}
SUMMARIES: list[dict[str, Any]] = []


def vector(*chunks: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode("".join(chunks)), dtype="<f4").copy()


def step(engine: Any, seq: int, data: dict[str, Any]) -> None:
    """Execute one recorded request and print its outcome as `mechscope replay` summarises it."""
    request = request_from_dict(data)
    outcome = execute(engine, request)
    if not outcome.ok:
        raise MechscopeError(f"seq {{seq}} {{request.kind}}: {{outcome.error or 'stopped'}}")
    handler = handler_for(request)
    summary = handler.summarise(outcome.result)
    print(f"seq {{seq}} {{request.kind}}: {{handler.describe(summary)}}", flush=True)
    SUMMARIES.append({{"seq": seq, "kind": request.kind, "outcome": summary.data,
                      "arrays": {{name: array.tolist() for name, array in summary.arrays.items()}}}})


def main(model: str) -> None:
    engine = connect(ATTACH) if ATTACH is not None else Engine.load(model)
{body}


if __name__ == "__main__":
    args = sys.argv[1:]
    summaries = None
    if "--summaries" in args:
        at = args.index("--summaries")
        summaries = args[at + 1] if at + 1 < len(args) else None
        del args[at:at + 2]
    try:
        main(args[0] if args else RECORDED_MODEL)
    except MechscopeError as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        sys.exit(2)
    if summaries is not None:
        with open(summaries, "w", encoding="utf-8") as handle:
            json.dump(SUMMARIES, handle)
'''
