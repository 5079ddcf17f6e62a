"""Random SAEs for tests: every feature fires on some tokens of a tiny model."""

from __future__ import annotations

import torch

from mechscope.engine.features.sae import SparseAutoencoder


def random_sae(site: str, d_in: int = 32, d_sae: int = 64, seed: int = 0, activation: str = "relu",
               k: int = 8) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return SparseAutoencoder(
        site=site, W_enc=W_dec.T.contiguous() * 0.8 + 0.1 * torch.randn(d_in, d_sae, generator=g),
        b_enc=0.05 * torch.randn(d_sae, generator=g), W_dec=W_dec * 0.9,
        b_dec=0.02 * torch.randn(d_in, generator=g), activation=activation,  # type: ignore[arg-type]
        k=k if activation == "topk" else 0,
        threshold=torch.full((d_sae,), 0.05) if activation == "jumprelu" else None)
