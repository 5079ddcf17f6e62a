"""Generation with interventions active at every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from mechscope.engine.captures import Captures, CaptureSpec
from mechscope.engine.edits import compile_edits
from mechscope.engine.errors import Cancelled, PromptError
from mechscope.engine.interventions import Intervention
from mechscope.engine.passes import Passes
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import GeneratedToken


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
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if not temperature >= 0 or not math.isfinite(temperature):
        raise ValueError("temperature must be a finite number >= 0")
    generator = torch.Generator().manual_seed(int(seed))
    eos = passes.tokenizer.eos_token_id
    if eos is None:
        eos = getattr(passes.model.generation_config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    out: list[GeneratedToken] = []
    with torch.no_grad():
        ids, _ = passes.prompt_ids(prompt)
        limit = passes.adapter.max_context
        if max_new_tokens > 0 and ids.shape[1] >= limit:
            raise PromptError(f"the prompt already fills the model's context ({limit} tokens): "
                              "there is no room to generate; shorten it")
        edits = compile_edits(passes, interventions, ids.shape[1], corrupted, vectors or {}, reference_prompts)
        hooks = edits.hooks + passes.capture_hooks(CaptureSpec(readout=0), Captures(), 0, edits.knockouts)
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                raise Cancelled("generation stopped")
            if ids.shape[1] >= limit:
                break
            final = passes.forward(ids, hooks)
            logits = passes.logits(final[:, -1])[0]  # [vocab]
            probs = torch.softmax(logits, dim=-1)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                scaled = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(scaled, 1, generator=generator))
            item = GeneratedToken(token, passes.decode_token(token), float(probs[token]))
            out.append(item)
            if on_token is not None:
                on_token(item)
            if token in eos_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return out
