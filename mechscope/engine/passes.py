"""Passes and their caches: prompt ids, clean passes, source activations, logits and metrics.

The bottom of the engine: interventions, readouts, sweeps and generation build on a `Passes` object;
this module imports none of them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
import torch

from mechscope.engine.adapters import Adapter
from mechscope.engine.captures import Captures, CaptureSpec, capture_hooks
from mechscope.engine.errors import Cancelled, PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.interventions import Intervention
from mechscope.engine.layer_replay import LayerCall, replay
from mechscope.engine.metric import Metric
from mechscope.engine.placement import align_hooks, execution_device, loaded
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import MetricInfo, Prediction, TokenProb
from mechscope.engine.sites import Site, first
from mechscope.engine.unembedding import logits_of, softcapped

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

CLEAN_CACHE_SIZE = 8
SOURCE_CACHE_SIZE = 4
TOKEN_CACHE_SIZE = 256


class BoundedCache(Generic[K, V]):
    """A least-recently-used map that forgets its oldest entries beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The entry without marking it used."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> V:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def values(self) -> list[V]:
        return list(self._items.values())

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


def check_text(text: object, what: str) -> str:
    """`text` as a string the tokenizer can encode; PromptError otherwise (e.g. a lone surrogate)."""
    if not isinstance(text, str):
        raise PromptError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        raise PromptError(f"{what} contains U+{bad:04X}, a lone surrogate that is not valid text") from None
    return text


@dataclass
class CleanPass:
    """A prompt's run with no interventions: every layer's call, the final residual and captures."""

    ids: torch.Tensor  # [1, pos]
    calls: list[LayerCall]
    final: torch.Tensor  # [1, pos, d_model] output of the last layer, before the final norm
    spec: CaptureSpec | None
    captures: Captures
    readout_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> [vocab]
    baselines: dict[tuple, Prediction] = field(default_factory=dict)  # (metric info, top_k) -> prediction
    views: dict[tuple, Any] = field(default_factory=dict)  # (view, readout, ...) -> that view without edits
    tokens: list[str] | None = None

    def view(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """A view of the run without edits, computed once per clean pass."""
        if key not in self.views:
            self.views[key] = compute()
        return self.views[key]


@dataclass
class SourceActs:
    """Full-sequence activations of a prompt, used as patch / resample sources."""

    ids: torch.Tensor  # [1, pos]
    z: list[torch.Tensor]  # per layer [1, pos, head, d_head]
    attn_out: list[torch.Tensor]  # per layer [1, pos, d_model]
    mlp_out: list[torch.Tensor]  # per layer [1, pos, d_model]
    resid_pre: list[torch.Tensor]  # per layer [1, pos, d_model]
    resid_post: list[torch.Tensor]  # per layer [1, pos, d_model]


@dataclass
class SourceQKV:
    """Every layer's attention inputs on a prompt, as the attention function receives them (after
    rotary embedding): patch sources for queries, keys and values."""

    ids: torch.Tensor  # [1, pos]
    query: list[torch.Tensor]  # per layer [1, head, pos, d_head]
    key: list[torch.Tensor]  # per layer [1, kv_head, pos, d_head]
    value: list[torch.Tensor]  # per layer [1, kv_head, pos, d_head]

    def of(self, which: str) -> list[torch.Tensor]:
        """The per-layer tensors of "q", "k" or "v"."""
        return {"q": self.query, "k": self.key, "v": self.value}[which]


@dataclass
class ReferenceMeans:
    """Mean activations over every token of the reference prompts (for mean ablation)."""

    z: list[torch.Tensor]  # per layer [head, d_head]
    attn_out: list[torch.Tensor]  # per layer [d_model]
    mlp_out: list[torch.Tensor]  # per layer [d_model]


class Passes:
    """Forward passes of one model and everything cached about them. Not locked: callers hold the
    engine's lock around any method that runs the model."""

    def __init__(self, model, tokenizer, adapter: Adapter) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        param = next(model.parameters())
        self.device = execution_device(model.get_input_embeddings())  # params may be on meta under offload
        self.dtype = param.dtype
        self.clean_cache: BoundedCache[tuple[int, ...], CleanPass] = BoundedCache(CLEAN_CACHE_SIZE)
        self.source_cache: BoundedCache[tuple[int, ...], SourceActs] = BoundedCache(SOURCE_CACHE_SIZE)
        self.means_cache: BoundedCache[tuple[str, ...], ReferenceMeans] = BoundedCache(1)
        self.qkv_cache: BoundedCache[tuple[int, ...], SourceQKV] = BoundedCache(SOURCE_CACHE_SIZE)
        self.token_cache: BoundedCache[tuple, Any] = BoundedCache(TOKEN_CACHE_SIZE)
        self._align: list[Hook] | None = None

    def clear(self) -> None:
        """Forget every cached tensor (tokenisations stay: they hold no device memory)."""
        self.clean_cache.clear()
        self.source_cache.clear()
        self.means_cache.clear()
        self.qkv_cache.clear()

    # ------------------------------------------------------------------ tokens

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    def continuation_ids(self, text: str, what: str = "text") -> list[int]:
        return list(self.tokenizer(check_text(text, what), add_special_tokens=False).input_ids)

    def prompt_ids(self, prompt: str) -> tuple[torch.Tensor, int | None]:
        """Token ids [1, pos] of a prompt (cut to the context, keeping the end) and the original length
        when it was cut. Memoised: the live view re-runs the same prompt on every toggle."""
        key = ("prompt", prompt)
        cached = self.token_cache.get(key)
        if cached is None:
            cached = self.token_cache.put(key, self._tokenize_prompt(prompt))
        return cached

    def _tokenize_prompt(self, prompt: str) -> tuple[torch.Tensor, int | None]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt is empty")
        ids = self.tokenizer(check_text(prompt, "the prompt")).input_ids
        if not ids:
            raise PromptError("the prompt has no tokens")
        truncated_from = None
        limit = self.adapter.max_context
        if len(ids) > limit:
            truncated_from = len(ids)
            ids = ids[-limit:]
        return torch.tensor([ids], device=self.device), truncated_from

    def metric_info(self, metric: Metric, n_pos: int) -> MetricInfo:
        """How `metric` reads on a prompt of `n_pos` tokens (memoised); PromptError if it cannot."""
        key = ("metric", metric, n_pos)
        cached = self.token_cache.get(key)
        if cached is None:
            cached = self.token_cache.put(key, self._metric_info(metric, n_pos))
        return cached

    def _metric_info(self, metric: Metric, n_pos: int) -> MetricInfo:
        if not metric.measurable:
            raise PromptError("the metric needs a target token")
        target = self.continuation_ids(metric.target, "the target") if metric.target else []
        if metric.target and not target:
            raise PromptError(f"target {metric.target!r} has no tokens")
        foil: list[int] = []
        if metric.foil:
            foil = self.continuation_ids(metric.foil, "the foil")
            if not foil:
                raise PromptError(f"foil {metric.foil!r} has no tokens")
        if not -n_pos <= metric.position < n_pos:
            raise PromptError(f"metric position {metric.position} is outside the prompt ({n_pos} tokens)")
        return MetricInfo(
            kind=metric.kind,
            target_text=metric.target,
            target_ids=tuple(target),
            target_pieces=tuple(self.decode_token(i) for i in target),
            foil_text=metric.foil,
            foil_ids=tuple(foil),
            foil_pieces=tuple(self.decode_token(i) for i in foil),
            position=metric.position % n_pos,
        )

    # ------------------------------------------------------------------ passes

    def forward(self, ids: torch.Tensor, hooks: list[Hook]) -> torch.Tensor:
        """A full forward of `ids` with `hooks`; returns the last layer's output [batch, pos, d_model]."""
        holder: dict[str, torch.Tensor] = {}

        def record_final(module, args, output):
            holder["final"] = first(output)

        with installed(self.align_hooks() + hooks + [Hook("fwd", self.adapter.layers[-1], record_final)]):
            cast(Any, self.adapter.model).base_model(input_ids=ids, use_cache=False)  # a PreTrainedModel
        return holder["final"]

    def is_cached(self, ids: torch.Tensor, spec: CaptureSpec) -> bool:
        clean = self.clean_cache.peek(tuple(ids[0].tolist()))
        return clean is not None and (spec.empty or (clean.spec is not None and clean.spec.covers(spec)))

    def clean(self, ids: torch.Tensor, spec: CaptureSpec | None = None,
              should_stop: ShouldStop | None = None) -> CleanPass:
        """The no-intervention pass of `ids`, from the cache when it recorded at least `spec`."""
        cached = self.cached_clean(ids)
        if cached is not None:
            if spec is None or spec.empty or (cached.spec is not None and cached.spec.covers(spec)):
                return cached
            if cached.spec is not None and cached.spec.readout == spec.readout:
                spec = cached.spec.union(spec)
        return self.clean_forward(ids, spec, should_stop)[0]

    def cached_clean(self, ids: torch.Tensor) -> CleanPass | None:
        return self.clean_cache.get(tuple(ids[0].tolist()))

    def clean_forward(self, ids: torch.Tensor, spec: CaptureSpec | None = None,
                      should_stop: ShouldStop | None = None,
                      extra_hooks: Sequence[Hook] = (), cache: bool = True) -> tuple[CleanPass, torch.Tensor]:
        """Run the model on `ids` recording every layer's call, plus `extra_hooks`. Cached unless
        `cache` is False, which `extra_hooks` that change the computation need (the pass is then an
        edited one; each recorded layer input is what the layer received before its own pre-hooks).
        Returns the pass and the last layer's raw output (in the autograd graph when grad is
        enabled; the stored copy is detached)."""
        calls: list[LayerCall] = []
        captures = Captures()
        holder: dict[str, torch.Tensor] = {}

        def record_call(module, args, kwargs):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            call = LayerCall.of(args, kwargs)
            call.hidden = call.hidden.detach()
            calls.append(call)

        def record_final(module, args, output):
            holder["final"] = first(output)

        layers = self.adapter.layers
        hooks = [Hook("pre", layer, record_call) for layer in layers]
        hooks.append(Hook("fwd", layers[-1], record_final))
        if spec is not None and not spec.empty:
            hooks += self.capture_hooks(spec, captures, 0)
        hooks += list(extra_hooks)
        with installed(self.align_hooks() + hooks):
            cast(Any, self.adapter.model).base_model(input_ids=ids, use_cache=False)  # a PreTrainedModel
        clean = CleanPass(ids=ids, calls=calls, final=holder["final"].detach(),
                          spec=spec if spec is not None and not spec.empty else None,
                          captures=captures)
        if cache:
            self.clean_cache.put(tuple(ids[0].tolist()), clean)
        return clean, holder["final"]

    def align_hooks(self) -> list[Hook]:
        """Layers split over devices: move each layer's inputs to its device before any edit sees them.
        Found once: the placement is fixed when the model is loaded, and finding it walks every
        layer's parameters (a few milliseconds a toggle)."""
        if self._align is None:
            self._align = align_hooks(self.model.get_input_embeddings(), self.adapter.layers)
        return list(self._align)

    def run_layers(self, calls: list[LayerCall], start: int, hidden: torch.Tensor, hooks: list[Hook],
                   should_stop: ShouldStop | None, stop: int | None = None) -> torch.Tensor:
        """Re-run decoder layers start..stop-1 (stop None: to the last) from `hidden` with the cached
        per-layer arguments."""
        return replay(self.adapter.layers, calls, start, hidden, self.align_hooks() + hooks, should_stop, stop)

    def source_acts(self, ids: torch.Tensor, edit_hooks: Sequence[Hook] | None = None) -> SourceActs:
        """Full-sequence activations of `ids` at every site: cached, or, under `edit_hooks`, of a
        fresh edited pass (not cached)."""
        key = tuple(ids[0].tolist())
        cached = self.source_cache.get(key) if edit_hooks is None else None
        if cached is not None:
            return cached
        a = self.adapter
        n = a.n_layers
        stores: dict[str, list] = {name: [None] * n for name in ("heads", "attn", "mlp", "resid_post")}

        def keep(store: list, layer: int):
            def observe(x: torch.Tensor) -> None:
                store[layer] = x.detach()

            return observe

        hooks: list[Hook] = []
        for layer in range(n):
            for kind, store in stores.items():
                hooks += Site(kind, layer).observe(a, keep(store, layer))  # type: ignore[arg-type]
        clean: CleanPass | None
        if edit_hooks is not None:  # edits first: the observers see edited values
            clean = self.clean_forward(ids, extra_hooks=[*edit_hooks, *hooks], cache=False)[0]
        elif (clean := self.cached_clean(ids)) is not None:
            self.run_layers(clean.calls, 0, clean.calls[0].hidden, hooks, None)
        else:
            clean = self.clean_forward(ids, extra_hooks=hooks)[0]
        acts = SourceActs(ids=ids, z=stores["heads"], attn_out=stores["attn"], mlp_out=stores["mlp"],
                          resid_pre=[c.hidden for c in clean.calls], resid_post=stores["resid_post"])
        return acts if edit_hooks is not None else self.source_cache.put(key, acts)

    def source_qkv(self, ids: torch.Tensor, edit_hooks: Sequence[Hook] | None = None) -> SourceQKV:
        """Every layer's queries, keys and values on `ids`: cached, or, under `edit_hooks`, of a fresh
        edited pass (not cached; the edits' own query / key / value edits are seen)."""
        key = tuple(ids[0].tolist())
        cached = self.qkv_cache.get(key) if edit_hooks is None else None
        if cached is not None:
            return cached
        n = self.adapter.n_layers
        stores: dict[str, list] = {name: [None] * n for name in ("q", "k", "v")}

        def keep(layer: int):
            def observe(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
                stores["q"][layer], stores["k"][layer], stores["v"][layer] = (
                    query.detach().clone(), key.detach().clone(), value.detach().clone())
                return query, key, value

            return observe

        hooks = [Hook("qkv", self.adapter.layer_module(layer, "attn"), keep(layer)) for layer in range(n)]
        if edit_hooks is not None:  # edits first: the recorders see edited values
            self.clean_forward(ids, extra_hooks=[*edit_hooks, *hooks], cache=False)
        elif (clean := self.cached_clean(ids)) is not None:
            self.run_layers(clean.calls, 0, clean.calls[0].hidden, hooks, None)
        else:
            self.clean_forward(ids, extra_hooks=hooks)
        acts = SourceQKV(ids=ids, query=stores["q"], key=stores["k"], value=stores["v"])
        return acts if edit_hooks is not None else self.qkv_cache.put(key, acts)

    def reference_means(self, prompts: Sequence[str]) -> ReferenceMeans:
        key = tuple(prompts)
        cached = self.means_cache.get(key)
        if cached is not None:
            return cached
        n = self.adapter.n_layers
        sums_z: list = [0.0] * n
        sums_attn: list = [0.0] * n
        sums_mlp: list = [0.0] * n
        count = 0
        for prompt in prompts:
            acts = self.source_acts(self.prompt_ids(prompt)[0])
            count += acts.ids.shape[1]
            for layer in range(n):
                sums_z[layer] = sums_z[layer] + acts.z[layer][0].sum(0)
                sums_attn[layer] = sums_attn[layer] + acts.attn_out[layer][0].sum(0)
                sums_mlp[layer] = sums_mlp[layer] + acts.mlp_out[layer][0].sum(0)
        means = ReferenceMeans(z=[s / count for s in sums_z], attn_out=[s / count for s in sums_attn],
                               mlp_out=[s / count for s in sums_mlp])
        return self.means_cache.put(key, means)

    # ------------------------------------------------------------------ logits and metrics

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.adapter.final_norm(hidden)
        for module in self.adapter.post_final:
            out = module(out)
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Unembed residual rows [..., d_model] -> float32 logits [..., vocab]."""
        return logits_of(self.adapter, self.normed(hidden))

    def metric_of_resid(self, hidden: torch.Tensor, info: MetricInfo,
                        reference: torch.Tensor | None = None) -> torch.Tensor:
        """Metric of final-layer residual rows [row, d_model] -> [row] (`reference`: see
        `metric_tensor`). A logit difference needs only the target and foil rows of the
        unembedding, not the whole vocabulary."""
        if info.kind != "logit_diff":
            return metric_tensor(self.logits(hidden), info, reference)
        ids = [info.target_id, info.foil_id]
        unembed = self.adapter.unembed
        weight, bias = loaded(unembed, "weight"), loaded(unembed, "bias")
        assert weight is not None  # an unembedding always has a weight
        normed = self.normed(hidden).to(weight.device)
        logits = torch.nn.functional.linear(normed, weight[ids],
                                            bias[ids] if bias is not None else None).float()  # [row, 2]
        logits = softcapped(logits, self.adapter.final_softcap)
        return logits[:, 0] - logits[:, 1]

    def source_metric(self, interventions: Sequence[Intervention], metric: Metric | None,
                      reference: torch.Tensor) -> float | None:
        """The metric on the one prompt the patches among `interventions` copy from, run without
        interventions (its clean pass is the one the patches read, so it is cached); None without a
        measurable metric or when the patches read no prompt or several. `reference` [vocab]: the
        base run's logits (for kl)."""
        sources = {iv.patch_source for iv in interventions} - {None}
        if len(sources) != 1 or metric is None or not metric.measurable:
            return None
        ids, _ = self.prompt_ids(sources.pop())  # type: ignore[arg-type]
        info = self.metric_info(metric, ids.shape[1])
        clean = self.clean(ids)
        logits = clean.readout_logits.get(info.position)
        if logits is None:
            logits = clean.readout_logits[info.position] = self.logits(clean.final[:, info.position])[0]  # [vocab]
        return metric_value(logits.float(), info, reference.float())

    def prediction(self, logits: torch.Tensor, info: MetricInfo | None, top_k: int,
                   reference: torch.Tensor | None = None) -> Prediction:
        log_probs = torch.log_softmax(logits, dim=-1)
        k = max(1, min(top_k, logits.shape[-1]))
        top_lp, top_ids = log_probs.topk(k)
        top = [TokenProb(int(i), self.decode_token(int(i)), float(lp.exp()), float(logits[i]))
               for lp, i in zip(top_lp, top_ids)]
        return Prediction(top=top, logits=logits.cpu().numpy(), metric=metric_value(logits, info, reference))

    def capture_hooks(self, spec: CaptureSpec, captures: Captures, start: int,
                      knockouts: dict[int, list] | None = None) -> list[Hook]:
        """See `captures.capture_hooks`."""
        return capture_hooks(self.adapter, spec, captures, start, knockouts)

    def token_logprobs(self, ids: torch.Tensor, final: torch.Tensor) -> np.ndarray:
        logits = self.logits(final[0])  # [pos, vocab]
        log_probs = torch.log_softmax(logits, dim=-1)
        out = np.full(ids.shape[1], np.nan, dtype=np.float32)
        if ids.shape[1] > 1:
            picked = log_probs[:-1].gather(-1, ids[0, 1:, None].to(log_probs.device))[:, 0]
            out[1:] = picked.cpu().numpy()
        return out


def metric_value(logits: torch.Tensor, info: MetricInfo | None,
                 reference: torch.Tensor | None = None) -> float | None:
    """Metric of float logits [vocab]."""
    if info is None:
        return None
    return float(metric_tensor(logits[None], info, reference)[0])


def metric_tensor(logits: torch.Tensor, info: MetricInfo, reference: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, vocab] float logits -> [batch] metric values. `reference` [vocab] is the clean run's
    logits, which "kl" measures the divergence from."""
    if info.kind == "kl":
        if reference is None:
            raise ValueError("the kl metric needs the clean run's logits")
        log_p = torch.log_softmax(reference.float(), dim=-1)  # [vocab]
        log_q = torch.log_softmax(logits, dim=-1)  # [batch, vocab]
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    target = logits[:, info.target_id]
    if info.kind == "logit_diff":
        return target - logits[:, info.foil_id]
    log_p = target - torch.logsumexp(logits, dim=-1)
    return log_p.exp() if info.kind == "prob" else -log_p
