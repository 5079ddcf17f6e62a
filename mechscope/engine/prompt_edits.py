"""Edits on one prompt on the native engine: sources from its passes, applied as hooks.

`compile_edits` reads the interventions in a `PromptContext` (source activations from the engine's
cached passes, means over its reference prompts) and turns the site edits into hooks
(`native_hooks`), each on a plain [batch, pos, ...] tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import numpy as np
import torch

from mechscope.engine.adapters import Adapter
from mechscope.engine.edits import (
    QKV_SITES,
    RESID_SITES,
    Context,
    Edits,
    HookEdit,
    MeanSite,
    QKVSite,
    SiteEdit,
    SiteOp,
    SourceSite,
    compile_with,
)
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import Intervention
from mechscope.engine.passes import Passes
from mechscope.engine.sites import Site, SiteKind

_SOURCE_FIELDS: dict[str, str] = {"heads": "z", "attn": "attn_out", "mlp": "mlp_out", "resid_pre": "resid_pre",
                                  "resid_post": "resid_post"}


class PromptContext(Context):
    """One prompt on the native engine: sources from its passes, means over the reference prompts."""

    def __init__(self, passes: Passes, n_pos: int, corrupted: str | None, vectors: Mapping[str, np.ndarray],
                 reference_prompts: Sequence[str], dry_run: bool) -> None:
        super().__init__(passes.adapter, passes.dtype, n_pos, corrupted, vectors, dry_run)
        self.passes = passes
        self.reference_prompts = reference_prompts

    def prompt_length(self, prompt: str) -> int:
        return int(self.passes.prompt_ids(prompt)[0].shape[1])

    def source_rows(self, prompt: str, site: SourceSite, layer: int, positions: list[int]) -> torch.Tensor:
        acts = self.passes.source_acts(self.passes.prompt_ids(prompt)[0])
        return getattr(acts, _SOURCE_FIELDS[site])[layer][:, positions]  # [1, n, ...]

    def mean(self, site: MeanSite, layer: int) -> torch.Tensor:
        return getattr(self.passes.reference_means(self.reference_prompts), _SOURCE_FIELDS[site])[layer]

    def input_rows(self, prompt: str, which: QKVSite, layer: int, positions: list[int]) -> torch.Tensor:
        acts = self.passes.source_qkv(self.passes.prompt_ids(prompt)[0])
        return acts.of(which)[layer][:, :, positions]  # [1, head, n, d_head]

    def hook_passes(self) -> Passes:
        return self.passes


def compile_edits(passes: Passes, interventions: Iterable[Intervention], n_pos: int, corrupted: str | None,
                  vectors: Mapping[str, np.ndarray], reference_prompts: Sequence[str],
                  dry_run: bool = False) -> Edits:
    """The native hooks of `interventions` (enabled ones only) on a prompt of `n_pos` tokens;
    InterventionError naming the first one that does not fit. A dry run only checks and builds no hooks."""
    context = PromptContext(passes, n_pos, corrupted, vectors, reference_prompts, dry_run)
    edits = compile_with(context, interventions)
    if not dry_run:
        edits.hooks = native_hooks(edits, passes.adapter)
    return edits


def native_hooks(edits: Edits, adapter: Adapter) -> list[Hook]:
    """Hooks applying `edits.records` in order, each on a plain [batch, pos, ...] tensor."""
    hooks: list[Hook] = []
    for record in edits.records:
        if isinstance(record, HookEdit):
            hooks += record.hooks
            continue
        if record.site in QKV_SITES:
            hooks.append(Hook("qkv", adapter.layer_module(record.layer, "attn"), _native_qkv_edit(record)))
            continue
        deltas = edits.resid_delta(record.layer) if record.site in RESID_SITES else None
        hooks += Site(cast(SiteKind, record.site), record.layer).edit(adapter, _native_edit(record, deltas))
    return hooks


def _apply_op(x: torch.Tensor, at: tuple, op: SiteOp, value: torch.Tensor | float) -> None:
    """One record's set / scale / add at index `at` of `x`, in place."""
    if op == "set":
        x[at] = value
    elif op == "scale":
        x[at] = x[at] * value
    else:
        x[at] = x[at] + value


def _native_qkv_edit(record: SiteEdit) -> Callable:
    """An `attention.QKVEdit` applying a "q" / "k" / "v" record to its head's [batch, pos, d_head]."""
    which = QKV_SITES.index(cast(QKVSite, record.site))
    positions = record.positions
    dst: slice | int | list[int] = slice(None) if positions is None else -1 if positions == "last" else positions
    at = (slice(None), record.index, dst)
    op, value = record.op, record.value

    def change(query: torch.Tensor, key: torch.Tensor, value_states: torch.Tensor):
        x = (query, key, value_states)[which]  # [batch, head, pos, d_head], a private copy
        _apply_op(x, at, op, value)
        return query, key, value_states

    return change


def _native_edit(record: SiteEdit, deltas: list[torch.Tensor] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    positions = record.positions
    dst: slice | int | list[int] = slice(None) if positions is None else -1 if positions == "last" else positions
    at = (slice(None), dst) if record.index is None else (slice(None), dst, record.index)
    op, value = record.op, record.value

    def change(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, ...], a private copy
        _apply_op(x, at, op, value)
        return x

    if deltas is None:
        return change

    def recorded(x: torch.Tensor) -> torch.Tensor:  # also keeps what the edit added to the residual
        original = x.clone()
        x = change(x)
        deltas.append((x - original).detach())
        return x

    return recorded
