"""FrozenNorm: the linearised final norm that direct logit attribution distributes over components."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from mechscope.engine.norms import FrozenNorm

D = 16


def _norms() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    layer_norm = torch.nn.LayerNorm(D)
    rms, gemma = LlamaRMSNorm(D), GemmaRMSNorm(D)
    with torch.no_grad():
        for module in (layer_norm, rms, gemma):
            module.weight.normal_(0.5, 0.3)
        layer_norm.bias.normal_(0, 0.3)
    return {"layer_norm": layer_norm, "rms": rms, "gemma_rms": gemma}


@pytest.mark.parametrize("kind", ["layer_norm", "rms", "gemma_rms"])
def test_frozen_norm_equals_the_module_and_splits_over_parts(kind):
    module = _norms()[kind]
    parts = torch.randn(5, D)  # components that add up to the residual
    x = parts.sum(0)
    frozen = FrozenNorm(module, x)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), module(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frozen.linear(parts).sum(0) + frozen.bias_vector(), module(x).detach(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["layer_norm", "rms", "gemma_rms"])
def test_adjoint_reads_a_direction_like_the_linear_map(kind):
    module = _norms()[kind]
    frozen = FrozenNorm(module, torch.randn(D))
    parts, direction = torch.randn(7, D), torch.randn(D)
    torch.testing.assert_close(parts @ frozen.adjoint(direction), frozen.linear(parts) @ direction,
                               atol=1e-5, rtol=1e-5)
