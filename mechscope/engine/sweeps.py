"""Patching sweeps (heads, residual positions, attribution patching) and generation on a resident Engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.core import Captures, CaptureSpec, LayerCall
from mechscope.engine.errors import Cancelled, PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import Intervention, Metric
from mechscope.engine.results import GeneratedToken, SweepResult

if TYPE_CHECKING:
    from mechscope.engine.core import Engine

SweepKind = Literal["head", "resid", "atp"]
ProgressCallback = Callable[[SweepResult], None]


def sweep(engine: Engine, kind: SweepKind, clean: str, corrupt: str, metric: Metric,
          direction: Literal["noising", "denoising"] = "noising",
          on_progress: ProgressCallback | None = None,
          should_stop: Callable[[], bool] | None = None) -> SweepResult:
    """Patch every head (or residual position) from the source run into the base run.

    noising: base = clean, source = corrupt (how much does the metric drop when a component sees
    the corrupted input?). denoising: the reverse. `values` is metric(patched) - metric(base).
    "atp" approximates the head sweep with one forward and backward pass (attribution patching).
    """
    if kind not in ("head", "resid", "atp"):
        raise ValueError(f"sweep kind must be head, resid or atp, got {kind!r}")
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction must be noising or denoising, got {direction!r}")
    if metric is None or not metric.target:
        raise PromptError("a sweep needs a metric with a target token")
    started = time.perf_counter()
    base_prompt, source_prompt = (clean, corrupt) if direction == "noising" else (corrupt, clean)
    with engine.guard(), torch.no_grad():
        base_ids, _ = engine._prompt_ids(base_prompt)
        source_ids, _ = engine._prompt_ids(source_prompt)
        n_pos = base_ids.shape[1]
        if source_ids.shape[1] != n_pos:
            raise PromptError(
                f"clean and corrupted prompts must have the same number of tokens for a sweep "
                f"({base_ids.shape[1]} vs {source_ids.shape[1]})")
        info = engine.metric_info(metric, n_pos)
        readout = info.position

        def metric_of(final: torch.Tensor) -> torch.Tensor:  # [batch, pos, d] -> [batch]
            return engine._metric_of_resid(final[:, readout], info)

        source = engine._source_acts(source_ids)
        source_metric = float(metric_of(source.resid_post[-1])[0])
        if kind == "atp":
            atp_values, base_metric = _attribution_patching(engine, base_ids, source, metric_of)
        else:
            base = engine._clean(base_ids, should_stop=should_stop)
            base_metric = float(metric_of(base.final)[0])
        a = engine.adapter
        layer_labels = [f"L{layer}" for layer in range(a.n_layers)]
        if kind == "resid":
            col_labels = [f"{p}:{engine.decode_token(t)}" for p, t in enumerate(base_ids[0].tolist())]
            values = np.full((a.n_layers, n_pos), np.nan, dtype=np.float32)
        else:
            col_labels = [f"H{h}" for h in range(a.n_heads)]
            values = np.full((a.n_layers, a.n_heads), np.nan, dtype=np.float32)

        def result(complete: bool) -> SweepResult:
            return SweepResult(kind=kind, values=values.copy(), base_metric=base_metric,
                               source_metric=source_metric, row_labels=layer_labels,
                               col_labels=col_labels, complete=complete,
                               seconds=time.perf_counter() - started)

        if kind == "atp":
            values[:] = atp_values
            out = result(True)
            if on_progress is not None:
                on_progress(out)
            return out

        n_heads, d_head = a.n_heads, a.d_head
        # Positions before the first token where the prompts differ (and before the readout) hold
        # the same activations in both runs, so every variant shares them: compute only the suffix,
        # attending to the base run's cached keys and values for the prefix.
        differs = (base_ids[0] != source_ids[0]).nonzero()
        prefix = min(int(differs[0]) if len(differs) else n_pos, readout)
        calls, prefix_kv = _suffix_calls(engine, base, prefix)
        suffix = n_pos - prefix
        for layer in range(a.n_layers):
            if should_stop is not None and should_stop():
                raise Cancelled("sweep stopped")
            start_hidden = base.calls[layer].hidden[:, prefix:]  # [1, suffix, d_model]
            if kind == "head":
                rows = torch.arange(n_heads, device=start_hidden.device)
                src_z = source.z[layer][0, prefix:].view(suffix, n_heads, d_head)  # [suffix, head, d_head]
                hidden = start_hidden.expand(n_heads, -1, -1).contiguous()  # [head, suffix, d_model]

                def patch_each_head(module, args, kwargs, rows=rows, src_z=src_z):
                    x = args[0]  # [row, suffix, head*d_head]
                    z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [row, suffix, head, d_head]
                    z[rows, :, rows] = src_z[:, rows].transpose(0, 1)  # row r patches head r
                    return (z.view(x.shape), *args[1:]), kwargs

                hooks = [Hook("pre", a.o_proj(layer), patch_each_head)]
            else:
                # rows patch positions prefix..n_pos-1; earlier positions are identical (effect 0)
                rows = torch.arange(suffix, device=start_hidden.device)
                hidden = start_hidden.expand(suffix, -1, -1).clone()  # [variant, suffix, d_model]
                hidden[rows, rows] = source.resid_pre[layer][0, prefix:]
                values[layer, :prefix] = 0.0
                hooks = []
            hooks += [Hook("attn", a.layer_module(index, "attn"), control=AttentionControl(prefix_kv=kv))
                      for index, kv in prefix_kv.items() if index >= layer]
            final = engine._run_layers(calls, layer, hidden, hooks, should_stop)  # [row, suffix, d]
            effect = engine._metric_of_resid(final[:, readout - prefix], info) - base_metric
            if kind == "head":
                values[layer] = effect.float().cpu().numpy()
            else:
                values[layer, prefix:] = effect.float().cpu().numpy()
            if on_progress is not None:
                on_progress(result(False))
        return result(True)


def _suffix_calls(engine: Engine, base, prefix: int):
    """Layer calls cut to positions >= prefix, and each layer's keys/values for the prefix."""
    if prefix == 0:
        return base.calls, {}
    n_pos = base.ids.shape[1]
    a = engine.adapter
    controls = {layer: AttentionControl(record_kv=True) for layer in range(a.n_layers)}
    hooks = [Hook("attn", a.layer_module(layer, "attn"), control=control) for layer, control in controls.items()]
    engine._run_layers(base.calls, 0, base.calls[0].hidden, hooks, None)
    prefix_kv = {layer: (c.kv[0][:, :, :prefix], c.kv[1][:, :, :prefix]) for layer, c in controls.items()}

    def cut(value):
        if isinstance(value, torch.Tensor):
            if value.dim() == 4 and value.shape[-2] == n_pos and value.shape[-1] == n_pos:
                return value[..., prefix:, :]  # attention mask [batch, 1, query, key]: keep every key
            if value.dim() >= 2 and value.shape[1] == n_pos:
                return value[:, prefix:]  # position ids / rotary tables [batch, pos, ...]
            if value.dim() == 1 and value.shape[0] == n_pos:
                return value[prefix:]  # cache_position
            return value
        if isinstance(value, tuple):
            return tuple(cut(v) for v in value)
        return value

    calls = [LayerCall((call.hidden[:, prefix:], *[cut(v) for v in call.args[1:]]) if call.args else (),
                       {k: cut(v) for k, v in call.kwargs.items()}) for call in base.calls]
    return calls, prefix_kv


def _attribution_patching(engine: Engine, base_ids: torch.Tensor, source, metric_of) -> tuple[np.ndarray, float]:
    """AtP: (z_source - z_base) . d metric / d z, summed over positions and each head's dimensions.

    One forward with grad (from the cached clean pass when there is one) and one backward to the
    head outputs only: weights never need gradients. Returns the [layer, head] estimates and the
    base metric."""
    a = engine.adapter
    leaves: dict[int, torch.Tensor] = {}

    def make_leaf(layer: int):
        def hook(module, args, kwargs):
            z = args[0].detach().requires_grad_(True)  # [1, pos, head*d_head]
            leaves[layer] = z
            return (z, *args[1:]), kwargs

        return hook

    hooks = [Hook("pre", a.o_proj(layer), make_leaf(layer)) for layer in range(a.n_layers)]
    with torch.enable_grad():
        cached = engine._cached_clean(base_ids)
        if cached is not None:
            final = engine._run_layers(cached.calls, 0, cached.calls[0].hidden, hooks, None)
        else:
            final = engine._clean_forward(base_ids, extra_hooks=hooks)[1]
        value = metric_of(final).sum()
        grads = torch.autograd.grad(value, [leaves[layer] for layer in range(a.n_layers)])
    out = np.zeros((a.n_layers, a.n_heads), dtype=np.float32)
    for layer, grad in enumerate(grads):
        delta = (source.z[layer] - leaves[layer].detach()) * grad  # [1, pos, head*d_head]
        out[layer] = delta.view(-1, a.n_heads, a.d_head).sum(dim=(0, 2)).float().cpu().numpy()
    return out, float(value.detach())


def generate(engine: Engine, prompt: str, interventions: Iterable[Intervention] = (),
             max_new_tokens: int = 20, temperature: float = 0.0, seed: int = 0,
             corrupted: str | None = None,
             on_token: Callable[[GeneratedToken], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[GeneratedToken]:
    """Greedy (temperature 0) or seeded sampling with the interventions active at every step.

    Each step re-runs the whole sequence, so interventions see every position exactly as in `run`;
    patches and resample ablations apply to the prompt's positions.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    active = [iv for iv in interventions if iv.enabled]
    generator = torch.Generator().manual_seed(int(seed))
    eos = engine.tokenizer.eos_token_id
    if eos is None:
        eos = getattr(engine.model.generation_config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    out: list[GeneratedToken] = []
    with engine.guard(), torch.no_grad():
        ids, _ = engine._prompt_ids(prompt)
        edits = engine._edits(active, ids, corrupted)
        hooks = edits.hooks + engine._capture_hooks(CaptureSpec(readout=0), Captures(), 0, edits.knockouts)
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                raise Cancelled("generation stopped")
            if ids.shape[1] >= engine.adapter.max_context:
                break
            final = engine._forward(ids, hooks)
            logits = engine._logits(final[:, -1])[0]  # [vocab]
            probs = torch.softmax(logits, dim=-1)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                scaled = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(scaled, 1, generator=generator))
            item = GeneratedToken(token, engine.decode_token(token), float(probs[token]))
            out.append(item)
            if on_token is not None:
                on_token(item)
            if token in eos_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return out

