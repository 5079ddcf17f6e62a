"""A registered attention function: eager where patterns are read or edges knocked out, sdpa elsewhere.

Every supported family hands it the query [batch, head, pos, d_head] and key / value
[batch, kv_head, pos, d_head] after rotary embedding, which is where query / key / value edits act
(`QKVEdit`, installed as a module's `_mechscope_qkv` list by `hooks.installed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTN_IMPLEMENTATION = "mechscope"

# (query, key, value) -> their replacements; given private copies, it may edit them in place.
QKVEdit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class AttentionControl:
    """Per-layer request, attached to an attention module for the duration of one pass.

    record_heads: heads whose full pattern is stored in `patterns[head]` ([batch, query, key]).
    sinks: store mean attention to the first token per head in `sink` ([batch, head]).
    knockouts: (head, query_pos, key_pos, rows) edges masked before the softmax; rows None = all rows.
    record_kv: store this call's keys and values (after rotary embedding) in `kv`.
    prefix_kv: keys and values [1, kv_head, prefix, d_head] of earlier positions, prepended to this
      call's, so a pass can compute only the positions after a shared prefix.
    """

    record_heads: tuple[int, ...] = ()
    sinks: bool = False
    knockouts: list[tuple[int, int, int, list[int] | None]] = field(default_factory=list)
    record_kv: bool = False
    prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    sink: torch.Tensor | None = None
    kv: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def needs_eager(self) -> bool:
        return bool(self.record_heads or self.sinks or self.knockouts)


def _eager(module, query, key, value, attention_mask, scaling, softcap, control):
    # query [batch, head, q, d_head]; key/value [batch, kv_head, k, d_head]
    n_rep = query.shape[1] // key.shape[1]
    key = repeat_kv(key, n_rep)
    value = repeat_kv(value, n_rep)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [batch, head, q, k]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    if control is not None and control.knockouts:
        scores = scores.clone()
        neg = torch.finfo(scores.dtype).min
        for head, q_pos, k_pos, rows in control.knockouts:
            if rows is None:
                scores[:, head, q_pos, k_pos] = neg
            else:
                scores[rows, head, q_pos, k_pos] = neg
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [batch, head, q, k]
    if control is not None:
        for head in control.record_heads:
            control.patterns[head] = weights[:, head].detach()
        if control.sinks:
            if weights.shape[-2] > 1:
                control.sink = weights[:, :, 1:, 0].mean(dim=-1).detach()  # [batch, head]
            else:
                control.sink = torch.zeros(weights.shape[:2], dtype=weights.dtype, device=weights.device)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [batch, q, head, d_head]
    return out, weights


# What the supported families pass besides the mask that sdpa's result does not depend on (a
# sliding window is in the mask): anything else (softcap, position bias, sinks) takes sdpa or eager.
_PLAIN_KWARGS = frozenset({"scaling", "position_ids", "use_cache", "sliding_window", "is_causal",
                           "output_attentions"})


def _grouped(query, key, value, attention_mask: torch.Tensor, scaling):
    """sdpa's result (with an explicit mask) for a suffix pass on the CPU, where sdpa's kernel is slow for many short
    sequences (a quarter of its time for [256 rows, 9 heads, 5 queries, 20 keys] on two cores): the
    queries of the heads that share a key / value head stacked into one matmul, keys not repeated."""
    batch, n_heads, n_query, d_head = query.shape  # key / value [batch, kv_head, k, d_head]
    n_kv = key.shape[1]
    group = n_heads // n_kv
    scale = d_head ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query.reshape(batch, n_kv, group * n_query, d_head), key.transpose(2, 3)) * scale
    mask = attention_mask[:, :, :, : key.shape[-2]]  # [batch | 1, 1, q, k]
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(scores.dtype).min)
    scores = (scores.view(batch, n_kv, group, n_query, -1) + mask[:, :, None]).view(batch, n_kv, group * n_query, -1)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [batch, kv_head, group*q, k]
    out = torch.matmul(weights, value)  # [batch, kv_head, group*q, d_head]
    return out.view(batch, n_heads, n_query, d_head).transpose(1, 2).contiguous(), None


def mechscope_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Dispatch one attention call: sdpa unless this layer is observed, edited or soft-capped."""
    qkv_edits: list[QKVEdit] | None = getattr(module, "_mechscope_qkv", None)
    if qkv_edits:
        query, key, value = query.clone(), key.clone(), value.clone()
        for edit in qkv_edits:
            query, key, value = edit(query, key, value)
    control: AttentionControl | None = getattr(module, "_mechscope_control", None)
    if control is not None:
        if control.record_kv:
            control.kv = (key.detach(), value.detach())
        if control.prefix_kv is not None:
            prefix_key, prefix_value = control.prefix_kv
            rows = key.shape[0]
            key = torch.cat([prefix_key.expand(rows, -1, -1, -1), key], dim=2)
            value = torch.cat([prefix_value.expand(rows, -1, -1, -1), value], dim=2)
    softcap = kwargs.get("softcap")
    if (control is not None and control.prefix_kv is not None and not control.needs_eager
            and query.device.type == "cpu" and attention_mask is not None and set(kwargs) <= _PLAIN_KWARGS
            and not dropout):
        return _grouped(query, key, value, attention_mask, scaling)
    if softcap is None and (control is None or not control.needs_eager):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return _eager(module, query, key, value, attention_mask, scaling, softcap, control)


def register() -> None:
    """Register the function and an always-explicit mask (an sdpa mask may be None, i.e. is_causal)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, mechscope_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
