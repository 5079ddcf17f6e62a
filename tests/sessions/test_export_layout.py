"""An exported script's request literals: even indentation, one intervention per line, same values."""

from __future__ import annotations

import ast

from mechscope.engine.interventions import HeadAblation, HeadScale
from mechscope.requests.kinds import RunRequest, request_from_dict, request_to_dict
from mechscope.sessions.export import _request_literal


def test_interventions_are_listed_one_per_line_with_even_indentation() -> None:
    request = RunRequest("When Mary and John", interventions=(HeadAblation(1, 2), HeadScale(0, 1, 0.5)))
    data = request_to_dict(request)
    text = _request_literal(data)
    lines = text.splitlines()
    assert all((len(line) - len(line.lstrip(" "))) % 4 == 0 for line in lines)
    start = lines.index("    'interventions': [")
    assert lines[start + 1:start + 4] == [f"        {item!r}," for item in data["interventions"]] + ["    ],"]
    assert request_from_dict(ast.literal_eval(text)) == request
