"""Where an activation lives in a decoder layer, and hooks that show it as a plain [batch, pos, ...] tensor.

A site hides how a family's module hands the activation over: forward pre-hook or forward hook,
positional or keyword argument, a tuple output, OPT's MLP flattening tokens to [batch*pos, d]. Edit
and observe functions only ever see `[batch, pos, ...]` tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mechscope.engine.adapters import Adapter
from mechscope.engine.hooks import Hook

SiteKind = Literal["heads", "attn", "mlp", "resid_pre", "resid_post", "neurons"]
Edit = Callable[[torch.Tensor], torch.Tensor]  # a private copy [batch, pos, ...] -> the new value
Observe = Callable[[torch.Tensor], None]  # [batch, pos, ...], not to be modified


def first(output: Any) -> torch.Tensor:
    """The tensor part of a module output (attention modules return (out, weights))."""
    return output[0] if isinstance(output, tuple) else output


def replace_output(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


@dataclass(frozen=True)
class Site:
    """One activation of one layer.

    heads: attention head outputs at the output projection's input, seen as [batch, pos, head, d_head].
    attn / mlp: what attention / the MLP adds to the residual stream, [batch, pos, d_model].
    resid_pre / resid_post: the residual stream entering / leaving the layer, [batch, pos, d_model].
    neurons: MLP hidden activations at the down projection's input, [batch, pos, d_mlp].
    """

    kind: SiteKind
    layer: int

    def module(self, adapter: Adapter) -> nn.Module:
        if self.kind == "heads":
            return adapter.o_proj(self.layer)
        if self.kind == "attn":
            return adapter.layer_module(self.layer, "attn_out")
        if self.kind == "mlp":
            return adapter.layer_module(self.layer, "mlp_out")
        if self.kind == "neurons":
            return adapter.layer_module(self.layer, "mlp_down")
        return adapter.layers[self.layer]

    @property
    def reads_input(self) -> bool:
        """True when the activation is the module's input (a pre-hook), False for its output."""
        return self.kind in ("heads", "resid_pre", "neurons")

    def edit(self, adapter: Adapter, fn: Edit) -> list[Hook]:
        """Hooks replacing the activation by `fn(copy)` on every pass they are installed for."""
        return self._hooks(adapter, fn, edits=True)

    def observe(self, adapter: Adapter, fn: Observe) -> list[Hook]:
        """Hooks handing the activation to `fn` (registered after edits, they see edited values)."""
        return self._hooks(adapter, fn, edits=False)

    def _hooks(self, adapter: Adapter, fn: Callable, edits: bool) -> list[Hook]:
        hooks: list[Hook] = []
        # Modules inside a layer may see flattened tokens [batch*pos, d] (OPT's MLP): the layer's own
        # input, read by a pre-hook on the same pass, says how to unflatten them.
        shape: list[torch.Size] = []
        if self.kind not in ("resid_pre", "resid_post"):
            hooks.append(Hook("pre", adapter.layers[self.layer], _record_shape(shape)))
        view = _plain_view(shape, adapter.n_heads if self.kind == "heads" else 0, adapter.d_head)
        apply = _editing(fn, view) if edits else _observing(fn, view)
        if self.reads_input:
            hooks.append(Hook("pre", self.module(adapter), _on_input(apply)))
        else:
            hooks.append(Hook("fwd", self.module(adapter), _on_output(apply)))
        return hooks


Apply = Callable[[torch.Tensor], "torch.Tensor | None"]  # module tensor -> its replacement, or None


def _record_shape(shape: list[torch.Size]):
    def hook(module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        shape[:] = [hidden.shape[:2]]  # [batch, pos]

    return hook


def _plain_view(shape: list[torch.Size], n_heads: int, d_head: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's tensor as [batch, pos, ...]: unflattened tokens, heads split when `n_heads`."""
    def view(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [batch*pos, d]
            x = x.view(*shape[0], x.shape[-1])
        if n_heads:
            x = x.view(*x.shape[:-1], n_heads, d_head)  # [batch, pos, head, d_head]
        return x

    return view


def _editing(fn: Edit, view: Callable[[torch.Tensor], torch.Tensor]) -> Apply:
    def apply(x: torch.Tensor) -> torch.Tensor:
        return fn(view(x).clone()).reshape(x.shape)

    return apply


def _observing(fn: Observe, view: Callable[[torch.Tensor], torch.Tensor]) -> Apply:
    def apply(x: torch.Tensor) -> None:
        fn(view(x))

    return apply


def _on_input(apply: Apply):
    def pre(module, args, kwargs):
        new = apply(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return pre


def _on_output(apply: Apply):
    def fwd(module, args, output):
        new = apply(first(output))
        return None if new is None else replace_output(output, new)

    return fwd
