"""Interventions compiled by the `edits` registry into a trace plan: plain tuples per layer for `traces.run_trace`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from mechscope.engine.edits import Context, Edits, MeanSite, SiteEdit, SourceSite, compile_with
from mechscope.engine.errors import InterventionError
from mechscope.engine.interventions import Intervention

if TYPE_CHECKING:
    from mechscope.backends.nnsight_engine import NNsightEngine

# The plan's key for each site of a site edit (see `traces`).
PLAN_KEYS: dict[str, str] = {"resid_pre": "pre", "heads": "head", "attn": "attn", "neurons": "down", "mlp": "mlp",
                             "resid_post": "post"}
_ACTS_KEYS: dict[str, str] = {"heads": "z", "attn": "attn_out", "mlp": "mlp_out", "resid_pre": "resid_pre",
                              "resid_post": "resid_post"}


def check_head(engine: NNsightEngine, layer: int, head: int | None, what: str) -> None:
    a = engine.adapter
    if not 0 <= layer < a.n_layers:
        raise InterventionError(f"{what}: layer {layer} is out of range 0..{a.n_layers - 1}")
    if head is not None and not 0 <= head < a.n_heads:
        raise InterventionError(f"{what}: head {head} is out of range 0..{a.n_heads - 1}")


class TraceContext(Context):
    """One prompt on the nnsight engine: sources and means from its own traces, tensors on the CPU
    (the trace moves them where the model computes)."""

    where: ClassVar[str] = "on the nnsight backend"

    def __init__(self, engine: NNsightEngine, n_pos: int, corrupted: str | None, dry_run: bool) -> None:
        super().__init__(engine.adapter, engine.dtype, n_pos, corrupted, engine.vectors, dry_run)
        self.engine = engine

    def prompt_length(self, prompt: str) -> int:
        return int(self.engine._prompt_ids(prompt)[0].shape[1])

    def source_rows(self, prompt: str, site: SourceSite, layer: int, positions: list[int]) -> torch.Tensor:
        acts = self.engine._acts(self.engine._prompt_ids(prompt)[0])
        rows = acts[_ACTS_KEYS[site]][layer][:, positions]  # [1, n, d]
        if site == "heads":
            rows = rows.view(*rows.shape[:-1], self.adapter.n_heads, self.adapter.d_head)  # [1, n, head, d_head]
        return rows

    def mean(self, site: MeanSite, layer: int) -> torch.Tensor:
        value = self.engine._means()[_ACTS_KEYS[site]][layer]
        return value.view(self.adapter.n_heads, self.adapter.d_head) if site == "heads" else value

    def layer_tensor(self, array: np.ndarray, layer: int) -> torch.Tensor:
        return torch.as_tensor(array, dtype=self.dtype)


class Plan:
    """Edits per layer (see `traces`): the compiled site edits and knockouts as plain tuples."""

    def __init__(self, edits: Edits) -> None:
        self.layers: dict[int, dict[str, list]] = {}
        # Which attention / MLP outputs an edit replaced as a whole, as attribution reads them
        # (`Edits.whole_layer_replaced`).
        self.whole = edits
        for record in edits.records:
            assert isinstance(record, SiteEdit)  # TraceContext refuses types that bring their own hooks
            self.add(record.layer, PLAN_KEYS[record.site], (record.op, record.index, record.positions, record.value))
        for layer, edges in edits.knockouts.items():
            for head, query, key, _ in edges:
                self.add(layer, "knock", (head, query, key))

    def add(self, layer: int, site: str, edit: tuple) -> None:
        self.layers.setdefault(layer, {}).setdefault(site, []).append(edit)

    @property
    def empty(self) -> bool:
        return not self.layers

    @property
    def knockouts(self) -> bool:
        return any("knock" in sites for sites in self.layers.values())

    def for_row(self, row: int) -> dict:
        return {"row": row, "layers": self.layers}


def compile_plan(engine: NNsightEngine, interventions: Iterable[Intervention], n_pos: int,
                 corrupted: str | None, dry_run: bool = False) -> Plan:
    """The plan applying `interventions` to a prompt of `n_pos` tokens; InterventionError naming the
    first that does not fit. A dry run checks without running the model for sources or means."""
    return Plan(compile_with(TraceContext(engine, n_pos, corrupted, dry_run), interventions))
