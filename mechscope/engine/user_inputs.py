"""Checks of what a user hands an engine (steering vectors, reference prompts, steering prompts), shared by every engine that runs the model here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.passes import check_text


def checked_vector(name: str, array: object, d_model: int) -> np.ndarray:
    """`array` as a float32 steering vector [d_model]; InterventionError naming it otherwise."""
    vector = np.asarray(array, dtype=np.float32).reshape(-1)
    if vector.shape[0] != d_model:
        raise InterventionError(f"steering vector {name!r} has width {vector.shape[0]}, the model needs {d_model}")
    if not np.all(np.isfinite(vector)):
        raise InterventionError(f"steering vector {name!r} has non-finite values")
    return vector


def checked_reference_prompts(prompts: Sequence[str]) -> list[str]:
    """The non-empty prompts of a reference set for mean ablation; PromptError when none is left."""
    kept = [p for p in prompts if isinstance(p, str) and p.strip()]
    if not kept:
        raise PromptError("the reference set for mean ablation needs at least one prompt")
    for prompt in kept:
        check_text(prompt, "a reference prompt")
    return kept


def check_steering_prompts(layer: int, n_layers: int, positive: Sequence[str], negative: Sequence[str]) -> None:
    """A steering vector is built at an existing layer from at least one prompt on each side."""
    if not 0 <= layer < n_layers:
        raise InterventionError(f"steering layer {layer} is out of range 0..{n_layers - 1}")
    if not positive or not negative:
        raise PromptError("a steering vector needs at least one positive and one negative prompt")
