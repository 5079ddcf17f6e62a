"""Targets typed without their leading space ("Mary" where the model predicts " Mary"): spot and fix."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mechscope.workbench.state import Inputs

# typed text -> (first token id of the text, first token id of the text after a space); None: no tokens
FirstIds = Callable[[str], "tuple[int, int] | None"]


def first_ids(tokenize: Callable[[str], tuple[list[int], list[str]]]) -> FirstIds:
    """FirstIds from an engine's `tokenize`: the first ids where the two tokenisations differ (after
    any special tokens they share)."""
    def ids(typed: str) -> tuple[int, int] | None:
        plain, spaced = tokenize(typed)[0], tokenize(" " + typed)[0]
        shared = 0
        while shared < min(len(plain), len(spaced)) and plain[shared] == spaced[shared]:
            shared += 1
        if shared >= min(len(plain), len(spaced)):
            return None
        return plain[shared], spaced[shared]

    return ids


@dataclass(frozen=True)
class SpacingHint:
    """`field` holds `typed`; the model gives its spaced form `spaced` more probability."""

    field: str  # "target" | "foil"
    typed: str
    spaced: str
    typed_prob: float
    spaced_prob: float

    @property
    def note(self) -> str:
        return (f"{self.field} {self.typed!r} has no leading space; the model predicts {self.spaced!r} "
                f"(p {self.spaced_prob:.1%} vs {self.typed_prob:.1%}): T uses {self.spaced!r}")


def spacing_hints(inputs: Inputs, logits: np.ndarray, first_token: FirstIds) -> list[SpacingHint]:
    """The metric tokens whose spaced form the model prefers, at the readout of `logits` [vocab]."""
    if not inputs.clean or inputs.clean[-1].isspace():
        return []  # after a trailing space the unspaced word is the natural next token
    shifted = logits.astype(np.float64) - np.max(logits)  # [vocab]
    probs = np.exp(shifted) / np.exp(shifted).sum()
    hints = []
    fields = ("target", "foil") if inputs.metric_kind == "logit_diff" else ("target",)
    for field in fields:
        typed = getattr(inputs, field)
        if not typed or typed[0].isspace():
            continue
        ids = first_token(typed)
        if ids is None:
            continue
        typed_id, spaced_id = ids
        typed_prob, spaced_prob = float(probs[typed_id]), float(probs[spaced_id])
        if spaced_prob > typed_prob:
            hints.append(SpacingHint(field, typed, " " + typed, typed_prob, spaced_prob))
    return hints


def with_spaces(inputs: Inputs, hints: list[SpacingHint]) -> Inputs:
    """The inputs with every hinted field replaced by its spaced form."""
    return dataclasses.replace(inputs, **{hint.field: hint.spaced for hint in hints})
