"""What the prompt-set, estimate and function-vector dialogs take, parsed by the rules the set commands
apply: the dialogs check a text with these before they close, `PromptSets` reads it with the same."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mechscope.engine.prompt_sets import (
    ICL_TASKS,
    TEMPLATES,
    PromptSet,
    PromptSetError,
    load_prompt_set,
)
from mechscope.engine.results import ESTIMATE_METHODS, MAX_IG_STEPS, EstimateMethod
from mechscope.requests.kinds import AUTO_VERIFY

MAX_ROWS = 10_000
DEFAULT_ROWS = 20
MAX_VERIFY = 64
DEFAULT_TOP_HEADS = 10


@dataclass(frozen=True)
class TemplateText:
    """`ioi 20 0`: a template, its row count, then optionally a seed and (in-context tasks) shots."""

    template: str
    numbers: tuple[int, ...]


@dataclass(frozen=True)
class EstimateText:
    """`eap-ig steps 5 verify 10`: the estimator, its steps and how many top heads to verify."""

    method: EstimateMethod
    steps: int = 5
    verify_top_k: int = AUTO_VERIFY


def row_count_problem(count: int) -> str | None:
    return None if 1 <= count <= MAX_ROWS else f"a set needs 1 to {MAX_ROWS} rows, got {count}"


def parse_set_text(text: str) -> TemplateText | Path:
    """A template and its numbers, or the path of a JSONL / CSV file; ValueError says what is wrong."""
    words = text.split()
    if not words:
        raise ValueError(f"type a file path or a template ({', '.join(TEMPLATES)}) and a count")
    if words[0] in TEMPLATES and len(words) <= (4 if words[0] in ICL_TASKS else 3):
        try:
            numbers = tuple(int(word) for word in words[1:]) or (DEFAULT_ROWS,)
        except ValueError:
            raise ValueError(f"{text!r}: a template takes a row count and a seed (e.g. ioi 20 0; an "
                             "in-context task then the shots, e.g. antonyms 20 0 10)") from None
        if problem := row_count_problem(numbers[0]):
            raise ValueError(problem)
        return TemplateText(words[0], numbers)
    return Path(text.strip()).expanduser()


def read_set_file(path: Path) -> PromptSet:
    """The set a JSONL or CSV file holds; ValueError says why it cannot be read."""
    try:
        return load_prompt_set(path)
    except (PromptSetError, OSError) as exc:
        raise ValueError(f"prompt set not loaded: {exc}") from None


def load_set_text(text: str) -> TemplateText | PromptSet:
    """The template a text names, or the set read from the file it names; ValueError says what is wrong."""
    parsed = parse_set_text(text)
    return read_set_file(parsed) if isinstance(parsed, Path) else parsed


def parse_estimate_text(text: str) -> EstimateText:
    """A method, then optional `steps N` and `verify K|auto`; ValueError says what is wrong."""
    words = text.lower().split() or ["atp"]
    if words[0] not in ESTIMATE_METHODS:
        raise ValueError(f"unknown estimator {words[0]!r} (known: {', '.join(ESTIMATE_METHODS)})")
    options = {"steps": 5, "verify": AUTO_VERIFY}
    rest = words[1:]
    if len(rest) % 2 or any(name not in options for name in rest[::2]):
        raise ValueError(f"{text!r}: a method then steps N / verify K, e.g. eap-ig steps 5 verify 10")
    for name, value in zip(rest[::2], rest[1::2]):
        if name == "verify" and value == "auto":
            options[name] = AUTO_VERIFY
            continue
        try:
            options[name] = int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not 1 <= options["steps"] <= MAX_IG_STEPS:
        raise ValueError(f"steps must be 1 to {MAX_IG_STEPS}, got {options['steps']}")
    if not AUTO_VERIFY <= options["verify"] <= MAX_VERIFY:
        raise ValueError(f"verify must be auto or 0 to {MAX_VERIFY}, got {options['verify']}")
    return EstimateText(words[0], options["steps"], options["verify"])


@dataclass(frozen=True)
class FunctionVectorText:
    """`12 10 3`: the layer to add the vector at, the number of top heads, a coefficient."""

    layer: int
    top_heads: int = DEFAULT_TOP_HEADS
    coeff: float = 1.0


def parse_function_vector_text(text: str, n_layers: int) -> FunctionVectorText:
    """"LAYER [TOP_HEADS [COEFF]]" (an L before the layer allowed); ValueError says what is wrong."""
    words = text.replace("L", " ").replace("l", " ").split()
    try:
        layer = int(words[0])
        top_heads = int(words[1]) if len(words) > 1 else DEFAULT_TOP_HEADS
        coeff = float(words[2]) if len(words) > 2 else 1.0
    except (ValueError, IndexError):
        raise ValueError(f"{text!r}: type a layer, then optionally top heads and a coefficient (12 10 3)") from None
    if len(words) > 3:
        raise ValueError(f"{text!r}: at most a layer, top heads and a coefficient")
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{n_layers - 1}")
    if top_heads < 1:
        raise ValueError(f"top heads must be at least 1, got {top_heads}")
    if not math.isfinite(coeff):
        raise ValueError(f"the coefficient must be a finite number, got {words[2]!r}")
    return FunctionVectorText(layer, top_heads, coeff)
