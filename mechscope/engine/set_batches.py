"""Prompt sets as padded batches: encoding, one batched forward, layers re-run from recorded calls,
the per-row metric and each layer's activations over a batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.layer_replay import LayerCall, last_mlp_at_readout, replay
from mechscope.engine.metric import SET_METRIC_KINDS, SetMetricKind
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.resident import ResidentModel
from mechscope.engine.sites import Site, SiteKind
from mechscope.engine.unembedding import logits_of, softcapped

Padding = Literal["left", "right"]
MAX_BATCH_ROWS = 256  # sequences per forward in a sweep (rows x heads are chunked to this)


@dataclass
class Batch:
    """Padded token ids of a list of prompts.

    ids/mask/position_ids: [row, pos]; position ids count real tokens only, so a row's positions
    (and rotary angles) are the same as when it runs alone. offsets[r]: padded index of row r's
    first token; readout[r]: padded index of its last token.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]
    offsets: list[int]
    readout: torch.Tensor

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    def positions_mask(self, positions: tuple[int, ...] | None) -> torch.Tensor:
        """[row, pos] True where an intervention at prompt `positions` (None: all) applies."""
        out = torch.zeros_like(self.mask, dtype=torch.bool)
        for r, (length, offset) in enumerate(zip(self.lengths, self.offsets)):
            if positions is None:
                out[r, offset:offset + length] = True
                continue
            for p in positions:
                if not -length <= p < length:
                    raise InterventionError(f"position {p} is outside row {r + 1} ({length} tokens)")
                out[r, offset + p % length] = True
        return out


def encode(engine: ResidentModel, texts: list[str], padding: Padding = "left") -> Batch:
    """Tokenize `texts` as `engine.tokenize` does and pad them to one [row, pos] batch."""
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be left or right, got {padding!r}")
    tokenized = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"row {i + 1}: the prompt is empty")
        row_ids = engine.tokenize(text)[0]
        if not row_ids or len(row_ids) > engine.adapter.max_context:
            raise PromptError(f"row {i + 1}: {len(row_ids)} tokens (the model takes 1..{engine.adapter.max_context})")
        tokenized.append(row_ids)
    width = max(len(row) for row in tokenized)
    pad = engine.tokenizer.pad_token_id
    if pad is None:
        pad = engine.tokenizer.eos_token_id or 0
    ids = torch.full((len(texts), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    offsets = []
    for r, row in enumerate(tokenized):
        offset = width - len(row) if padding == "left" else 0
        ids[r, offset:offset + len(row)] = torch.tensor(row)
        mask[r, offset:offset + len(row)] = 1
        offsets.append(offset)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    lengths = [len(row) for row in tokenized]
    readout = torch.tensor([o + n - 1 for o, n in zip(offsets, lengths)])
    device = engine.device
    return Batch(ids.to(device), mask.to(device), position_ids.to(device), lengths, offsets, readout.to(device))


@dataclass
class Pass:
    """What one batched forward kept: the normed final residual at each readout ([row, d_model]) and,
    when asked, every layer's call."""

    normed: torch.Tensor
    calls: list[LayerCall] = field(default_factory=list)


def forward(engine: ResidentModel, batch: Batch, hooks: list[Hook], record_calls: bool = False) -> Pass:
    """One forward of the batch with `hooks`; returns the normed readout rows (and layer calls)."""
    a = engine.adapter
    kept: dict[str, torch.Tensor] = {}
    calls: list[LayerCall | None] = [None] * a.n_layers

    def keep_final(module, args, output):
        kept["final"] = output[0] if isinstance(output, tuple) else output

    def record(layer: int):
        def hook(module, args, kwargs):
            calls[layer] = LayerCall.of(args, kwargs)
        return hook

    extra = [Hook("fwd", a.final_norm, keep_final)]
    if record_calls:
        extra += [Hook("pre", a.layers[layer], record(layer)) for layer in range(a.n_layers)]
    with installed(hooks + extra):
        engine.model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.position_ids,
                     use_cache=False, logits_to_keep=1)
    rows = torch.arange(batch.rows, device=batch.readout.device)
    normed = kept["final"][rows, batch.readout]  # [row, d_model]
    return Pass(post_final(engine, normed), [c for c in calls if c is not None])


def post_final(engine: ResidentModel, normed: torch.Tensor) -> torch.Tensor:
    """Normed rows through what the model applies after its final norm (none for most families)."""
    for module in engine.adapter.post_final:
        normed = module(normed)
    return normed


def layer_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def run_layers(engine: ResidentModel, calls: list[LayerCall], start: int, hidden: torch.Tensor,
               readout: torch.Tensor, hooks: list[Hook], should_stop: ShouldStop | None = None,
               prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Layers start.. on `hidden` ([n, pos, d]) with `calls` already cut to its rows (and positions);
    returns the normed rows [n, d_model] at `readout` ([n] positions of `hidden`). `prefix_kv`: per
    layer, keys and values [n, kv_head, prefix, d_head] of the positions before `hidden`'s."""
    a = engine.adapter
    controls = [Hook("attn", a.layer_module(layer, "attn"), control=AttentionControl(prefix_kv=kv))
                for layer, kv in (prefix_kv or {}).items() if layer >= start]
    narrow = last_mlp_at_readout(a, readout, hooks)
    hidden = replay(a.layers, calls, start, hidden, narrow + hooks + controls, should_stop)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), readout]  # [n, d_model]
    return post_final(engine, a.final_norm(picked))


def first_token(engine: ResidentModel, text: str, what: str) -> int:
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise PromptError(f"{what} {text!r} has no tokens")
    return int(ids[0])


@dataclass(frozen=True)
class SetMetric:
    """Per-row target/foil token ids and the metric kind, resolved once per set."""

    kind: SetMetricKind
    target: torch.Tensor  # [row]
    foil: torch.Tensor  # [row]

    @staticmethod
    def of(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff") -> SetMetric:
        if kind not in SET_METRIC_KINDS:
            raise ValueError(f"metric kind must be {', '.join(SET_METRIC_KINDS)}, got {kind!r}")
        targets, foils = [], []
        for i, row in enumerate(pset.rows):
            if not row.target:
                raise PromptError(f"row {i + 1}: the metric needs a target token")
            targets.append(first_token(engine, row.target, f"row {i + 1}: target"))
            if kind == "logit_diff":
                if not row.foil:
                    raise PromptError(f"row {i + 1}: logit_diff needs a foil token")
                foils.append(first_token(engine, row.foil, f"row {i + 1}: foil"))
            else:
                foils.append(targets[-1])
        return SetMetric(kind, torch.tensor(targets, device=engine.device), torch.tensor(foils, device=engine.device))

    def rows(self, index: torch.Tensor) -> SetMetric:
        return SetMetric(self.kind, self.target[index], self.foil[index])

    def value(self, engine: ResidentModel, normed: torch.Tensor) -> torch.Tensor:
        """Metric of normed readout rows [row, d_model] -> [row] (a logit difference reads only the
        target and foil rows of the unembedding)."""
        if self.kind == "logit_diff":
            unembed = engine.adapter.unembed
            unembed_weight = cast(torch.Tensor, unembed.weight)
            weight_t = unembed_weight[self.target]  # [row, d_model]
            weight_f = unembed_weight[self.foil]
            logits_t = (normed * weight_t).sum(-1).float()
            logits_f = (normed * weight_f).sum(-1).float()
            bias = getattr(unembed, "bias", None)
            if bias is not None:
                logits_t = logits_t + bias[self.target]
                logits_f = logits_f + bias[self.foil]
            cap = engine.adapter.final_softcap
            return softcapped(logits_t, cap) - softcapped(logits_f, cap)
        logits = logits_of(engine.adapter, normed)  # [row, vocab]
        log_p = logits.gather(1, self.target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        return log_p.exp() if self.kind == "prob" else -log_p


def head_outputs(engine: ResidentModel, batch: Batch) -> list[torch.Tensor]:
    """Every layer's per-head attention output z (the output projection's input), [row, pos, head*d_head]."""
    a = engine.adapter
    z: list[torch.Tensor | None] = [None] * a.n_layers

    def keep(layer: int):
        def hook(module, args, kwargs):
            z[layer] = args[0].detach()
        return hook

    forward(engine, batch, [Hook("pre", a.o_proj(layer), keep(layer)) for layer in range(a.n_layers)])
    return z  # type: ignore[return-value]


def site_outputs(engine: ResidentModel, batch: Batch, site: SiteKind,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Every layer's activation at `site` ([row, pos, ...], heads split), or `reduce` of it."""
    a = engine.adapter
    out: list[torch.Tensor | None] = [None] * a.n_layers

    def keep(layer: int):
        def observe(x: torch.Tensor) -> None:
            out[layer] = x.detach() if reduce is None else reduce(x)
        return observe

    forward(engine, batch, [hook for layer in range(a.n_layers) for hook in Site(site, layer).observe(a, keep(layer))])
    return out  # type: ignore[return-value]
