"""The CPU kernel for suffix passes (queries of a key / value group stacked) equals sdpa."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mechscope.engine.attention import _grouped


class _Module:
    is_causal = True

    def __init__(self, groups: int) -> None:
        self.num_key_value_groups = groups


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (9, 3), (8, 1)])
@pytest.mark.parametrize("mask_kind", ["float", "bool"])
def test_grouped_attention_equals_sdpa(heads, kv_heads, mask_kind):
    torch.manual_seed(0)
    batch, n_query, n_key, d_head = 5, 3, 7, 16
    query = torch.randn(batch, n_query, heads, d_head).transpose(1, 2)  # a transposed view, as the models give it
    key, value = torch.randn(batch, kv_heads, n_key, d_head), torch.randn(batch, kv_heads, n_key, d_head)
    allowed = torch.rand(batch, 1, n_query, n_key) > 0.3
    allowed[..., 0] = True  # every query sees at least one key
    mask = {"float": torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min),
            "bool": allowed}[mask_kind]
    expected, _ = sdpa_attention_forward(_Module(heads // kv_heads), query, key, value, mask, scaling=0.3)
    got, weights = _grouped(query, key, value, mask, 0.3)
    assert weights is None and got.shape == (batch, n_query, heads, d_head)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
