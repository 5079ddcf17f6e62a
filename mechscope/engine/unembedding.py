"""The unembedding of normed residual rows (soft-capped where the model is), with a single row on
the CPU spread over torch's threads."""

from __future__ import annotations

import torch
from torch import nn

from mechscope.engine.adapters import Adapter

# A single row's unembedding is a matrix-vector product, which the CPU BLAS runs on one thread at
# about a third of the memory bandwidth; as a batch of this many slices of the vocabulary torch runs
# it on all its threads (the demo's live readout: 10.8 -> 5.0 ms, the same values). A biased
# unembedding keeps the module's own call: adding the bias apart would round differently.
SLICES = 4
# Slices of a multiple of this many rows round exactly as the whole product does (the BLAS treats
# a ragged tail of rows apart).
ALIGN = 64
MIN_ELEMENTS = 1 << 22  # below this the product is quick anyway (and small ones may round differently)


def unembed(module: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """`module(normed)`: normed rows [..., d_model] -> logits [..., vocab] in the module's dtype."""
    weight = module.weight if type(module) is nn.Linear and module.bias is None else None
    if (weight is None or normed.device.type != "cpu" or weight.device.type != "cpu"
            or normed.dtype != weight.dtype or normed.shape[:-1].numel() != 1
            or torch.get_num_threads() < 2 or weight.numel() < MIN_ELEMENTS
            or hasattr(module, "_hf_hook") or module._forward_hooks or module._forward_pre_hooks):
        return module(normed)
    vocab, d_model = weight.shape
    row = normed.reshape(1, d_model)
    part = vocab // (SLICES * ALIGN) * ALIGN
    sliced = part * SLICES
    slices = weight[:sliced].view(SLICES, part, d_model).transpose(1, 2)  # [slice, d_model, part]
    parts = [torch.matmul(row, slices).reshape(sliced)]  # [slice, 1, part] -> [sliced]
    if sliced < vocab:
        parts.append(nn.functional.linear(row, weight[sliced:]).reshape(vocab - sliced))
    logits = torch.cat(parts) if len(parts) > 1 else parts[0]  # [vocab]
    return logits.reshape(*normed.shape[:-1], vocab)


def softcapped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Logits through the model's final soft cap (Gemma 2's cap * tanh(logits / cap)); as they are without one."""
    return torch.tanh(logits / cap) * cap if cap else logits


def logits_of(adapter: Adapter, normed: torch.Tensor) -> torch.Tensor:
    """Normed residual rows [..., d_model] -> float32 logits [..., vocab]."""
    return softcapped(unembed(adapter.unembed, normed).float(), adapter.final_softcap)
