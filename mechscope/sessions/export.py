"""Export a session as a standalone Python script that reproduces its runs through `mechscope.engine`."""

from __future__ import annotations

import base64
import inspect
from typing import Any

import numpy as np

from mechscope.sessions import outcomes
from mechscope.sessions.events import Event
from mechscope.sessions.store import Session


def _call(name: str, data: dict[str, Any], skip: tuple[str, ...] = ("kind",)) -> str:
    """`HeadAblation(layer=1, head=2)` from a to_dict() dict, leaving out `skip` and enabled=True."""
    args = ", ".join(f"{key}={value!r}" for key, value in data.items()
                     if key not in skip and not (key == "enabled" and value is True))
    return f"{name}({args})"


def _interventions_code(dicts: list[dict[str, Any]], used: set[str]) -> str:
    from mechscope.engine.interventions import Intervention

    calls = []
    for data in dicts:
        if not data.get("enabled", True):
            continue
        cls_name = type(Intervention.from_dict(data)).__name__
        used.add(cls_name)
        calls.append(_call(cls_name, data))
    if not calls:
        return "[]"
    return "[\n        " + ",\n        ".join(calls) + ",\n    ]"


def _metric_code(data: dict[str, Any] | None, used: set[str]) -> str:
    if data is None:
        return "None"
    used.add("Metric")
    return _call("Metric", data, skip=())


def _vector_literal(array: np.ndarray) -> str:
    """Base64 of little-endian float32: exact and compact."""
    encoded = base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")
    chunks = [encoded[i:i + 88] for i in range(0, len(encoded), 88)] or [""]
    return "(\n    " + "\n    ".join(repr(chunk) for chunk in chunks) + "\n)"


def _event_code(session: Session, event: Event, used: set[str]) -> str | None:
    seq = event.seq
    if event.kind == "vector":
        return (f"# seq {seq}: steering vector {event['name']!r} [{event['shape'][0]}]\n"
                f"engine.add_vector({event['name']!r}, vector{_vector_literal(session.tensor(event))})")
    if event.kind == "reference_prompts":
        return f"# seq {seq}: reference prompts for mean ablation\nengine.set_reference_prompts({event['prompts']!r})"
    if event.kind == "run":
        recorded = outcomes.format_outcome(event["outcome"])
        return (
            f"# seq {seq}: recorded {recorded}\n"
            "result = engine.run(\n"
            f"    {event['prompt']!r},\n"
            f"    interventions={_interventions_code(event['interventions'], used)},\n"
            f"    metric={_metric_code(event['metric'], used)},\n"
            f"    corrupted={event['corrupted']!r},\n"
            f"    top_k={event['top_k']!r},\n"
            ")\n"
            f"print({f'seq {seq} run:'!r}, format_outcome(outcome_from_result(result)))"
        )
    if event.kind == "sweep":
        recorded = outcomes.format_sweep(session.tensor(event), event["base_metric"])
        return (
            f"# seq {seq}: recorded {recorded}\n"
            f"sweep = engine.sweep({event['sweep']!r}, {event['clean']!r}, {event['corrupt']!r},\n"
            f"                     {_metric_code(event['metric'], used)}, direction={event['direction']!r})\n"
            f"print({f'seq {seq} sweep:'!r}, format_sweep(sweep.values, sweep.base_metric))"
        )
    if event.kind == "generate":
        params = event["params"]
        recorded = outcomes.format_generation(event["token_ids"], event["tokens"])
        return (
            f"# seq {seq}: recorded {recorded}\n"
            "tokens = engine.generate(\n"
            f"    {event['prompt']!r},\n"
            f"    interventions={_interventions_code(event['interventions'], used)},\n"
            f"    max_new_tokens={params['max_new_tokens']!r}, temperature={params['temperature']!r}, "
            f"seed={params['seed']!r},\n"
            f"    corrupted={event['corrupted']!r},\n"
            ")\n"
            f"print({f'seq {seq} generate:'!r}, format_generation([t.id for t in tokens], "
            "[t.text for t in tokens]))"
        )
    if event.kind == "note":
        return "\n".join(f"# note (seq {seq}): {line}" for line in event["text"].splitlines() or [""])
    return None


def export_script(session: Session) -> str:
    """The text of a script that loads the recorded model and re-runs the session's runs in order.

    Each run prints `seq N run: <top-3 tokens and probabilities; metric>`, the same summary that
    `mechscope replay` shows, so the two can be compared line by line.
    """
    used: set[str] = set()
    blocks = [code for event in session.events
              if (code := _event_code(session, event, used)) is not None]
    source = session.model_source or "demo"
    helpers = "\n\n\n".join(inspect.getsource(fn).strip() for fn in (
        outcomes.outcome_from_result, outcomes.format_outcome, outcomes.format_generation,
        outcomes.format_sweep))
    imports = ", ".join(sorted({"Engine", *used}))
    created = session.manifest.get("created", "")
    header = f'''#!/usr/bin/env python
"""Reproduce the runs of mechscope session {session.name!r} (recorded {created} on {source!r}).

Usage: python {session.name}.py [MODEL]    MODEL defaults to the recorded {source!r}.
Exported by `mechscope export`; each run prints its top tokens and metric like `mechscope replay`.
"""

from __future__ import annotations

import base64
import sys

import numpy as np

from mechscope.engine import {imports}

MODEL = sys.argv[1] if len(sys.argv) > 1 else {source!r}


def vector(*chunks: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode("".join(chunks)), dtype="<f4").copy()


{helpers}


engine = Engine.load(MODEL)
'''
    return header + "\n" + "\n\n".join(blocks) + ("\n" if blocks else "")
