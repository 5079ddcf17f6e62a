"""Typed text to workbench values, by the rules the engine uses: whole numbers in a range, a metric
position inside the prompt, reference prompts, generation settings. Each raises or returns a one-line
reason, so a dialog can show it beside the field."""

from __future__ import annotations

import math
from collections.abc import Callable

from mechscope.workbench.state import GenerationSettings

MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 100.0
MAX_SEED = 2**32 - 1
MAX_REFERENCE_PROMPTS = 256
MAX_POSITION = 1_000_000


def parse_int(name: str, text: str, low: int, high: int) -> int:
    """An int in [low, high]; ValueError with a one-line reason otherwise."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text.strip()!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


def parse_position(text: str) -> int:
    return parse_int("metric position", text, -MAX_POSITION, MAX_POSITION)


def check_position(position: int, n_tokens: int | None) -> str | None:
    """The engine's rule for a metric position: -n..n-1 over the prompt's tokens."""
    if n_tokens is not None and not -n_tokens <= position < n_tokens:
        return f"metric position {position} is outside the prompt ({n_tokens} tokens: " \
               f"{-n_tokens}..{n_tokens - 1})"
    return None


def parse_reference_prompts(text: str) -> tuple[str, ...]:
    """One prompt per line; blank lines are skipped; at least one prompt."""
    prompts = tuple(line for line in text.splitlines() if line.strip())
    if not prompts:
        raise ValueError("give at least one reference prompt (one per line)")
    if len(prompts) > MAX_REFERENCE_PROMPTS:
        raise ValueError(f"at most {MAX_REFERENCE_PROMPTS} reference prompts, got {len(prompts)}")
    return prompts


def parse_temperature(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"temperature must be a number, got {text.strip()!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_TEMPERATURE:
        raise ValueError(f"temperature must be a finite number in 0..{MAX_TEMPERATURE:g}, got {text.strip()}")
    return value


def parse_max_new_tokens(text: str) -> int:
    return parse_int("max new tokens", text, 1, MAX_NEW_TOKENS)


def parse_seed(text: str) -> int:
    return parse_int("seed", text, 0, MAX_SEED)


def parse_generation(max_new_tokens: str, temperature: str, seed: str) -> GenerationSettings:
    """Generation settings from typed text: bounded ints and a finite temperature ≥ 0 (ValueError otherwise)."""
    return GenerationSettings(parse_max_new_tokens(max_new_tokens), parse_temperature(temperature),
                              parse_seed(seed))


GENERATION_PARSERS: dict[str, Callable[[str], float]] = {  # each typed setting, by the field it is typed in
    "max_new_tokens": parse_max_new_tokens, "temperature": parse_temperature, "seed": parse_seed}


def generation_problems(max_new_tokens: str, temperature: str, seed: str) -> dict[str, str]:
    """Each typed generation setting that `parse_generation` refuses, with why (by the same parsers)."""
    problems = {}
    for (name, parse), text in zip(GENERATION_PARSERS.items(), (max_new_tokens, temperature, seed), strict=True):
        try:
            parse(text)
        except ValueError as exc:
            problems[name] = str(exc)
    return problems
