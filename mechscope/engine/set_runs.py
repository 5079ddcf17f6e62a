"""Runs, metrics and head-patching sweeps over a prompt set, batched with padding and attention masks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.interventions import ComponentAblation, HeadAblation, HeadScale, Intervention
from mechscope.engine.passes import LayerCall, replay
from mechscope.engine.passes import take_rows as take_rows  # estimators select batch rows with it
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import SetRunResult, SetSweepResult

Padding = Literal["left", "right"]
MetricKind = Literal["logit_diff", "prob", "loss"]
MAX_BATCH_ROWS = 256  # sequences per forward in a sweep (rows x heads are chunked to this)


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
    hidden = replay(a.layers, calls, start, hidden, hooks + controls, should_stop)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), readout]  # [n, d_model]
    return _post_final(engine, a.final_norm(picked))


def logits_of(engine: ResidentModel, normed: torch.Tensor) -> torch.Tensor:
    """Normed residual rows [..., d_model] -> float32 logits [..., vocab] (soft-capped where the model is)."""
    logits = engine.adapter.unembed(normed).float()
    cap = engine.adapter.final_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def first_token(engine: ResidentModel, text: str, what: str) -> int:
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise PromptError(f"{what} {text!r} has no tokens")
    return int(ids[0])


@dataclass(frozen=True)
class SetMetric:
    """Per-row target/foil token ids and the metric kind, resolved once per set."""

    kind: MetricKind
    target: torch.Tensor  # [row]
    foil: torch.Tensor  # [row]

    @staticmethod
    def of(engine: ResidentModel, pset: PromptSet, kind: MetricKind = "logit_diff") -> SetMetric:
        if kind not in ("logit_diff", "prob", "loss"):
            raise ValueError(f"metric kind must be logit_diff, prob or loss, got {kind!r}")
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
            if cap:
                logits_t = torch.tanh(logits_t / cap) * cap
                logits_f = torch.tanh(logits_f / cap) * cap
            return logits_t - logits_f
        logits = logits_of(engine, normed)  # [row, vocab]
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


def component_outputs(engine: ResidentModel, batch: Batch, sites: Set[tuple[int, str]]) -> dict[tuple[int, str], torch.Tensor]:
    """Outputs [row, pos, d_model] of the attention / MLP blocks at `sites` ((layer, "attn"|"mlp"))."""
    a = engine.adapter
    out: dict[tuple[int, str], torch.Tensor] = {}
    width = batch.ids.shape[1]

    def keep(site):
        def hook(module, args, output):
            value = layer_output(output)
            out[site] = value.view(-1, width, value.shape[-1]).detach()
        return hook

    hooks = [Hook("fwd", a.layer_module(layer, f"{comp}_out"), keep((layer, comp))) for layer, comp in sites]
    forward(engine, batch, hooks)
    return out


def set_edit_hooks(engine: ResidentModel, pset: PromptSet, batch: Batch, interventions: Iterable[Intervention],  # noqa: C901  (23) validation, sources and two hook kinds; split like edits.py
                   padding: Padding = "left") -> list[Hook]:
    """Hooks applying head ablations/scales and component ablations to every row of `batch`.

    mean: the mean over every real position of the set's clean rows; resample: the row's corrupted
    prompt at the same positions (the row's prompts must have the same number of tokens)."""
    a = engine.adapter
    enabled = [iv for iv in interventions if iv.enabled]
    for iv in enabled:
        if not isinstance(iv, (HeadAblation, HeadScale, ComponentAblation)):
            raise InterventionError(f"{iv.label}: {iv.kind} is not supported over a prompt set "
                                    "(head ablation/scale and component ablation are)")
        if not 0 <= iv.layer < a.n_layers:
            raise InterventionError(f"{iv.label}: layer {iv.layer} is outside 0..{a.n_layers - 1}")
        if isinstance(iv, (HeadAblation, HeadScale)) and not 0 <= iv.head < a.n_heads:
            raise InterventionError(f"{iv.label}: head {iv.head} is outside 0..{a.n_heads - 1}")
    active = cast(list[HeadAblation | HeadScale | ComponentAblation], enabled)  # checked just above
    modes = {getattr(iv, "mode", "") for iv in active}
    clean_batch = encode(engine, pset.column("clean")) if "mean" in modes else None
    corrupted = None
    if "resample" in modes:
        corrupted = encode(engine, pset.column("corrupted"), padding)
        if corrupted.lengths != batch.lengths or corrupted.offsets != batch.offsets:
            raise InterventionError("resample ablation over a set needs each row's corrupted prompt to have "
                                    "as many tokens as its clean prompt")
    z_mean = z_source = None
    if any(isinstance(iv, HeadAblation) and iv.mode in ("mean", "resample") for iv in active):
        if clean_batch is not None:
            z_all = head_outputs(engine, clean_batch)
            real = clean_batch.mask.bool()
            z_mean = [z[real].mean(0) for z in z_all]  # [head*d_head] per layer
        if corrupted is not None and "resample" in modes:
            z_source = head_outputs(engine, corrupted)
    comp_sites = {(iv.layer, iv.component) for iv in active if isinstance(iv, ComponentAblation)
                  and iv.mode in ("mean", "resample")}
    comp_mean = comp_source = {}
    if comp_sites:
        if clean_batch is not None:
            outs = component_outputs(engine, clean_batch, comp_sites)
            real = clean_batch.mask.bool()
            comp_mean = {site: value[real].mean(0) for site, value in outs.items()}
        if corrupted is not None and "resample" in modes:
            comp_source = component_outputs(engine, corrupted, comp_sites)
    n_heads, d_head = a.n_heads, a.d_head
    width = batch.ids.shape[1]
    hooks = []
    for iv in active:
        where = batch.positions_mask(iv.positions)[:, :, None]  # [row, pos, 1]
        if isinstance(iv, (HeadAblation, HeadScale)):
            def head_hook(module, args, kwargs, iv=iv, where=where):
                x = args[0]  # [row, pos, head*d_head]
                z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [row, pos, head, d_head]
                old = z[:, :, iv.head]
                if isinstance(iv, HeadScale):
                    new = old * iv.factor
                elif iv.mode == "zero":
                    new = torch.zeros_like(old)
                elif iv.mode == "mean":
                    assert z_mean is not None  # computed above for every mean head ablation
                    new = z_mean[iv.layer].view(n_heads, d_head)[iv.head].expand_as(old)
                else:
                    assert z_source is not None  # computed above for every resample head ablation
                    new = z_source[iv.layer].view(*x.shape[:-1], n_heads, d_head)[:, :, iv.head]
                z[:, :, iv.head] = torch.where(where, new, old)
                return (z.view(x.shape), *args[1:]), kwargs

            hooks.append(Hook("pre", a.o_proj(iv.layer), head_hook))
        else:
            site = (iv.layer, iv.component)

            def comp_hook(module, args, output, iv=iv, where=where, site=site):
                original = layer_output(output)
                value = original.view(-1, width, original.shape[-1])  # [row, pos, d_model]
                if iv.mode == "zero":
                    new = torch.zeros_like(value)
                elif iv.mode == "mean":
                    new = comp_mean[site].expand_as(value)
                else:
                    new = comp_source[site]
                edited = torch.where(where, new, value).view(original.shape)
                if isinstance(output, tuple):
                    return (edited, *output[1:])
                return edited

            hooks.append(Hook("fwd", a.layer_module(iv.layer, f"{iv.component}_out"), comp_hook))
    return hooks


# ---------------------------------------------------------------------------- results


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return values.mean(axis=0), values.std(axis=0)


# ---------------------------------------------------------------------------- entry points


def run_set(engine: ResidentModel, pset: PromptSet, kind: MetricKind = "logit_diff",
            interventions: Iterable[Intervention] = (), prompt: Literal["clean", "corrupted"] = "clean",
            padding: Padding = "left") -> SetRunResult:
    """The metric on every row (target vs foil at the row's last token), with and without interventions."""
    started = time.perf_counter()
    interventions = list(interventions)
    with engine.guard(), torch.no_grad():
        metric = SetMetric.of(engine, pset, kind)
        batch = encode(engine, pset.column(prompt), padding)
        base = metric.value(engine, forward(engine, batch, []).normed)
        hooks = set_edit_hooks(engine, pset, batch, interventions, padding)
        values = metric.value(engine, forward(engine, batch, hooks).normed) if hooks else base
    return SetRunResult(pset.name, kind, values.cpu().numpy().astype(np.float64),
                        base.cpu().numpy().astype(np.float64), time.perf_counter() - started)


def paired_batches(engine: ResidentModel, pset: PromptSet, direction: str, padding: Padding) -> tuple[Batch, Batch]:
    """(base, source) batches of a sweep: noising patches corrupted into clean, denoising the reverse."""
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction must be noising or denoising, got {direction!r}")
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


def sweep_set(engine: ResidentModel, pset: PromptSet, kind: MetricKind = "logit_diff",
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
        controls = [AttentionControl(record_kv=True) for _ in range(a.n_layers)]
        base = forward(engine, base_batch, [Hook("attn", a.layer_module(layer, "attn"), control=control)
                                            for layer, control in enumerate(controls)], record_calls=True)
        base_metric = metric.value(engine, base.normed)
        kv = [cast(tuple[torch.Tensor, torch.Tensor], c.kv) for c in controls]  # [row, kv_head, pos, d_head] x2
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
        for begin in range(0, len(pairs), max(1, max_batch)):
            index, heads = pairs[begin:begin + max(1, max_batch), 0], pairs[begin:begin + max(1, max_batch), 1]
            start = min(starts[r] for r in index.tolist())
            chunks.append((index, heads, start, _rows_after(base.calls, index, start)))
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
