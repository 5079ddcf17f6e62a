"""Head detectors: one [layer, head] score grid per head type, over a fixed probe set, cached by weights digest."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import DETECTORS, HeadScores

PROBE_VERSION = 1
PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog, and the dog does not move at all.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The capital of France is Paris. Paris is also the largest city in France.",
    "Alice and Bob walked to the park, and Bob handed a book to Alice before the rain.",
    "One two three four five six seven eight nine ten eleven twelve.",
    "I love this movie, it is wonderful and happy; I hate that film, it is awful and sad.",
)
REPEAT_LENGTH = 20
REPEAT_COUNT = 4
REPEAT_SEED = 0

@dataclass
class ProbeRun:
    """One probe's token ids, every head's pattern ([layer][head, q, k]), head outputs z
    ([layer][pos, head*d_head]) and final residual ([pos, d_model])."""

    ids: list[int]
    patterns: list[torch.Tensor]
    z: list[torch.Tensor]
    final: torch.Tensor


def repeat_probes(engine: ResidentModel) -> list[list[int]]:
    """REPEAT_COUNT sequences: (BOS when the tokenizer has one) + N random ids + the same N ids."""
    rng = random.Random(REPEAT_SEED)
    special = set(engine.tokenizer.all_special_ids or [])
    vocab = [i for i in range(min(engine.adapter.vocab_size, len(engine.tokenizer))) if i not in special]
    bos = engine.tokenizer.bos_token_id
    out = []
    for _ in range(REPEAT_COUNT):
        seq = rng.sample(vocab, REPEAT_LENGTH)
        out.append(([bos] if bos is not None else []) + seq + seq)
    return out


def probe_run(engine: ResidentModel, ids: list[int]) -> ProbeRun:
    """Run one probe recording every head's pattern, head outputs and the final residual."""
    a = engine.adapter
    controls = [AttentionControl(record_heads=tuple(range(a.n_heads))) for _ in range(a.n_layers)]
    z: list = [None] * a.n_layers
    kept: dict[str, torch.Tensor] = {}

    def keep_z(layer: int):
        def hook(module, args, kwargs):
            z[layer] = args[0][0].detach()  # [pos, head*d_head]
        return hook

    def keep_final(module, args, kwargs):
        kept["final"] = args[0][0].detach()  # [pos, d_model]

    hooks = [Hook("attn", a.layer_module(layer, "attn"), control=controls[layer]) for layer in range(a.n_layers)]
    hooks += [Hook("pre", a.o_proj(layer), keep_z(layer)) for layer in range(a.n_layers)]
    hooks.append(Hook("pre", a.final_norm, keep_final))
    with installed(hooks), torch.no_grad():
        engine.model(input_ids=torch.tensor([ids], device=engine.device), use_cache=False, logits_to_keep=1)
    patterns = [torch.stack([c.patterns[h][0] for h in range(a.n_heads)]).float() for c in controls]
    return ProbeRun(ids, patterns, z, kept["final"])


def head_writes(engine: ResidentModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """What each head writes to the residual: [pos, head*d_head] -> [head, pos, d_model] (no bias)."""
    a = engine.adapter
    weight = a.o_weight(layer)  # [d_model, head*d_head]
    zh = z.view(z.shape[0], a.n_heads, a.d_head)  # [pos, head, d_head]
    w = weight.view(weight.shape[0], a.n_heads, a.d_head)  # [d_model, head, d_head]
    return torch.einsum("phd,mhd->hpm", zh, w)


def direct_logit_effects(engine: ResidentModel, final: torch.Tensor, writes: torch.Tensor,
                         tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """l_t(v) for v in `tokens` ([head, pos, len(tokens)]) and its vocabulary mean ([head, pos]):
    the final norm linearised at the run's final residual (a Jacobian-vector product)."""
    a = engine.adapter

    def normed(x):
        out = a.final_norm(x)
        for module in a.post_final:
            out = module(out)
        return out

    primal = final.expand_as(writes).contiguous()  # [head, pos, d_model]
    _, tangent = torch.func.jvp(normed, (primal,), (writes,))  # type: ignore[misc]  # stubs type the has_aux 3-tuple; without aux it returns 2  # [head, pos, d_out]
    unembed = cast(torch.Tensor, a.unembed.weight)  # [vocab, d_out]
    chosen = tangent @ unembed[tokens].T  # [head, pos, len(tokens)]
    mean = tangent @ unembed.mean(0)  # [head, pos]
    return chosen.float(), mean.float()


def compute_scores(engine: ResidentModel) -> HeadScores:
    """Every detector's [layer, head] grid from the probe set (no cache)."""
    a = engine.adapter
    shape = (a.n_layers, a.n_heads)
    sums = {name: np.zeros(shape) for name in DETECTORS}
    counts = dict.fromkeys(DETECTORS, 0)
    with engine.guard():
        for text in PROBE_TEXTS:
            run = probe_run(engine, engine.tokenize(text)[0])
            n = len(run.ids)
            if n < 2:
                continue
            t = torch.arange(1, n)
            for layer in range(a.n_layers):
                pattern = run.patterns[layer]  # [head, q, k]
                sums["previous_token"][layer] += pattern[:, t, t - 1].sum(-1).numpy()
                sums["first_token_sink"][layer] += pattern[:, t, 0].sum(-1).numpy()
                with torch.no_grad():
                    chosen, mean = direct_logit_effects(engine, run.final, head_writes(engine, layer, run.z[layer]),
                                                        run.ids)
                # rel[h, t, k]: the head's effect at t on the logit of the token at k, vs the vocabulary
                rel = chosen - mean[:, :, None]
                keys = torch.tril(torch.ones(n, n), diagonal=0)
                keys[:, 0] = 0
                weighted = (pattern * keys * rel).sum(-1)  # [head, q]
                sums["copy_suppression"][layer] += -weighted[:, 1:].sum(-1).numpy()
            counts["previous_token"] += n - 1
            counts["first_token_sink"] += n - 1
            counts["copy_suppression"] += n - 1
        for ids in repeat_probes(engine):
            run = probe_run(engine, ids)
            offset = len(ids) - 2 * REPEAT_LENGTH
            t = torch.arange(offset + REPEAT_LENGTH, len(ids))  # second copy
            for layer in range(a.n_layers):
                pattern = run.patterns[layer]
                sums["duplicate_token"][layer] += pattern[:, t, t - REPEAT_LENGTH].sum(-1).numpy()
                sums["induction"][layer] += pattern[:, t, t - REPEAT_LENGTH + 1].sum(-1).numpy()
            counts["duplicate_token"] += len(t)
            counts["induction"] += len(t)
    return HeadScores({name: sums[name] / max(counts[name], 1) for name in DETECTORS})


def cache_path(digest: str) -> Path:
    from mechscope.engine.model_cache import cache_dir

    return cache_dir() / "detectors" / f"{digest}-v{PROBE_VERSION}.json"


def head_scores(engine: ResidentModel) -> HeadScores:
    """The detector grids, computed once per model and cached on disk keyed by the weights' digest
    (`engine.weights_digest`; no cache when it is empty). A damaged cache file is recomputed."""
    digest = engine.weights_digest
    path = cache_path(digest) if digest else None
    a = engine.adapter
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            scores = {name: np.asarray(data[name], dtype=np.float64) for name in DETECTORS}
            if all(grid.shape == (a.n_layers, a.n_heads) for grid in scores.values()):
                return HeadScores(scores, cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    result = compute_scores(engine)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result.to_dict()), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs a recompute next time
    return result
