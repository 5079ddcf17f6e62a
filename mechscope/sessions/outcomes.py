"""One-line summaries of recorded outcomes, as replay and exported scripts print them (each is its
request kind's handler's `describe`)."""

from __future__ import annotations

from typing import Any

from mechscope.requests.registry import Summary, handler_of_kind
from mechscope.requests.tolerance import format_sweep

__all__ = ["format_generation", "format_outcome", "format_sweep", "outcome_from_result"]


def outcome_from_result(result: Any) -> dict[str, Any]:
    """The part of a RunResult a session records and replay compares: top-k and metrics."""
    return handler_of_kind("run").summarise(result).data


def format_outcome(outcome: dict) -> str:
    """`' Mary' 0.4123, ' John' 0.2011, ' the' 0.1000; metric +1.2345`."""
    return handler_of_kind("run").describe(Summary(outcome))


def format_generation(token_ids: list, tokens: list) -> str:
    """`12 tokens ' Mary. The cat'`."""
    return handler_of_kind("generate").describe(Summary({"token_ids": token_ids, "tokens": tokens}))

