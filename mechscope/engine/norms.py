"""A norm layer linearised around one input: its scale frozen, so it distributes over a sum of parts."""

from __future__ import annotations

import torch
from torch import nn

from mechscope.engine.placement import loaded


class FrozenNorm:
    """`norm(x)` written as `linear(x) + bias_vector()` with the scale computed from `x` and frozen.

    RMSNorm: linear(c) = c * gain / rms(x). LayerNorm: linear(c) = (c - mean(c)) * weight / std(x),
    and the norm's bias is the separate constant term. Gemma's RMSNorm multiplies by (1 + weight).
    Applied to each component of x, the linear parts add up to `norm(x) - bias`.
    """

    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        self.module = module
        x = x.float()
        self.is_layer_norm = isinstance(module, nn.LayerNorm)
        weight = loaded(module, "weight")
        eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
        if self.is_layer_norm:
            self.gain = weight.float() if weight is not None else torch.ones_like(x)
            bias = loaded(module, "bias")
            self.bias = bias.float() if bias is not None else torch.zeros_like(x)
            centred = x - x.mean(-1, keepdim=True)
            self.scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        else:
            gemma_style = "Gemma" in type(module).__name__
            if weight is None:
                self.gain = torch.ones_like(x)
            else:
                self.gain = 1.0 + weight.float() if gemma_style else weight.float()
            self.bias = torch.zeros_like(x)
            self.scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def linear(self, c: torch.Tensor) -> torch.Tensor:
        """Frozen-scale image of component(s) c [..., d_model]."""
        c = c.float()
        if self.is_layer_norm:
            c = c - c.mean(-1, keepdim=True)
        return c * self.gain / self.scale

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        """The vector w with c @ w == linear(c) @ u for every component c: reading a direction `u`
        after the norm as a direction before it (centring and the diagonal gain are symmetric)."""
        w = u.float() * self.gain / self.scale
        if self.is_layer_norm:
            w = w - w.mean(-1, keepdim=True)
        return w

    def bias_vector(self) -> torch.Tensor:
        return self.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The full (frozen) map, equal to the module on the input it was frozen at."""
        return self.linear(x) + self.bias
