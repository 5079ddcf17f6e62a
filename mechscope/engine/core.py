"""The resident model: runs with interventions and views, incremental recompute from cached layer inputs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mechscope.engine import attention, readouts
from mechscope.engine.adapters import Adapter
from mechscope.engine.addresses import parse_address
from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import Cancelled, InterventionError, OutOfMemory, PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    Intervention,
    Metric,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.placement import align_hooks, execution_device, loaded, placement_summary
from mechscope.engine.results import (
    ComputeInfo,
    MetricInfo,
    ModelInfo,
    Prediction,
    RunResult,
    TokenProb,
)
from mechscope.engine.views import Views

ShouldStop = Callable[[], bool]

DEFAULT_REFERENCE_PROMPTS: tuple[str, ...] = (
    "The weather today is sunny with a light breeze from the west.",
    "She opened the door and walked into the quiet kitchen.",
    "In 1969, astronauts landed on the moon for the first time.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "After the meeting, the team went out for lunch together.",
    "Python is a popular programming language for data science.",
    "The river flows through the valley toward the distant sea.",
    "He forgot his umbrella, so he got wet walking home.",
)

_CLEAN_CACHE_SIZE = 8
_SOURCE_CACHE_SIZE = 4


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


@dataclass
class LayerCall:
    """The positional and keyword arguments the model passed one decoder layer."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def call(self, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.args:
            out = layer(hidden, *self.args[1:], **self.kwargs)
        else:
            out = layer(**{**self.kwargs, "hidden_states": hidden})
        return out[0] if isinstance(out, tuple) else out


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


@dataclass
class SourceActs:
    """Full-sequence activations of a prompt, used as patch / resample sources."""

    ids: torch.Tensor  # [1, pos]
    z: list[torch.Tensor]  # per layer [1, pos, H*d_head]
    attn_out: list[torch.Tensor]  # per layer [1, pos, d_model]
    mlp_out: list[torch.Tensor]  # per layer [1, pos, d_model]
    resid_pre: list[torch.Tensor]  # per layer [1, pos, d_model]
    resid_post: list[torch.Tensor]  # per layer [1, pos, d_model]


@dataclass
class ReferenceMeans:
    """Mean activations over every token of the reference prompts (for mean ablation)."""

    z: list[torch.Tensor]  # per layer [H*d_head]
    attn_out: list[torch.Tensor]  # per layer [d_model]
    mlp_out: list[torch.Tensor]  # per layer [d_model]


def _replace_output(output, new):
    """Swap the tensor part of a module output (attention modules return (out, weights))."""
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class Engine:
    """A causal LM kept resident, answering run / sweep / generate requests with plain data.

    Thread-safe: `lock` serialises model access. `should_stop` callbacks are checked between layers.
    """

    def __init__(self, model, tokenizer, source: str = "<memory>", weights_digest: str = "",
                 name: str | None = None) -> None:
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.weights_digest = weights_digest
        self.adapter = Adapter(model)
        self.lock = threading.RLock()
        self.vectors: dict[str, np.ndarray] = {}
        self.reference_prompts: list[str] = list(DEFAULT_REFERENCE_PROMPTS)
        self._clean_cache: OrderedDict[tuple[int, ...], CleanPass] = OrderedDict()
        self._source_cache: OrderedDict[tuple[int, ...], SourceActs] = OrderedDict()
        self._means: tuple[tuple[str, ...], ReferenceMeans] | None = None
        self._token_cache = _BoundedCache(256)  # tokenised prompts and metrics
        self._seq_len = 0  # tokens in the pass under way (OPT's MLP works on flattened [batch*pos, d])
        attention.register()
        model.set_attn_implementation(attention.ATTN_IMPLEMENTATION)
        param = next(model.parameters())
        self.device = execution_device(model.get_input_embeddings())  # params may be on meta under offload
        self.dtype = param.dtype
        a = self.adapter
        name = name or getattr(model.config, "_name_or_path", "") or source
        self.info = ModelInfo(
            source=source,
            name=str(name),
            architecture=type(model).__name__,
            family=a.family.name,
            n_layers=a.n_layers,
            n_heads=a.n_heads,
            n_kv_heads=a.n_kv_heads,
            d_model=a.d_model,
            d_head=a.d_head,
            d_mlp=a.d_mlp,
            vocab_size=a.vocab_size,
            max_context=a.max_context,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            placement=placement_summary(model, a.family.layers, a.n_layers),
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str = "demo", device: str = "auto", dtype: str = "auto",
             device_map=None, trust_remote_code: bool = False, progress=None, max_memory=None,
             offload_folder=None) -> Engine:
        """Load `source` ("demo", a HF folder, a .gguf file or a cached hub id); LoadError on failure."""
        from mechscope.engine.loading import load_model

        model = load_model(source, device=device, dtype=dtype, device_map=device_map,
                           trust_remote_code=trust_remote_code, progress=progress,
                           max_memory=max_memory, offload_folder=offload_folder)
        if progress is not None:
            progress("preparing engine", None)
        return cls(model.model, model.tokenizer, source=model.source,
                   weights_digest=model.weights_digest, name=model.name)

    @contextlib.contextmanager
    def guard(self):
        """Model work under the lock; running out of memory drops the caches and becomes OutOfMemory."""
        with self.lock:
            if self.model.config._attn_implementation != attention.ATTN_IMPLEMENTATION:
                # Someone switched the model's attention; patterns and knockouts need ours back.
                self.model.set_attn_implementation(attention.ATTN_IMPLEMENTATION)
            try:
                yield
            except torch.OutOfMemoryError:
                self._clean_cache.clear()
                self._source_cache.clear()
                self._means = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise OutOfMemory(
                    f"out of memory on {self.device}; the engine dropped its caches and is still usable "
                    "(try a shorter prompt or fewer views)") from None

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        """A prompt's token ids (with the tokenizer's special tokens) and their text pieces."""
        ids = self.tokenizer(text).input_ids
        return list(ids), [self.decode_token(i) for i in ids]

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    def _continuation_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _prompt_ids(self, prompt: str) -> tuple[torch.Tensor, int | None]:
        """Token ids [1, pos] of a prompt (cut to the context, keeping the end) and the original length
        when it was cut. Memoised: the live view re-runs the same prompt on every toggle."""
        cached = self._token_cache.get(("prompt", prompt))
        if cached is None:
            cached = self._token_cache[("prompt", prompt)] = self._tokenize_prompt(prompt)
        return cached

    def _tokenize_prompt(self, prompt: str) -> tuple[torch.Tensor, int | None]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt is empty")
        ids = self.tokenizer(prompt).input_ids
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
        cached = self._token_cache.get(key)
        if cached is None:
            cached = self._token_cache[key] = self._metric_info(metric, n_pos)
        return cached

    def _metric_info(self, metric: Metric, n_pos: int) -> MetricInfo:
        if not metric.target:
            raise PromptError("the metric needs a target token")
        target = self._continuation_ids(metric.target)
        if not target:
            raise PromptError(f"target {metric.target!r} has no tokens")
        foil: list[int] = []
        if metric.foil:
            foil = self._continuation_ids(metric.foil)
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

    # ------------------------------------------------------------------ public API

    def set_reference_prompts(self, prompts: Sequence[str]) -> None:
        prompts = [p for p in prompts if isinstance(p, str) and p.strip()]
        if not prompts:
            raise PromptError("the reference set for mean ablation needs at least one prompt")
        self.reference_prompts = list(prompts)

    def add_vector(self, name: str, array) -> None:
        vector = np.asarray(array, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.adapter.d_model:
            raise InterventionError(
                f"steering vector {name!r} has width {vector.shape[0]}, the model needs {self.adapter.d_model}"
            )
        if not np.all(np.isfinite(vector)):
            raise InterventionError(f"steering vector {name!r} has non-finite values")
        self.vectors[name] = vector

    def build_steering_vector(self, name: str, layer: int, positive: Sequence[str],
                              negative: Sequence[str]) -> np.ndarray:
        """Mean difference of the residual entering `layer` at the last token, positive minus negative."""
        if not 0 <= layer < self.adapter.n_layers:
            raise InterventionError(f"steering layer {layer} is out of range 0..{self.adapter.n_layers - 1}")
        if not positive or not negative:
            raise PromptError("a steering vector needs at least one positive and one negative prompt")
        with self.lock, torch.no_grad():
            def mean_resid(prompts: Sequence[str]) -> torch.Tensor:
                rows = [self._clean(self._prompt_ids(p)[0]).calls[layer].hidden[0, -1].float() for p in prompts]
                return torch.stack(rows).mean(0)

            vector = (mean_resid(positive) - mean_resid(negative)).cpu().numpy()
        self.add_vector(name, vector)
        return self.vectors[name]

    def run(
        self,
        prompt: str,
        interventions: Iterable[Intervention] = (),
        views: Views | None = None,
        metric: Metric | None = None,
        corrupted: str | None = None,
        top_k: int = 10,
        should_stop: ShouldStop | None = None,
    ) -> RunResult:
        """Run `prompt` with `interventions`; return predictions, baseline, metric and the views asked for."""
        views = views or Views()
        started = time.perf_counter()
        active = [iv for iv in interventions if iv.enabled]
        with self.guard(), torch.no_grad():
            ids, truncated_from = self._prompt_ids(prompt)
            n_pos = ids.shape[1]
            info = self.metric_info(metric, n_pos) if metric is not None and metric.target else None
            readout = info.position if info is not None else n_pos - 1
            spec = self._spec(views, readout)
            was_cached = self._is_cached(ids, spec)
            clean = self._clean(ids, spec, should_stop)
            edits = self._edits(active, ids, corrupted)
            if edits.hooks or edits.knockouts:
                start = edits.start
                captures = Captures()
                hooks = edits.hooks + self._capture_hooks(spec, captures, start, edits.knockouts)
                final = self._run_layers(clean.calls, start, clean.calls[start].hidden, hooks,
                                         should_stop)
                captures = captures.merged_below(clean.captures, start)
                mode = "incremental" if start > 0 else "full"
            else:
                start = 0
                final = clean.final
                captures = clean.captures
                mode = "cached" if was_cached else "full"
            base_logits = clean.readout_logits.get(readout)
            if base_logits is None:
                base_logits = clean.readout_logits[readout] = self._logits(clean.final[:, readout])[0]  # [vocab]
            if clean.tokens is None:
                clean.tokens = [self.decode_token(i) for i in ids[0].tolist()]
            logits = self._logits(final[:, readout])[0] if final is not clean.final else base_logits
            baseline = clean.baselines.get((info, top_k))
            if baseline is None:
                baseline = clean.baselines[(info, top_k)] = self._prediction(base_logits, info, top_k)
            prediction = baseline if logits is base_logits else self._prediction(logits, info, top_k)
            result = RunResult(
                prompt=prompt,
                token_ids=ids[0].tolist(),
                tokens=list(clean.tokens),
                prediction=prediction,
                baseline=baseline,
                metric_info=info,
                interventions=[iv.to_dict() for iv in active],
                truncated_from=truncated_from,
            )
            if views.logprobs:
                result.token_logprobs = self._token_logprobs(ids, final)
            for address in views.attention:
                addr = parse_address(address)
                self._check_head(addr.layer, addr.head, f"attention view {address}")
                pattern = captures.controls[addr.layer].patterns[addr.head][0]
                result.attention[address] = pattern.float().cpu().numpy()
            if views.sinks:
                result.sink_scores = np.stack(
                    [captures.controls[layer].sink[0].float().cpu().numpy()
                     for layer in range(self.adapter.n_layers)])
            edited = final is not clean.final

            def clean_view(key: tuple, compute: Callable[[], Any]) -> Any:
                """A view of the run without edits, computed once per clean pass."""
                if key not in clean.views:
                    clean.views[key] = compute()
                return clean.views[key]

            if views.logit_lens:
                key = ("lens", readout, info, views.lens_k)

                def clean_lens():
                    return readouts.logit_lens(self, clean.captures, readout, info, views.lens_k)

                if not edited:
                    result.logit_lens = clean_view(key, clean_lens)
                else:  # rows below the first edited layer are the clean run's
                    below = clean_view(key, clean_lens) if start > 0 else None
                    result.logit_lens = readouts.logit_lens(self, captures, readout, info, views.lens_k,
                                                            below, start)
            if views.attribution:
                def attribution():
                    return readouts.attribution(self, captures, clean, final, readout, info,
                                                edits.resid_deltas, logits)

                result.attribution = (attribution() if edited
                                      else clean_view(("attribution", readout, info), attribution))
            if views.stats:
                def stats():
                    return readouts.activation_stats(self, captures)

                result.stats = stats() if edited else clean_view(("stats",), stats)
            result.compute = ComputeInfo(time.perf_counter() - started, mode, start)
            return result

    def sweep(self, kind: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
              on_progress=None, should_stop: ShouldStop | None = None):
        """Head patching [layer, head], residual patching [layer, pos] or AtP; see `sweeps.sweep`."""
        from mechscope.engine.sweeps import sweep

        return sweep(self, kind, clean, corrupt, metric, direction, on_progress, should_stop)

    def generate(self, prompt: str, interventions: Iterable[Intervention] = (), max_new_tokens: int = 20,
                 temperature: float = 0.0, seed: int = 0, corrupted: str | None = None, on_token=None,
                 should_stop: ShouldStop | None = None):
        """Generate with interventions active, streaming tokens to `on_token`; see `sweeps.generate`."""
        from mechscope.engine.sweeps import generate

        return generate(self, prompt, interventions, max_new_tokens, temperature, seed, corrupted,
                        on_token, should_stop)

    # ------------------------------------------------------------------ passes

    def _forward(self, ids: torch.Tensor, hooks: list[Hook]) -> torch.Tensor:
        """A full forward of `ids` with `hooks`; returns the last layer's output [batch, pos, d_model]."""
        holder: dict[str, torch.Tensor] = {}

        def record_final(module, args, output):
            holder["final"] = _first(output)

        self._seq_len = ids.shape[1]
        with installed(self._align_hooks() + hooks + [Hook("fwd", self.adapter.layers[-1], record_final)]):
            self.adapter.model.base_model(input_ids=ids, use_cache=False)
        return holder["final"]

    def _spec(self, views: Views, readout: int) -> CaptureSpec:
        heads = frozenset((parse_address(a).layer, parse_address(a).head) for a in views.attention)
        for layer, head in heads:
            self._check_head(layer, head, f"attention view L{layer}.H{head}")
        return CaptureSpec(readout=readout, heads=heads, sinks=views.sinks, dla=views.attribution,
                           lens=views.logit_lens, stats=views.stats)

    def _is_cached(self, ids: torch.Tensor, spec: CaptureSpec) -> bool:
        clean = self._clean_cache.get(tuple(ids[0].tolist()))
        return clean is not None and (spec.empty or (clean.spec is not None and clean.spec.covers(spec)))

    def _clean(self, ids: torch.Tensor, spec: CaptureSpec | None = None,
               should_stop: ShouldStop | None = None) -> CleanPass:
        """The no-intervention pass of `ids`, from the cache when it recorded at least `spec`."""
        cached = self._cached_clean(ids)
        if cached is not None:
            if spec is None or spec.empty or (cached.spec is not None and cached.spec.covers(spec)):
                return cached
            if cached.spec is not None and cached.spec.readout == spec.readout:
                spec = cached.spec.union(spec)
        return self._clean_forward(ids, spec, should_stop)[0]

    def _cached_clean(self, ids: torch.Tensor) -> CleanPass | None:
        key = tuple(ids[0].tolist())
        cached = self._clean_cache.get(key)
        if cached is not None:
            self._clean_cache.move_to_end(key)
        return cached

    def _clean_forward(self, ids: torch.Tensor, spec: CaptureSpec | None = None,
                       should_stop: ShouldStop | None = None,
                       extra_hooks: Sequence[Hook] = ()) -> tuple[CleanPass, torch.Tensor]:
        """Run the model on `ids` recording every layer's call (cached), plus `extra_hooks`, which must
        not change the computation. Returns the pass and the last layer's raw output (in the autograd
        graph when grad is enabled; the cached copy is detached)."""
        calls: list[LayerCall] = []
        captures = Captures()
        holder: dict[str, torch.Tensor] = {}

        def record_call(module, args, kwargs):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            if args:
                args = (args[0].detach(), *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
            calls.append(LayerCall(args, dict(kwargs)))

        def record_final(module, args, output):
            holder["final"] = _first(output)

        layers = self.adapter.layers
        hooks = [Hook("pre", layer, record_call) for layer in layers]
        hooks.append(Hook("fwd", layers[-1], record_final))
        if spec is not None and not spec.empty:
            hooks += self._capture_hooks(spec, captures, 0)
        hooks += list(extra_hooks)
        self._seq_len = ids.shape[1]
        with installed(self._align_hooks() + hooks):
            self.adapter.model.base_model(input_ids=ids, use_cache=False)
        clean = CleanPass(ids=ids, calls=calls, final=holder["final"].detach(),
                          spec=spec if spec is not None and not spec.empty else None,
                          captures=captures)
        self._clean_cache[tuple(ids[0].tolist())] = clean
        while len(self._clean_cache) > _CLEAN_CACHE_SIZE:
            self._clean_cache.popitem(last=False)
        return clean, holder["final"]

    def _run_layers(self, calls: list[LayerCall], start: int, hidden: torch.Tensor, hooks: list[Hook],
                    should_stop: ShouldStop | None) -> torch.Tensor:
        """Re-run decoder layers start..N-1 from `hidden` with the cached per-layer arguments."""
        layers = self.adapter.layers
        self._seq_len = hidden.shape[1]
        with installed(self._align_hooks() + hooks):
            for index in range(start, len(layers)):
                if should_stop is not None and should_stop():
                    raise Cancelled("stopped")
                hidden = calls[index].call(layers[index], hidden)
        return hidden

    def _align_hooks(self) -> list[Hook]:
        """Layers split over devices: move each layer's inputs to its device before any edit sees them."""
        return align_hooks(self.model.get_input_embeddings(), self.adapter.layers)

    def _seq_view(self, x: torch.Tensor) -> torch.Tensor:
        """[batch*pos, d] -> [batch, pos, d] for modules that see flattened tokens; 3-d input unchanged."""
        return x.view(-1, self._seq_len, x.shape[-1]) if x.dim() == 2 else x

    def _normed(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.adapter.final_norm(hidden)
        for module in self.adapter.post_final:
            out = module(out)
        return out

    def _metric_of_resid(self, hidden: torch.Tensor, info: MetricInfo) -> torch.Tensor:
        """Metric of final-layer residual rows [row, d_model] -> [row]. A logit difference needs
        only the target and foil rows of the unembedding, not the whole vocabulary."""
        if info.kind != "logit_diff":
            return self._metric_tensor(self._logits(hidden), info)
        ids = [info.target_id, info.foil_id]
        unembed = self.adapter.unembed
        weight, bias = loaded(unembed, "weight"), loaded(unembed, "bias")
        normed = self._normed(hidden).to(weight.device)
        logits = torch.nn.functional.linear(normed, weight[ids],
                                            bias[ids] if bias is not None else None).float()  # [row, 2]
        cap = self.adapter.final_softcap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits[:, 0] - logits[:, 1]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Unembed residual rows [..., d_model] -> float32 logits [..., vocab]."""
        logits = self.adapter.unembed(self._normed(hidden)).float()
        cap = self.adapter.final_softcap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _prediction(self, logits: torch.Tensor, info: MetricInfo | None, top_k: int) -> Prediction:
        log_probs = torch.log_softmax(logits, dim=-1)
        k = max(1, min(top_k, logits.shape[-1]))
        top_lp, top_ids = log_probs.topk(k)
        top = [TokenProb(int(i), self.decode_token(int(i)), float(lp.exp()), float(logits[i]))
               for lp, i in zip(top_lp, top_ids)]
        return Prediction(top=top, logits=logits.cpu().numpy(), metric=self._metric_value(logits, info))

    @staticmethod
    def _metric_value(logits: torch.Tensor, info: MetricInfo | None) -> float | None:
        """Metric of float logits [vocab]; also works batched on [batch, vocab] via `_metric_tensor`."""
        if info is None:
            return None
        return float(Engine._metric_tensor(logits[None], info)[0])

    @staticmethod
    def _metric_tensor(logits: torch.Tensor, info: MetricInfo) -> torch.Tensor:
        """[batch, vocab] float logits -> [batch] metric values."""
        target = logits[:, info.target_id]
        if info.kind == "logit_diff":
            return target - logits[:, info.foil_id]
        log_p = target - torch.logsumexp(logits, dim=-1)
        return log_p.exp() if info.kind == "prob" else -log_p

    def _token_logprobs(self, ids: torch.Tensor, final: torch.Tensor) -> np.ndarray:
        logits = self._logits(final[0])  # [pos, vocab]
        log_probs = torch.log_softmax(logits, dim=-1)
        out = np.full(ids.shape[1], np.nan, dtype=np.float32)
        if ids.shape[1] > 1:
            picked = log_probs[:-1].gather(-1, ids[0, 1:, None].to(log_probs.device))[:, 0]
            out[1:] = picked.cpu().numpy()
        return out

    # ------------------------------------------------------------------ captures

    def _capture_hooks(self, spec: CaptureSpec, captures: Captures, start: int,
                       knockouts: dict[int, list] | None = None) -> list[Hook]:
        """Hooks recording what `spec` asks for at layers >= start (registered after edits, so they see
        them), plus the attention controls that apply `knockouts` (layer -> edges)."""
        a = self.adapter
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
                hooks.append(Hook("pre", a.o_proj(layer), self._store_pre(captures.z, layer, p)))
                hooks.append(Hook("fwd", a.layer_module(layer, "attn"), self._store(captures.attn_raw, layer, p)))
                hooks.append(Hook("fwd", a.layer_module(layer, "attn_out"), self._store(captures.attn_out, layer, p)))
                hooks.append(Hook("fwd", a.layer_module(layer, "mlp_out"), self._store(captures.mlp_out, layer, p)))
            if spec.lens or spec.stats:
                hooks.append(Hook("fwd", a.layers[layer], self._store_resid(captures, layer, spec)))
        return hooks

    def _store_pre(self, store: dict, layer: int, pos: int):
        def hook(module, args, kwargs):
            store[layer] = self._seq_view(args[0])[0, pos].detach()

        return hook

    def _store(self, store: dict, layer: int, pos: int):
        def hook(module, args, output):
            store[layer] = self._seq_view(_first(output))[0, pos].detach()

        return hook

    @staticmethod
    def _store_resid(captures: Captures, layer: int, spec: CaptureSpec):
        def hook(module, args, output):
            hidden = _first(output)[0].detach()  # [pos, d_model]
            if spec.lens:
                captures.resid_post[layer] = hidden[spec.readout]
            if spec.stats:
                flat = hidden.float()
                captures.norms[layer] = flat.norm(dim=-1)
                values, index = flat.abs().flatten().topk(min(8, flat.numel()))
                captures.top_acts[layer] = (flat.flatten()[index], index)
                captures.abs_median[layer] = float(flat.abs().median())

        return hook

    # ------------------------------------------------------------------ interventions

    def _check_head(self, layer: int, head: int | None, what: str) -> None:
        a = self.adapter
        if not 0 <= layer < a.n_layers:
            raise InterventionError(f"{what}: layer {layer} is out of range 0..{a.n_layers - 1}")
        if head is not None and not 0 <= head < a.n_heads:
            raise InterventionError(f"{what}: head {head} is out of range 0..{a.n_heads - 1}")

    @staticmethod
    def _resolve_positions(positions, n_pos: int, what: str) -> list[int] | None:
        if positions is None:
            return None
        out = []
        for p in positions:
            if not -n_pos <= p < n_pos:
                raise InterventionError(f"{what}: position {p} is outside the prompt ({n_pos} tokens)")
            out.append(p % n_pos)
        return out

    def validate(self, interventions: Iterable[Intervention], prompt: str,
                 corrupted: str | None = None) -> None:
        """Raise InterventionError naming the first intervention that does not fit.

        Checks ranges, shapes, prompt lengths and vector names only (no forward pass), so it does not
        wait for the model lock: the UI can check an edit while a sweep runs."""
        ids, _ = self._prompt_ids(prompt)
        self._edits([iv for iv in interventions if iv.enabled], ids, corrupted, dry_run=True)

    def _edits(self, interventions: list[Intervention], ids: torch.Tensor, corrupted: str | None,
               dry_run: bool = False) -> _Edits:
        edits = _Edits(start=self.adapter.n_layers)
        n_pos = ids.shape[1]
        for iv in interventions:
            what = iv.label
            try:
                self._add_edit(edits, iv, ids, n_pos, corrupted, what, dry_run)
            except (PromptError, ValueError) as exc:
                raise InterventionError(f"{what}: {exc}") from None
        return edits

    def _source(self, prompt: str, n_pos: int, positions, what: str,
                dry_run: bool = False) -> tuple[SourceActs | None, list[int]]:
        """Source activations (None in a dry run) and the source positions to read (explicit, so
        generation can grow the sequence past the source's length)."""
        ids, _ = self._prompt_ids(prompt)
        if positions is None and ids.shape[1] != n_pos:
            raise InterventionError(
                f"{what}: the source prompt has {ids.shape[1]} tokens and this prompt {n_pos}; "
                "give explicit positions to patch prompts of different lengths")
        if positions is None:
            positions = range(n_pos)
        src_positions = self._resolve_positions(positions, ids.shape[1], what + " (source)")
        return (None if dry_run else self._source_acts(ids)), src_positions

    def _add_edit(self, edits: _Edits, iv: Intervention, ids: torch.Tensor, n_pos: int,
                  corrupted: str | None, what: str, dry_run: bool) -> None:
        a = self.adapter
        if isinstance(iv, (HeadAblation, HeadScale)):
            self._check_head(iv.layer, iv.head, what)
            positions = self._resolve_positions(iv.positions, n_pos, what)
            source = None
            if isinstance(iv, HeadAblation) and iv.mode == "resample":
                if not corrupted:
                    raise InterventionError(f"{what}: resample ablation needs a corrupted prompt")
                acts, src_pos = self._source(corrupted, n_pos, iv.positions, what, dry_run)
                source = (acts.z[iv.layer], src_pos) if acts is not None else None
                positions = positions if positions is not None else list(range(n_pos))
            if dry_run:
                return
            mean = self._reference_means().z[iv.layer] if isinstance(iv, HeadAblation) and iv.mode == "mean" else None
            edits.add(iv.layer, Hook("pre", a.o_proj(iv.layer),
                                     _head_edit(iv, a.n_heads, a.d_head, positions, mean, source)))
        elif isinstance(iv, ComponentAblation):
            self._check_head(iv.layer, None, what)
            positions = self._resolve_positions(iv.positions, n_pos, what)
            site = "attn_out" if iv.component == "attn" else "mlp_out"
            replacement = None
            src_pos = None
            if iv.mode == "resample":
                if not corrupted:
                    raise InterventionError(f"{what}: resample ablation needs a corrupted prompt")
                acts, src_pos = self._source(corrupted, n_pos, iv.positions, what, dry_run)
                replacement = getattr(acts, site)[iv.layer] if acts is not None else None
                positions = positions if positions is not None else list(range(n_pos))
            if dry_run:
                return
            if iv.mode == "mean":
                replacement = getattr(self._reference_means(), site)[iv.layer]
            edits.add(iv.layer, Hook("fwd", a.layer_module(iv.layer, site),
                                     _replace_edit(positions, replacement, src_pos, iv.mode, self._seq_view)))
        elif isinstance(iv, ActivationPatch):
            addr = parse_address(iv.address)
            self._check_head(addr.layer, addr.head, what)
            positions = self._resolve_positions(iv.positions, n_pos, what)
            acts, src_pos = self._source(iv.source_prompt, n_pos, iv.positions, what, dry_run)
            positions = positions if positions is not None else list(range(n_pos))
            if dry_run:
                return
            if addr.site == "head":
                edits.add(addr.layer, Hook("pre", a.o_proj(addr.layer),
                                           _head_edit(HeadAblation(addr.layer, addr.head, "resample"), a.n_heads,
                                                      a.d_head, positions, None, (acts.z[addr.layer], src_pos))))
            elif addr.site in ("attn", "mlp"):
                site = "attn_out" if addr.site == "attn" else "mlp_out"
                edits.add(addr.layer, Hook("fwd", a.layer_module(addr.layer, site),
                                           _replace_edit(positions, getattr(acts, site)[addr.layer], src_pos,
                                                         "resample", self._seq_view)))
            elif addr.site in ("resid_pre", "embed"):
                edits.add(addr.layer, Hook("pre", a.layers[addr.layer],
                                           _resid_pre_edit(positions, acts.resid_pre[addr.layer], src_pos,
                                                           edits.resid_delta(addr.layer))))
            else:
                edits.add(addr.layer, Hook("fwd", a.layers[addr.layer],
                                           _replace_edit(positions, acts.resid_post[addr.layer], src_pos,
                                                         "resample", self._seq_view,
                                                         edits.resid_delta(addr.layer))))
        elif isinstance(iv, SteeringVector):
            self._check_head(iv.layer, None, what)
            if iv.vector_id not in self.vectors:
                known = ", ".join(sorted(self.vectors)) or "none"
                raise InterventionError(f"{what}: no steering vector named {iv.vector_id!r} (known: {known})")
            vector = self.vectors[iv.vector_id]
            if vector.shape[0] != a.d_model:
                raise InterventionError(f"{what}: vector width {vector.shape[0]} != d_model {a.d_model}")
            positions = iv.positions
            if positions not in ("all", "last"):
                self._resolve_positions(positions, n_pos, what)
            if dry_run:
                return
            delta = torch.as_tensor(vector, device=execution_device(a.layers[iv.layer]),
                                    dtype=self.dtype) * iv.coeff
            edits.add(iv.layer, Hook("pre", a.layers[iv.layer],
                                     _steer_edit(positions, delta, edits.resid_delta(iv.layer))))
        elif isinstance(iv, AttentionKnockout):
            self._check_head(iv.layer, iv.head, what)
            q, k = self._resolve_positions((iv.query_pos, iv.key_pos), n_pos, what)
            if k > q:
                raise InterventionError(f"{what}: key position {k} is after query position {q} (causal)")
            if q == 0:
                raise InterventionError(f"{what}: the first token attends only to itself; it cannot be knocked out")
            row = {edge[2] for edge in edits.knockouts.get(iv.layer, []) if edge[:2] == (iv.head, q)} | {k}
            if len(row) == q + 1:
                raise InterventionError(
                    f"{what}: this would knock out every key query {q} can attend to; keep at least one")
            edits.knockouts.setdefault(iv.layer, []).append((iv.head, q, k, None))
            edits.start = min(edits.start, iv.layer)
        elif isinstance(iv, NeuronClamp):
            self._check_head(iv.layer, None, what)
            down = a.layer_module(iv.layer, "mlp_down")
            width = down.weight.shape[0] if type(down).__name__ == "Conv1D" else down.weight.shape[1]
            if not 0 <= iv.neuron < width:
                raise InterventionError(f"{what}: neuron {iv.neuron} is out of range 0..{width - 1}")
            positions = self._resolve_positions(iv.positions, n_pos, what)
            if dry_run:
                return
            edits.add(iv.layer, Hook("pre", down, _clamp_edit(positions, iv.neuron, iv.value, self._seq_view)))
        else:
            raise InterventionError(f"{what}: unsupported intervention type {type(iv).__name__}")

    def _source_acts(self, ids: torch.Tensor) -> SourceActs:
        """Full-sequence activations of `ids` at every site, cached."""
        key = tuple(ids[0].tolist())
        cached = self._source_cache.get(key)
        if cached is not None:
            self._source_cache.move_to_end(key)
            return cached
        a = self.adapter
        n = a.n_layers
        z: list = [None] * n
        attn_out: list = [None] * n
        mlp_out: list = [None] * n
        resid_post: list = [None] * n

        def keep_pre(store, layer):
            def hook(module, args, kwargs):
                store[layer] = self._seq_view(args[0]).detach()
            return hook

        def keep(store, layer):
            def hook(module, args, output):
                store[layer] = self._seq_view(_first(output)).detach()
            return hook

        hooks = []
        for layer in range(n):
            hooks.append(Hook("pre", a.o_proj(layer), keep_pre(z, layer)))
            hooks.append(Hook("fwd", a.layer_module(layer, "attn_out"), keep(attn_out, layer)))
            hooks.append(Hook("fwd", a.layer_module(layer, "mlp_out"), keep(mlp_out, layer)))
            hooks.append(Hook("fwd", a.layers[layer], keep(resid_post, layer)))
        clean = self._cached_clean(ids)
        if clean is not None:
            self._run_layers(clean.calls, 0, clean.calls[0].hidden, hooks, None)
        else:
            clean = self._clean_forward(ids, extra_hooks=hooks)[0]
        acts = SourceActs(ids=ids, z=z, attn_out=attn_out, mlp_out=mlp_out,
                          resid_pre=[c.hidden for c in clean.calls], resid_post=resid_post)
        self._source_cache[key] = acts
        while len(self._source_cache) > _SOURCE_CACHE_SIZE:
            self._source_cache.popitem(last=False)
        return acts

    def _reference_means(self) -> ReferenceMeans:
        key = tuple(self.reference_prompts)
        if self._means is not None and self._means[0] == key:
            return self._means[1]
        n = self.adapter.n_layers
        sums_z: list = [0.0] * n
        sums_attn: list = [0.0] * n
        sums_mlp: list = [0.0] * n
        count = 0
        for prompt in self.reference_prompts:
            acts = self._source_acts(self._prompt_ids(prompt)[0])
            count += acts.ids.shape[1]
            for layer in range(n):
                sums_z[layer] = sums_z[layer] + acts.z[layer][0].sum(0)
                sums_attn[layer] = sums_attn[layer] + acts.attn_out[layer][0].sum(0)
                sums_mlp[layer] = sums_mlp[layer] + acts.mlp_out[layer][0].sum(0)
        means = ReferenceMeans(z=[s / count for s in sums_z], attn_out=[s / count for s in sums_attn],
                               mlp_out=[s / count for s in sums_mlp])
        self._means = (key, means)
        return means


class _BoundedCache(OrderedDict):
    """A dict that forgets its oldest entries beyond `size`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if len(self) > self.size:
            self.popitem(last=False)


@dataclass
class _Edits:
    """Hooks that apply a list of interventions, and the first layer they touch."""

    start: int
    hooks: list[Hook] = field(default_factory=list)
    knockouts: dict[int, list] = field(default_factory=dict)
    resid_deltas: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, layer: int, hook: Hook) -> None:
        self.start = min(self.start, layer)
        self.hooks.append(hook)

    def resid_delta(self, layer: int) -> list[torch.Tensor]:
        """Where edits that write the residual stream directly at `layer` record what they added
        ([batch, pos, d_model] each), so attribution can account for them."""
        return self.resid_deltas.setdefault(layer, [])


def _select(positions: list[int] | None):
    return slice(None) if positions is None else positions


def _head_edit(iv: HeadAblation | HeadScale, n_heads: int, d_head: int, positions: list[int] | None,
               mean: torch.Tensor | None, source: tuple[torch.Tensor, list[int] | None] | None):
    head = iv.head
    dst = _select(positions)

    def hook(module, args, kwargs):
        x = args[0]  # [batch, pos, head*d_head]
        z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [batch, pos, head, d_head]
        if isinstance(iv, HeadScale):
            z[:, dst, head] = z[:, dst, head] * iv.factor
        elif iv.mode == "zero":
            z[:, dst, head] = 0
        elif iv.mode == "mean":
            z[:, dst, head] = mean.view(n_heads, d_head)[head]
        else:
            src, src_pos = source
            src_z = src.view(*src.shape[:-1], n_heads, d_head)  # [1, pos, head, d_head]
            z[:, dst, head] = src_z[:, _select(src_pos), head]
        return (z.view(x.shape), *args[1:]), kwargs

    return hook


def _replace_edit(positions: list[int] | None, replacement: torch.Tensor | None,
                  src_pos: list[int] | None, mode: str, seq_view, deltas: list | None = None):
    dst = _select(positions)

    def hook(module, args, output):
        original = _first(output)
        out = seq_view(original).clone()  # [batch, pos, d_model]
        if mode == "zero":
            out[:, dst] = 0
        elif mode == "mean":
            out[:, dst] = replacement
        else:
            out[:, dst] = replacement[:, _select(src_pos)]
        if deltas is not None:
            deltas.append((out - seq_view(original)).detach())
        return _replace_output(output, out.view(original.shape))

    return hook


def _resid_pre_edit(positions: list[int] | None, replacement: torch.Tensor, src_pos: list[int] | None,
                    deltas: list):
    dst = _select(positions)

    def hook(module, args, kwargs):
        original = args[0] if args else kwargs["hidden_states"]
        hidden = original.clone()  # [batch, pos, d_model]
        hidden[:, dst] = replacement[:, _select(src_pos)]
        deltas.append((hidden - original).detach())
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return hook


def _steer_edit(positions, delta: torch.Tensor, deltas: list):
    def hook(module, args, kwargs):
        original = args[0] if args else kwargs["hidden_states"]
        hidden = original.clone()  # [batch, pos, d_model]
        if positions == "all":
            hidden = hidden + delta
        elif positions == "last":
            hidden[:, -1] = hidden[:, -1] + delta
        else:
            hidden[:, list(positions)] = hidden[:, list(positions)] + delta
        deltas.append((hidden - original).detach())
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return hook


def _clamp_edit(positions: list[int] | None, neuron: int, value: float, seq_view):
    dst = _select(positions)

    def hook(module, args, kwargs):
        x = seq_view(args[0]).clone()  # [batch, pos, d_mlp]
        x[:, dst, neuron] = value
        return (x.view(args[0].shape), *args[1:]), kwargs

    return hook
