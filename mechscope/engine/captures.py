"""What a pass records at each layer: the capture request, the records, and the hooks that fill them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mechscope.engine.adapters import Adapter
from mechscope.engine.attention import AttentionControl
from mechscope.engine.hooks import Hook
from mechscope.engine.sites import Site, first


@dataclass(frozen=True)
class CaptureSpec:
    """What a pass records at each layer it runs. `readout` is a non-negative position."""

    readout: int
    heads: frozenset[tuple[int, int]] = frozenset()
    sinks: bool = False
    dla: bool = False
    lens: bool = False
    stats: bool = False

    def covers(self, other: CaptureSpec) -> bool:
        return (
            self.readout == other.readout
            and other.heads <= self.heads
            and self.sinks >= other.sinks
            and self.dla >= other.dla
            and self.lens >= other.lens
            and self.stats >= other.stats
        )

    def union(self, other: CaptureSpec) -> CaptureSpec:
        return CaptureSpec(
            readout=other.readout,
            heads=self.heads | other.heads if self.readout == other.readout else other.heads,
            sinks=self.sinks or other.sinks,
            dla=self.dla or other.dla,
            lens=self.lens or other.lens,
            stats=self.stats or other.stats,
        )

    @property
    def empty(self) -> bool:
        return not (self.heads or self.sinks or self.dla or self.lens or self.stats)


@dataclass
class Captures:
    """Per-layer records of one batch-1 pass (tensors stay inside the engine)."""

    z: dict[int, torch.Tensor] = field(default_factory=dict)  # [H*d_head] at readout
    attn_raw: dict[int, torch.Tensor] = field(default_factory=dict)  # [d_model] attention module output
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)  # [d_model] added to the residual
    mlp_out: dict[int, torch.Tensor] = field(default_factory=dict)  # [d_model]
    resid_post: dict[int, torch.Tensor] = field(default_factory=dict)  # [d_model] at readout
    norms: dict[int, torch.Tensor] = field(default_factory=dict)  # [pos]
    top_acts: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    abs_median: dict[int, float] = field(default_factory=dict)
    controls: dict[int, AttentionControl] = field(default_factory=dict)

    def merged_below(self, earlier: Captures, start: int) -> Captures:
        """These captures (layers >= start) completed with `earlier`'s records for layers < start."""
        out = Captures()
        for name in ("z", "attn_raw", "attn_out", "mlp_out", "resid_post", "norms", "top_acts",
                     "abs_median", "controls"):
            merged = {k: v for k, v in getattr(earlier, name).items() if k < start}
            merged.update(getattr(self, name))
            setattr(out, name, merged)
        return out


def capture_hooks(a: Adapter, spec: CaptureSpec, captures: Captures, start: int,
              knockouts: dict[int, list] | None = None) -> list[Hook]:
    """Hooks recording what `spec` asks for at layers >= start (registered after edits, so they see
    them), plus the attention controls that apply `knockouts` (layer -> edges)."""
    hooks: list[Hook] = []
    p = spec.readout
    knockouts = knockouts or {}
    for layer in range(start, a.n_layers):
        heads = tuple(sorted(h for (lay, h) in spec.heads if lay == layer))
        if heads or spec.sinks or layer in knockouts:
            control = AttentionControl(record_heads=heads, sinks=spec.sinks,
                                       knockouts=list(knockouts.get(layer, [])))
            captures.controls[layer] = control
            hooks.append(Hook("attn", a.layer_module(layer, "attn"), control=control))
        if spec.dla:
            hooks += Site("heads", layer).observe(a, _store_row(captures.z, layer, p, flat=True))
            hooks.append(Hook("fwd", a.layer_module(layer, "attn"), _store_raw(captures.attn_raw, layer, p)))
            hooks += Site("attn", layer).observe(a, _store_row(captures.attn_out, layer, p))
            hooks += Site("mlp", layer).observe(a, _store_row(captures.mlp_out, layer, p))
        if spec.lens or spec.stats:
            hooks += Site("resid_post", layer).observe(a, _store_resid(captures, layer, spec))
    return hooks


def _store_row(store: dict, layer: int, pos: int, flat: bool = False):
    def observe(x: torch.Tensor) -> None:  # [batch, pos, ...]
        row = x[0, pos].detach()
        store[layer] = row.reshape(-1) if flat else row

    return observe


def _store_raw(store: dict, layer: int, pos: int):
    """The attention module's own output at `pos` (always [batch, pos, d_model])."""
    def hook(module, args, output):
        store[layer] = first(output)[0, pos].detach()

    return hook


def _store_resid(captures: Captures, layer: int, spec: CaptureSpec):
    def observe(x: torch.Tensor) -> None:
        hidden = x[0].detach()  # [pos, d_model]
        if spec.lens:
            captures.resid_post[layer] = hidden[spec.readout]
        if spec.stats:
            flat = hidden.float()
            captures.norms[layer] = flat.norm(dim=-1)
            values, index = flat.abs().flatten().topk(min(8, flat.numel()))
            captures.top_acts[layer] = (flat.flatten()[index], index)
            captures.abs_median[layer] = float(flat.abs().median())

    return observe
