"""A sparse autoencoder on one site: its weights and its encode / decode maths (ReLU, TopK, JumpReLU)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from typing import Literal

import torch

from mechscope.engine.errors import MechscopeError
from mechscope.engine.interventions import parse_feature_site

Activation = Literal["relu", "topk", "jumprelu"]
ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "jumprelu")


class FeatureError(MechscopeError):
    """An SAE that cannot be read or used (bad file, wrong shape for the model, unknown name)."""


@dataclass(frozen=True)
class SparseAutoencoder:
    """acts = act(((x - b_dec if subtract_b_dec) @ W_enc + b_enc)); x_hat = acts @ W_dec + b_dec.

    relu: max(pre, 0). topk: the k largest pre-activations, then ReLU (SAELens and sparsify agree).
    jumprelu: pre where pre > threshold, else 0 (Gemma Scope, SAELens "jumprelu").
    Weights are float32 tensors on one device; the site value is cast to float32 to encode.
    """

    site: str
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor  # [d_in]
    activation: Activation = "relu"
    k: int = 0
    threshold: torch.Tensor | None = None  # [d_sae], jumprelu only
    subtract_b_dec: bool = True
    source: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        parse_feature_site(self.site)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        d_in, d_sae = self.W_enc.shape
        if (self.W_dec.shape != (d_sae, d_in) or self.b_enc.shape != (d_sae,) or self.b_dec.shape != (d_in,)
                or (self.threshold is not None and self.threshold.shape != (d_sae,))):
            raise ValueError("SAE weight shapes disagree: W_enc [d_in, d_sae], W_dec [d_sae, d_in], "
                             "b_enc [d_sae], b_dec [d_in], threshold [d_sae]")
        if self.activation == "topk" and not 0 < self.k <= d_sae:
            raise ValueError(f"topk needs 0 < k <= d_sae ({d_sae}), got k={self.k}")
        if self.activation == "jumprelu" and self.threshold is None:
            raise ValueError("jumprelu needs a threshold")

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def layer(self) -> int:
        return parse_feature_site(self.site)[0]

    @property
    def site_kind(self) -> str:
        return parse_feature_site(self.site)[1]

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def to(self, device: torch.device | str) -> SparseAutoencoder:
        """The same SAE with its weights on `device` (itself when already there)."""
        device = torch.device(device)
        if self.W_enc.device == device:
            return self
        threshold = None if self.threshold is None else self.threshold.to(device)
        return replace(self, W_enc=self.W_enc.to(device), b_enc=self.b_enc.to(device),
                       W_dec=self.W_dec.to(device), b_dec=self.b_dec.to(device), threshold=threshold)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> [..., d_sae] before the activation function."""
        x = x.to(self.W_enc.device, torch.float32)
        if self.subtract_b_dec:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., d_sae] -> feature activations [..., d_sae] (dense)."""
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            assert self.threshold is not None  # __post_init__ requires it
            return pre * (pre > self.threshold)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Site values [..., d_in] -> feature activations [..., d_sae] (float32)."""
        return self.activate(self.pre_activations(x))

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the maths (activation, k, and every weight as little-endian float32): two SAEs
        with one digest encode and decode alike, wherever their files came from."""
        sha = hashlib.sha256(f"{self.activation}:{self.k}:{self.subtract_b_dec}".encode())
        for tensor in (self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold):
            if tensor is not None:
                sha.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
        return sha.hexdigest()

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] -> reconstruction [..., d_in] (float32)."""
        return acts.to(self.W_dec.device, torch.float32) @ self.W_dec + self.b_dec
