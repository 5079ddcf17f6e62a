"""Interventions over a padded prompt set: the `SetContext` the compile functions read, applied as
[row, pos]-masked hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, Literal, cast, overload

import numpy as np
import torch

from mechscope.engine.edits import (
    QKV_SITES,
    Context,
    EditPositions,
    MeanSite,
    SiteEdit,
    SourceSite,
    compile_with,
)
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import Intervention
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.resident import ResidentModel
from mechscope.engine.set_batches import Batch, Padding, encode, site_outputs
from mechscope.engine.sites import Site, SiteKind

MeanRows = Literal["clean", "corrupted"]  # the set's prompts mean ablation averages over


class SetContext(Context):
    """A prompt set batched with padding, for the compile functions of `edits`.

    Positions are each row's prompt positions (applied as a [row, pos] mask); mean ablation takes
    the mean over every real position of the set's clean rows, or of its corrupted rows (`means`, the
    IOI paper's "ABC" distribution); resample takes each row's own corrupted prompt at the same
    positions (the row's prompts must have the same number of tokens).
    """

    where: ClassVar[str] = "over a prompt set"
    knockouts: ClassVar[bool] = False

    def __init__(self, engine: ResidentModel, pset: PromptSet, batch: Batch, padding: Padding,
                 vectors: Mapping[str, np.ndarray], means: MeanRows = "clean") -> None:
        super().__init__(engine.adapter, engine.dtype, batch.ids.shape[1], None, vectors, dry_run=False)
        self.engine = engine
        self.pset = pset
        self.batch = batch
        self.padding = padding
        if means not in ("clean", "corrupted"):
            raise ValueError(f"means must be clean or corrupted, got {means!r}")
        self.mean_rows = means
        self.means: dict[str, list[torch.Tensor]] = {}
        self.sources: dict[str, list[torch.Tensor]] = {}

    @overload
    def positions(self, positions: None, n_pos: int | None = None, suffix: str = "") -> None: ...

    @overload
    def positions(self, positions: Iterable[int], n_pos: int | None = None, suffix: str = "") -> list[int]: ...

    def positions(self, positions: Iterable[int] | None, n_pos: int | None = None,
                  suffix: str = "") -> list[int] | None:
        """Prompt positions as given, checked against every row."""
        if positions is None:
            return None
        given = list(positions)
        for r, length in enumerate(self.batch.lengths):
            for p in given:
                if not -length <= p < length:
                    raise self.fail(f"position {p} is outside row {r + 1} ({length} tokens)")
        return given

    def resample(self, site: SourceSite, layer: int,
                 positions: Iterable[int] | None) -> tuple[torch.Tensor | None, EditPositions]:
        where = self.positions(positions)
        if site not in self.sources:
            corrupted = encode(self.engine, self.pset.column("corrupted"), self.padding)
            if corrupted.lengths != self.batch.lengths or corrupted.offsets != self.batch.offsets:
                raise self.fail("resample ablation over a set needs each row's corrupted prompt to have "
                                "as many tokens as its clean prompt")
            self.sources[site] = site_outputs(self.engine, corrupted, site)
        return self.sources[site][layer], where  # [row, pos, ...] aligned with the batch

    def mean(self, site: MeanSite, layer: int) -> torch.Tensor:
        if site not in self.means:
            prompts = self.pset.column(self.mean_rows)
            if not all(prompts):
                raise self.fail("mean ablation over the corrupted prompts needs a corrupted prompt in every row")
            rows = encode(self.engine, prompts)
            real = rows.mask.bool()  # [row, pos]
            self.means[site] = site_outputs(self.engine, rows, site, lambda x: x[real].mean(0))
        return self.means[site][layer]


def set_edit_hooks(engine: ResidentModel, pset: PromptSet, batch: Batch, interventions: Iterable[Intervention],
                   padding: Padding = "left", vectors: Mapping[str, np.ndarray] | None = None,
                   means: MeanRows = "clean") -> list[Hook]:
    """Hooks applying `interventions` to every row of `batch`, compiled by the `edits` registry in a
    `SetContext`; a kind that cannot apply over a padded set is refused in one line naming it."""
    edits = compile_with(SetContext(engine, pset, batch, padding, vectors or {}, means), interventions)
    hooks: list[Hook] = []
    for record in edits.records:
        # SetContext refuses types that bring their own hooks or edit attention's inputs
        assert isinstance(record, SiteEdit) and record.site not in QKV_SITES
        hooks += Site(cast(SiteKind, record.site), record.layer).edit(engine.adapter, _masked_edit(record, batch))
    return hooks


def _masked_edit(record: SiteEdit, batch: Batch) -> Callable[[torch.Tensor], torch.Tensor]:
    """The record's change where its positions fall in each row ([row, pos] mask), the rest kept."""
    positions = record.positions
    mask = batch.positions_mask((-1,) if positions == "last" else None if positions is None else tuple(positions))
    op, value, index = record.op, record.value, record.index

    def edit(x: torch.Tensor) -> torch.Tensor:  # [row, pos, ...], a private copy
        old = x if index is None else x[:, :, index]
        change = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=old.dtype,
                                                                                device=old.device)
        new = change.expand_as(old) if op == "set" else old * change if op == "scale" else old + change
        edited = torch.where(mask.view(*mask.shape, *[1] * (old.dim() - 2)), new, old)
        if index is None:
            return edited
        x[:, :, index] = edited
        return x

    return edit
