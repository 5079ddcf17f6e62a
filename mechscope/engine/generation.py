"""Generation with interventions active at every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mechscope.engine.captures import Captures, CaptureSpec
from mechscope.engine.errors import Cancelled, PromptError
from mechscope.engine.interventions import Intervention
from mechscope.engine.passes import Passes
from mechscope.engine.prompt_edits import compile_edits
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import GeneratedToken


def check_generation(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if not temperature >= 0 or not math.isfinite(temperature):
        raise ValueError("temperature must be a finite number >= 0")


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """The token ids that end generation: the tokenizer's, else the model's generation config's."""
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(model.generation_config, "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def sample_tokens(ids: torch.Tensor, next_logits: Callable[[torch.Tensor], torch.Tensor], max_new_tokens: int,
                  temperature: float, seed: int, stop_ids: set[int], limit: int,
                  decode: Callable[[int], str], on_token: Callable[[GeneratedToken], None] | None = None,
                  should_stop: ShouldStop | None = None) -> list[GeneratedToken]:
    """The sampling loop every engine shares: `next_logits(ids [1, pos])` -> float logits [vocab] of
    the next token; greedy at temperature 0, else seeded sampling; stops at an end token, at the
    context `limit` or after `max_new_tokens`."""
    generator = torch.Generator().manual_seed(int(seed))
    out: list[GeneratedToken] = []
    for _ in range(max_new_tokens):
        if should_stop is not None and should_stop():
            raise Cancelled("generation stopped")
        if ids.shape[1] >= limit:
            break
        logits = next_logits(ids)  # [vocab]
        probs = torch.softmax(logits, dim=-1)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            scaled = torch.softmax(logits / temperature, dim=-1).cpu()
            token = int(torch.multinomial(scaled, 1, generator=generator))
        item = GeneratedToken(token, decode(token), float(probs[token]))
        out.append(item)
        if on_token is not None:
            on_token(item)
        if token in stop_ids:
            break
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return out


def generate(passes: Passes, prompt: str, interventions: Iterable[Intervention] = (),
             max_new_tokens: int = 20, temperature: float = 0.0, seed: int = 0,
             corrupted: str | None = None, vectors: Mapping[str, np.ndarray] | None = None,
             reference_prompts: Sequence[str] = (),
             on_token: Callable[[GeneratedToken], None] | None = None,
             should_stop: ShouldStop | None = None) -> list[GeneratedToken]:
    """Greedy (temperature 0) or seeded sampling with the interventions active at every step.

    Each step re-runs the whole sequence, so interventions see every position exactly as in `run`;
    patches and resample ablations apply to the prompt's positions.
    """
    check_generation(max_new_tokens, temperature)
    with torch.no_grad():
        ids, _ = passes.prompt_ids(prompt)
        limit = passes.adapter.max_context
        if max_new_tokens > 0 and ids.shape[1] >= limit:
            raise PromptError(f"the prompt already fills the model's context ({limit} tokens): "
                              "there is no room to generate; shorten it")
        edits = compile_edits(passes, interventions, ids.shape[1], corrupted, vectors or {}, reference_prompts)
        hooks = edits.hooks + passes.capture_hooks(CaptureSpec(readout=0), Captures(), 0, edits.knockouts)

        def next_logits(ids: torch.Tensor) -> torch.Tensor:
            return passes.logits(passes.forward(ids, hooks)[:, -1])[0]  # [vocab]

        return sample_tokens(ids, next_logits, max_new_tokens, temperature, seed,
                             eos_ids(passes.tokenizer, passes.model), limit, passes.decode_token, on_token,
                             should_stop)
