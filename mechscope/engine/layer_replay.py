"""Re-running decoder layers from their recorded calls: one layer call, its rows and positions, the
replay loop every pass goes through, the last layer's MLP at the readout alone, and key / value
recorders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechscope.engine.adapters import Adapter
from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import Cancelled
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.placement import map_tensors
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.sites import first


@dataclass
class LayerCall:
    """One decoder layer's call, replayable on new hidden states: its input `hidden`
    [batch, pos, d_model] and the other positional and keyword arguments the model passed it."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict[str, Any]

    @staticmethod
    def of(args: tuple, kwargs: dict[str, Any]) -> LayerCall:
        """The call a forward pre-hook saw (the hidden state positional or as `hidden_states`)."""
        if args:
            return LayerCall(args[0], tuple(args[1:]), dict(kwargs))
        rest = dict(kwargs)
        return LayerCall(rest.pop("hidden_states"), (), rest)

    def call(self, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return first(layer(hidden, *self.args, **self.kwargs))

    def rows(self, index: torch.Tensor) -> LayerCall:
        """The call for batch rows `index` (each argument whose first dimension is the batch)."""
        rows = self.hidden.shape[0]
        return LayerCall(self.hidden.index_select(0, index.to(self.hidden.device)),
                         take_rows(self.args, index, rows), take_rows(self.kwargs, index, rows))

    def suffix(self, start: int) -> LayerCall:
        """The call for positions start.. only (attention masks keep every key: the keys and values
        of earlier positions come from elsewhere, see `AttentionControl.prefix_kv`)."""
        n_pos = self.hidden.shape[1]
        return LayerCall(self.hidden[:, start:], _cut(self.args, start, n_pos), _cut(self.kwargs, start, n_pos))


def take_rows(value: Any, index: torch.Tensor, rows: int) -> Any:
    """Select batch rows `index` of every tensor in a layer call's arguments whose first dim is the batch."""
    def take(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() >= 2 and tensor.shape[0] == rows:
            return tensor.index_select(0, index.to(tensor.device))
        return tensor

    return map_tensors(take, value)


def _cut(value: Any, start: int, n_pos: int) -> Any:
    """A layer call's argument cut to query positions start.. (see `LayerCall.suffix`)."""
    def cut(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4 and tensor.shape[-2] == n_pos and tensor.shape[-1] == n_pos:
            return tensor[..., start:, :]  # attention mask [batch, 1, query, key]: keep every key
        if tensor.dim() >= 2 and tensor.shape[1] == n_pos:
            return tensor[:, start:]  # position ids / rotary tables [batch, pos, ...]
        if tensor.dim() == 1 and tensor.shape[0] == n_pos:
            return tensor[start:]  # cache_position
        return tensor

    return map_tensors(cut, value)


def replay(layers: torch.nn.ModuleList, calls: Sequence[LayerCall], start: int, hidden: torch.Tensor,
           hooks: list[Hook], should_stop: ShouldStop | None = None, stop: int | None = None) -> torch.Tensor:
    """Re-run decoder layers start..stop-1 (stop None: to the last) from `hidden` with the recorded
    per-layer arguments (the one layer-replay loop: single prompts, sweeps and prompt sets all go
    through it)."""
    with installed(hooks):
        for index in range(start, len(layers) if stop is None else stop):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            hidden = calls[index].call(layers[index], hidden)
    return hidden


def last_mlp_at_readout(adapter: Adapter, readout: int | torch.Tensor, edit_hooks: Sequence[Hook]) -> list[Hook]:
    """Hooks that run the last layer's MLP at the readout alone (`readout`: one position, or one per
    batch row [batch]), for a pass read only there: that MLP is most of the last layer's work, and
    nothing after it reads the other positions. The last layer's output is then right at the
    readout only (the MLP adds zero elsewhere). None where an edit acts inside that MLP, on what it
    adds or on the layer's output (edits before the MLP still see every position), or where the
    layer calls its MLP's parts itself."""
    if adapter.family.mlp is None:
        return []
    last = adapter.n_layers - 1
    mlp = adapter.layer_module(last, "mlp")
    after = {id(module) for module in mlp.modules()} | {id(adapter.layer_module(last, "mlp_out"))}
    layer = adapter.layers[last]
    if any(id(hook.module) in after or (hook.module is layer and hook.where == "fwd") for hook in edit_hooks):
        return []
    n_pos: list[int] = []

    def at(tensor: torch.Tensor) -> tuple:
        """The index of each batch row's readout in `tensor` [batch, pos, ...]."""
        if isinstance(readout, int):
            return slice(None), readout
        return torch.arange(tensor.shape[0], device=tensor.device), readout.to(tensor.device)

    def keep_readout(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        hidden = args[0]  # [batch, pos, d_model]
        n_pos[:] = [hidden.shape[1]]
        return (hidden[at(hidden)][:, None], *args[1:]), kwargs  # [batch, 1, d_model]

    def widen(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        full = output.new_zeros(output.shape[0], n_pos[0], output.shape[-1])  # [batch, pos, d_model]
        full[at(full)] = output[:, 0]
        return full

    return [Hook("pre", mlp, keep_readout), Hook("fwd", mlp, widen)]


def kv_recorders(a: Adapter) -> tuple[list[AttentionControl], list[Hook]]:
    """Controls keeping each layer's keys and values on one pass, and the hooks attaching them."""
    controls = [AttentionControl(record_kv=True) for _ in range(a.n_layers)]
    return controls, [Hook("attn", a.layer_module(layer, "attn"), control=c) for layer, c in enumerate(controls)]


def recorded_kv(controls: list[AttentionControl]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values [batch, kv_head, pos, d_head] after a pass under `kv_recorders`."""
    recorded = []
    for control in controls:
        assert control.kv is not None  # record_kv controls hold the keys and values after the pass
        recorded.append(control.kv)
    return recorded
