"""Massive activations: residual dimensions whose magnitude dwarfs the rest, per layer, across a set of prompts."""

from __future__ import annotations

import numpy as np
import torch

from mechscope.engine.errors import PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import MassiveLayer


def _prompts(prompts: PromptSet | list[str] | tuple[str, ...]) -> list[str]:
    texts = prompts.column("clean") if isinstance(prompts, PromptSet) else list(prompts)
    if not texts:
        raise PromptError("massive activations need at least one prompt")
    return texts


def layer_outputs(engine: ResidentModel, text: str) -> list[torch.Tensor]:
    """Every decoder layer's output residual for one prompt: [layer][pos, d_model]."""
    a = engine.adapter
    out: list = [None] * a.n_layers

    def keep(layer: int):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output
            out[layer] = value[0].detach().float()
        return hook

    ids = torch.tensor([engine.tokenize(text)[0]], device=engine.device)
    with installed([Hook("fwd", a.layers[layer], keep(layer)) for layer in range(a.n_layers)]), torch.no_grad():
        engine.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return out


def massive_activations(engine: ResidentModel, prompts: PromptSet | list[str] | tuple[str, ...],
                        ratio: float = 100.0, tol: float = 0.1) -> list[MassiveLayer]:
    """One `MassiveLayer` per layer over `prompts` (a set's clean prompts, or a list of texts)."""
    if ratio <= 0:
        raise ValueError("ratio must be > 0")
    texts = _prompts(prompts)
    a = engine.adapter
    found: list[list[dict[int, tuple[float, int]]]] = [[] for _ in range(a.n_layers)]  # [layer][prompt]
    medians: list[list[float]] = [[] for _ in range(a.n_layers)]
    with engine.guard():
        for text in texts:
            for layer, hidden in enumerate(layer_outputs(engine, text)):
                magnitude = hidden.abs()  # [pos, d_model]
                median = float(magnitude.median())
                top, where = magnitude.max(dim=0)  # [d_model]
                dims = (top > ratio * median).nonzero()[:, 0].tolist()
                found[layer].append({d: (float(hidden[where[d], d]), int(where[d])) for d in dims})
                medians[layer].append(median)
    out = []
    for layer in range(a.n_layers):
        per_prompt = found[layer]
        dims = sorted(set().union(*per_prompt))
        peak = [[p[d][0] if d in p else float("nan") for p in per_prompt] for d in dims]
        position = [[p[d][1] if d in p else -1 for p in per_prompt] for d in dims]
        spread = []
        for values in peak:
            v = np.asarray(values)
            spread.append(float(np.nanstd(v) / abs(np.nanmean(v))) if np.isfinite(v).any() and np.nanmean(v) else float("inf"))
        counts = [sum(d in p for p in per_prompt) for d in dims]
        constant = bool(dims) and all(c == len(texts) for c in counts) and all(s < tol for s in spread)
        out.append(MassiveLayer(layer, dims, counts, peak, position, spread, medians[layer], constant))
    return out
