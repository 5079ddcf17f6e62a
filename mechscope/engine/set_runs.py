"""Runs, metrics and head-patching sweeps over a prompt set, batched with padding and attention masks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast, overload

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.edits import (
    QKV_SITES,
    Context,
    EditPositions,
    MeanSite,
    SiteEdit,
    SourceSite,
    compile_with,
)
from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.interventions import Intervention
from mechscope.engine.layer_replay import (
    LayerCall,
    kv_recorders,
    last_mlp_at_readout,
    recorded_kv,
    replay,
    take_rows,
)
from mechscope.engine.metric import SET_METRIC_KINDS, SetMetricKind
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import SetRunResult, SetSweepResult, check_direction
from mechscope.engine.sites import Site, SiteKind
from mechscope.engine.unembedding import logits_of, softcapped

Padding = Literal["left", "right"]
MeanRows = Literal["clean", "corrupted"]  # the set's prompts mean ablation averages over
MAX_BATCH_ROWS = 256  # sequences per forward in a sweep (rows x heads are chunked to this)
CPU_BATCH_TOKENS = 640  # and on a CPU, tokens: a batch that stays in cache is 10-15% faster per token than 1,280


def sweep_batch_tokens(device: torch.device) -> int | None:
    """Tokens (sequences x positions) one pass of a set sweep carries at most on `device`: a few
    hundred on a CPU, no limit beyond MAX_BATCH_ROWS elsewhere (None)."""
    return CPU_BATCH_TOKENS if device.type == "cpu" else None


@dataclass
class Batch:
    """Padded token ids of a list of prompts.

    ids/mask/position_ids: [row, pos]; position ids count real tokens only, so a row's positions
    (and rotary angles) are the same as when it runs alone. offsets[r]: padded index of row r's
    first token; readout[r]: padded index of its last token.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]
    offsets: list[int]
    readout: torch.Tensor

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    def positions_mask(self, positions: tuple[int, ...] | None) -> torch.Tensor:
        """[row, pos] True where an intervention at prompt `positions` (None: all) applies."""
        out = torch.zeros_like(self.mask, dtype=torch.bool)
        for r, (length, offset) in enumerate(zip(self.lengths, self.offsets)):
            if positions is None:
                out[r, offset:offset + length] = True
                continue
            for p in positions:
                if not -length <= p < length:
                    raise InterventionError(f"position {p} is outside row {r + 1} ({length} tokens)")
                out[r, offset + p % length] = True
        return out


def encode(engine: ResidentModel, texts: list[str], padding: Padding = "left") -> Batch:
    """Tokenize `texts` as `engine.tokenize` does and pad them to one [row, pos] batch."""
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be left or right, got {padding!r}")
    tokenized = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"row {i + 1}: the prompt is empty")
        row_ids = engine.tokenize(text)[0]
        if not row_ids or len(row_ids) > engine.adapter.max_context:
            raise PromptError(f"row {i + 1}: {len(row_ids)} tokens (the model takes 1..{engine.adapter.max_context})")
        tokenized.append(row_ids)
    width = max(len(row) for row in tokenized)
    pad = engine.tokenizer.pad_token_id
    if pad is None:
        pad = engine.tokenizer.eos_token_id or 0
    ids = torch.full((len(texts), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    offsets = []
    for r, row in enumerate(tokenized):
        offset = width - len(row) if padding == "left" else 0
        ids[r, offset:offset + len(row)] = torch.tensor(row)
        mask[r, offset:offset + len(row)] = 1
        offsets.append(offset)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    lengths = [len(row) for row in tokenized]
    readout = torch.tensor([o + n - 1 for o, n in zip(offsets, lengths)])
    device = engine.device
    return Batch(ids.to(device), mask.to(device), position_ids.to(device), lengths, offsets, readout.to(device))


@dataclass
class Pass:
    """What one batched forward kept: the normed final residual at each readout ([row, d_model]) and,
    when asked, every layer's call."""

    normed: torch.Tensor
    calls: list[LayerCall] = field(default_factory=list)


def forward(engine: ResidentModel, batch: Batch, hooks: list[Hook], record_calls: bool = False) -> Pass:
    """One forward of the batch with `hooks`; returns the normed readout rows (and layer calls)."""
    a = engine.adapter
    kept: dict[str, torch.Tensor] = {}
    calls: list[LayerCall | None] = [None] * a.n_layers

    def keep_final(module, args, output):
        kept["final"] = output[0] if isinstance(output, tuple) else output

    def record(layer: int):
        def hook(module, args, kwargs):
            calls[layer] = LayerCall.of(args, kwargs)
        return hook

    extra = [Hook("fwd", a.final_norm, keep_final)]
    if record_calls:
        extra += [Hook("pre", a.layers[layer], record(layer)) for layer in range(a.n_layers)]
    with installed(hooks + extra):
        engine.model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.position_ids,
                     use_cache=False, logits_to_keep=1)
    rows = torch.arange(batch.rows, device=batch.readout.device)
    normed = kept["final"][rows, batch.readout]  # [row, d_model]
    return Pass(_post_final(engine, normed), [c for c in calls if c is not None])


def _post_final(engine: ResidentModel, normed: torch.Tensor) -> torch.Tensor:
    for module in engine.adapter.post_final:
        normed = module(normed)
    return normed


def layer_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def run_layers(engine: ResidentModel, calls: list[LayerCall], start: int, hidden: torch.Tensor,
               readout: torch.Tensor, hooks: list[Hook], should_stop: ShouldStop | None = None,
               prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Layers start.. on `hidden` ([n, pos, d]) with `calls` already cut to its rows (and positions);
    returns the normed rows [n, d_model] at `readout` ([n] positions of `hidden`). `prefix_kv`: per
    layer, keys and values [n, kv_head, prefix, d_head] of the positions before `hidden`'s."""
    a = engine.adapter
    controls = [Hook("attn", a.layer_module(layer, "attn"), control=AttentionControl(prefix_kv=kv))
                for layer, kv in (prefix_kv or {}).items() if layer >= start]
    narrow = last_mlp_at_readout(a, readout, hooks)
    hidden = replay(a.layers, calls, start, hidden, narrow + hooks + controls, should_stop)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), readout]  # [n, d_model]
    return _post_final(engine, a.final_norm(picked))


def first_token(engine: ResidentModel, text: str, what: str) -> int:
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise PromptError(f"{what} {text!r} has no tokens")
    return int(ids[0])


@dataclass(frozen=True)
class SetMetric:
    """Per-row target/foil token ids and the metric kind, resolved once per set."""

    kind: SetMetricKind
    target: torch.Tensor  # [row]
    foil: torch.Tensor  # [row]

    @staticmethod
    def of(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff") -> SetMetric:
        if kind not in SET_METRIC_KINDS:
            raise ValueError(f"metric kind must be {', '.join(SET_METRIC_KINDS)}, got {kind!r}")
        targets, foils = [], []
        for i, row in enumerate(pset.rows):
            if not row.target:
                raise PromptError(f"row {i + 1}: the metric needs a target token")
            targets.append(first_token(engine, row.target, f"row {i + 1}: target"))
            if kind == "logit_diff":
                if not row.foil:
                    raise PromptError(f"row {i + 1}: logit_diff needs a foil token")
                foils.append(first_token(engine, row.foil, f"row {i + 1}: foil"))
            else:
                foils.append(targets[-1])
        return SetMetric(kind, torch.tensor(targets, device=engine.device), torch.tensor(foils, device=engine.device))

    def rows(self, index: torch.Tensor) -> SetMetric:
        return SetMetric(self.kind, self.target[index], self.foil[index])

    def value(self, engine: ResidentModel, normed: torch.Tensor) -> torch.Tensor:
        """Metric of normed readout rows [row, d_model] -> [row] (a logit difference reads only the
        target and foil rows of the unembedding)."""
        if self.kind == "logit_diff":
            unembed = engine.adapter.unembed
            unembed_weight = cast(torch.Tensor, unembed.weight)
            weight_t = unembed_weight[self.target]  # [row, d_model]
            weight_f = unembed_weight[self.foil]
            logits_t = (normed * weight_t).sum(-1).float()
            logits_f = (normed * weight_f).sum(-1).float()
            bias = getattr(unembed, "bias", None)
            if bias is not None:
                logits_t = logits_t + bias[self.target]
                logits_f = logits_f + bias[self.foil]
            cap = engine.adapter.final_softcap
            return softcapped(logits_t, cap) - softcapped(logits_f, cap)
        logits = logits_of(engine.adapter, normed)  # [row, vocab]
        log_p = logits.gather(1, self.target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        return log_p.exp() if self.kind == "prob" else -log_p


# ---------------------------------------------------------------------------- interventions


def head_outputs(engine: ResidentModel, batch: Batch) -> list[torch.Tensor]:
    """Every layer's per-head attention output z (the output projection's input), [row, pos, head*d_head]."""
    a = engine.adapter
    z: list[torch.Tensor | None] = [None] * a.n_layers

    def keep(layer: int):
        def hook(module, args, kwargs):
            z[layer] = args[0].detach()
        return hook

    forward(engine, batch, [Hook("pre", a.o_proj(layer), keep(layer)) for layer in range(a.n_layers)])
    return z  # type: ignore[return-value]


def site_outputs(engine: ResidentModel, batch: Batch, site: SiteKind,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Every layer's activation at `site` ([row, pos, ...], heads split), or `reduce` of it."""
    a = engine.adapter
    out: list[torch.Tensor | None] = [None] * a.n_layers

    def keep(layer: int):
        def observe(x: torch.Tensor) -> None:
            out[layer] = x.detach() if reduce is None else reduce(x)
        return observe

    forward(engine, batch, [hook for layer in range(a.n_layers) for hook in Site(site, layer).observe(a, keep(layer))])
    return out  # type: ignore[return-value]


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


# ---------------------------------------------------------------------------- results


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return values.mean(axis=0), values.std(axis=0)


# ---------------------------------------------------------------------------- entry points


def run_set(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff",
            interventions: Iterable[Intervention] = (), prompt: Literal["clean", "corrupted"] = "clean",
            padding: Padding = "left", vectors: Mapping[str, np.ndarray] | None = None,
            means: MeanRows = "clean") -> SetRunResult:
    """The metric on every row (target vs foil at the row's last token), with and without interventions
    (`vectors`: the steering vectors they may name; `means`: the rows' prompts mean ablation averages
    over, clean or corrupted)."""
    started = time.perf_counter()
    interventions = list(interventions)
    with engine.guard(), torch.no_grad():
        metric = SetMetric.of(engine, pset, kind)
        batch = encode(engine, pset.column(prompt), padding)
        base = metric.value(engine, forward(engine, batch, []).normed)
        hooks = set_edit_hooks(engine, pset, batch, interventions, padding, vectors, means)
        values = metric.value(engine, forward(engine, batch, hooks).normed) if hooks else base
    return SetRunResult(pset.name, kind, values.cpu().numpy().astype(np.float64),
                        base.cpu().numpy().astype(np.float64), time.perf_counter() - started)


def paired_batches(engine: ResidentModel, pset: PromptSet, direction: str, padding: Padding) -> tuple[Batch, Batch]:
    """(base, source) batches of a sweep: noising patches corrupted into clean, denoising the reverse."""
    check_direction(direction)
    for i, row in enumerate(pset.rows):
        if not row.corrupted:
            raise PromptError(f"row {i + 1}: a sweep needs a corrupted prompt")
    clean = encode(engine, pset.column("clean"), padding)
    corrupt = encode(engine, pset.column("corrupted"), padding)
    for i, (n_clean, n_corrupt) in enumerate(zip(clean.lengths, corrupt.lengths)):
        if n_clean != n_corrupt:
            raise PromptError(f"row {i + 1}: clean and corrupted prompts must have the same number of "
                              f"tokens for a sweep ({n_clean} vs {n_corrupt})")
    return (clean, corrupt) if direction == "noising" else (corrupt, clean)


def shared_prefixes(base: Batch, source: Batch) -> list[int]:
    """Per row, the padded index of the first position whose token differs between the base and
    source rows (at most the readout): the positions before it hold the same activations in both
    runs, so patching there changes nothing and a sweep computes only the positions from it on."""
    differs = (base.ids != source.ids) & base.mask.bool()  # [row, pos]
    starts = []
    for r in range(base.rows):
        where = differs[r].nonzero()
        readout = int(base.readout[r])
        starts.append(min(int(where[0]), readout) if len(where) else readout)
    return starts


def _rows_after(calls: list[LayerCall], index: torch.Tensor, start: int) -> list[LayerCall]:
    """Each layer's call cut to batch rows `index` and positions start.. . The hidden states stay
    views of every base row (a variant starts from its own hidden state, selected by the caller)."""
    rows = calls[0].hidden.shape[0]
    cut = [call.suffix(start) for call in calls]
    return [LayerCall(c.hidden, take_rows(c.args, index, rows), take_rows(c.kwargs, index, rows)) for c in cut]


def sweep_set(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff",
              direction: str = "noising", padding: Padding = "left",
              on_progress: Callable[[SetSweepResult], None] | None = None,
              should_stop: ShouldStop | None = None,
              max_batch: int = MAX_BATCH_ROWS, source: Literal["prompts", "mean"] = "prompts") -> SetSweepResult:
    """Patch each head's output from the source rows into the base rows, every row at once: for each
    layer, rows x heads variants resume from the base run's residual at that layer.

    Only what can change is computed: a variant runs the layers from the patched one on, and only
    the positions from its row's first differing token on (`shared_prefixes`; with left padding the
    padding is before it), attending to the base run's keys and values for the earlier positions.
    Rows are batched in order of that position, so a batch's rows share most of their prefix.

    source "mean": a mean-ablation sweep instead: each head's output is replaced by its mean over
    every real position of the set's clean rows (the base rows are the clean prompts; `direction`
    is ignored and source_metric is NaN)."""
    started = time.perf_counter()
    a = engine.adapter
    n_heads, d_head = a.n_heads, a.d_head
    if source not in ("prompts", "mean"):
        raise ValueError(f"source must be prompts or mean, got {source!r}")
    with engine.guard(), torch.no_grad():
        metric = SetMetric.of(engine, pset, kind)
        if source == "mean":
            base_batch = encode(engine, pset.column("clean"), padding)
            rows = base_batch.rows
            real = base_batch.mask.bool()
            source_z = [z[real].mean(0).expand(*base_batch.ids.shape, -1)
                        for z in head_outputs(engine, base_batch)]  # [row, pos, head*d_head] per layer
            source_metric = torch.full((rows,), float("nan"))
            starts = list(base_batch.offsets)  # the mean differs at every real token
        else:
            base_batch, source_batch = paired_batches(engine, pset, direction, padding)
            rows = base_batch.rows
            source_z = head_outputs(engine, source_batch)
            source_metric = metric.value(engine, forward(engine, source_batch, []).normed)
            starts = shared_prefixes(base_batch, source_batch)
        controls, recorders = kv_recorders(a)
        base = forward(engine, base_batch, recorders, record_calls=True)
        base_metric = metric.value(engine, base.normed)
        kv = recorded_kv(controls)  # [row, kv_head, pos, d_head] x2 per layer
        per_row = np.full((rows, a.n_layers, n_heads), np.nan)

        def result(complete: bool) -> SetSweepResult:
            return SetSweepResult(pset.name, direction if source == "prompts" else "mean", per_row.copy(),
                                  base_metric.cpu().numpy().astype(np.float64),
                                  source_metric.cpu().numpy().astype(np.float64), complete,
                                  time.perf_counter() - started)

        # variants (row, head), rows in order of their first differing position; batches of max_batch
        order = sorted(range(rows), key=lambda r: starts[r])
        pairs = torch.tensor([(r, h) for r in order for h in range(n_heads)], device=engine.device)
        chunks = []
        width = base_batch.ids.shape[1]
        budget = sweep_batch_tokens(engine.device)
        begin = 0
        while begin < len(pairs):
            size = max(1, max_batch)
            if budget is not None:  # the first variant of a chunk has its smallest start, so the most positions
                size = max(1, min(size, budget // (width - starts[int(pairs[begin, 0])])))
            index, heads = pairs[begin:begin + size, 0], pairs[begin:begin + size, 1]
            start = min(starts[r] for r in index.tolist())
            chunks.append((index, heads, start, _rows_after(base.calls, index, start)))
            begin += size
        for layer in range(a.n_layers):
            for index, heads, start, calls in chunks:
                src = source_z[layer].reshape(rows, -1, n_heads, d_head)[index, start:, heads]  # [n, suffix, d_head]

                def patch(module, args, kwargs, heads=heads, src=src):
                    x = args[0]  # [n, suffix, head*d_head]
                    z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [n, suffix, head, d_head]
                    z[torch.arange(len(heads)), :, heads] = src
                    return (z.view(x.shape), *args[1:]), kwargs

                hidden = base.calls[layer].hidden.index_select(0, index)[:, start:]  # [n, suffix, d_model]
                prefix_kv = None
                if start > 0:
                    prefix_kv = {later: (kv[later][0].index_select(0, index)[:, :, :start],
                                         kv[later][1].index_select(0, index)[:, :, :start])
                                 for later in range(layer, a.n_layers)}
                normed = run_layers(engine, calls, layer, hidden, base_batch.readout[index] - start,
                                    [Hook("pre", a.o_proj(layer), patch)], should_stop, prefix_kv)
                effect = metric.rows(index).value(engine, normed) - base_metric[index]
                per_row[index.cpu().numpy(), layer, heads.cpu().numpy()] = effect.cpu().numpy()
            if on_progress is not None:
                on_progress(result(False))
        return result(True)
