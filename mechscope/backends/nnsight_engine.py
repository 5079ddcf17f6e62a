"""An engine running mechscope's requests as nnsight traces: locally, serialised locally, or on NDIF."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

import mechscope.backends.plan as plans
from mechscope.backends.ndif import NdifError, Preflight, RequestSize
from mechscope.engine import readouts
from mechscope.engine.adapters import Adapter, get_path
from mechscope.engine.addresses import parse_address
from mechscope.engine.captures import Captures
from mechscope.engine.core import DEFAULT_REFERENCE_PROMPTS
from mechscope.engine.edits import Edits
from mechscope.engine.errors import Cancelled, MechscopeError, PromptError
from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import (
    Attribution,
    ComputeInfo,
    GeneratedToken,
    LogitLens,
    MetricInfo,
    ModelInfo,
    Prediction,
    RunResult,
    SweepResult,
    TokenProb,
)
from mechscope.engine.user_inputs import (
    check_steering_prompts,
    checked_reference_prompts,
    checked_vector,
)
from mechscope.engine.views import Views

_ACTS_CACHE_SIZE = 4


@dataclass(frozen=True)
class BackendInfo:
    """How this backend runs, for the status bar and a session's manifest: no incremental recompute
    on any nnsight run."""

    backend: str  # "nnsight" or "ndif"
    execution: str  # "local", "serialised locally" or "NDIF"
    incremental_recompute: bool = False
    attribution: bool = True

    @property
    def status(self) -> str:
        extra = "" if self.attribution else ", no attribution view"
        return f"{self.backend} ({self.execution}): full recompute on every change{extra}"

    def to_dict(self) -> dict[str, Any]:
        """What a session records about the backend (replays elsewhere compare within 1e-4)."""
        from importlib.metadata import version

        return {"backend": self.backend, "execution": self.execution,
                "incremental_recompute": self.incremental_recompute, "nnsight": version("nnsight")}


def _module_path(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise MechscopeError(f"{type(model).__name__}: cannot find the unembedding's path")


class NNsightEngine:
    """EngineProtocol over nnsight: every request is one trace (a head sweep one batched trace).

    `remote`: False runs nnsight locally, "local" serialises and deserialises each request under
    NDIF's restrictions and runs it here, True sends it to NDIF (after `Preflight`). It offers
    single-prompt work only: prompt sets, estimates, detectors and massive activations need the
    native engine.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"run", "sweep", "generate", "vectors", "reference_prompts", "tokenizer"})

    def __init__(self, model, tokenizer, source: str = "<memory>", weights_digest: str = "",
                 name: str | None = None, remote: bool | str = False, lm: Any = None,
                 max_rows: int = 1024) -> None:
        from nnsight import TransformersModel
        from nnsight.ndif import register

        import mechscope.backends.traces as traces

        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.weights_digest = weights_digest
        self.remote = remote
        self.max_rows = max_rows
        self.lm = lm if lm is not None else TransformersModel(model, tokenizer=tokenizer,
                                                              task="text-generation")
        if remote:
            register(traces)  # the trace bodies travel by value: mechscope is not on the server
        self._traces = traces
        self.adapter = a = Adapter(model)
        self.lock = threading.RLock()
        self.vectors: dict[str, np.ndarray] = {}
        self.reference_prompts: list[str] = list(DEFAULT_REFERENCE_PROMPTS)
        self._sdpa = True
        self._acts_cache: OrderedDict[tuple[int, ...], dict] = OrderedDict()
        self._means_cache: tuple[tuple[str, ...], dict] | None = None
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.has_weights = param.device.type != "meta"
        self.n_params = sum(p.numel() for p in model.parameters())
        self.preflight = Preflight(str(getattr(model.config, "_name_or_path", "") or source),
                                   self.n_params) if remote is True else None
        execution = {False: "local", "local": "serialised locally"}.get(remote, "NDIF")
        self.backend = BackendInfo(backend="ndif" if remote is True else "nnsight",
                                         execution=execution, attribution=self.has_weights)
        family = a.family
        self.paths: dict[str, Any] = {
            "n_layers": a.n_layers, "n_heads": a.n_heads, "layers": family.layers, "attn": family.attn,
            "o_proj": family.o_proj, "attn_out": family.attn_out, "mlp_out": family.mlp_out,
            "mlp_down": family.mlp_down, "final_norm": family.final_norm,
            "post_final": [p for p in family.post_final if get_path(model, p) is not None],
            "unembed": _module_path(model, a.unembed), "softcap": a.final_softcap,
            "attn_call": None,  # resolved on first use (see `_attention_call`)
        }
        name = name or getattr(model.config, "_name_or_path", "") or source
        self.info = ModelInfo(
            source=source, name=str(name), architecture=type(model).__name__, family=family.name,
            n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, d_model=a.d_model,
            d_head=a.d_head, d_mlp=a.d_mlp, vocab_size=a.vocab_size, max_context=a.max_context,
            device="NDIF" if remote is True else str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )

    def clear_caches(self) -> None:
        """Forget cached source activations and reference means (the next request traces them again)."""
        with self.lock:
            self._acts_cache.clear()
            self._means_cache = None

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        ids = self.tokenizer(text).input_ids
        return list(ids), [self.decode_token(i) for i in ids]

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    def _prompt_ids(self, prompt: str) -> tuple[torch.Tensor, int | None]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt is empty")
        ids = self.tokenizer(prompt).input_ids
        if not ids:
            raise PromptError("the prompt has no tokens")
        truncated_from = None
        limit = self.adapter.max_context
        if len(ids) > limit:
            truncated_from, ids = len(ids), ids[-limit:]
        return torch.tensor([ids], device=self._input_device), truncated_from

    @property
    def _input_device(self) -> torch.device:
        return torch.device("cpu") if self.device.type == "meta" else self.device

    def metric_info(self, metric: Metric, n_pos: int) -> MetricInfo:
        if not metric.target:
            raise PromptError("the metric needs a target token")
        target = list(self.tokenizer(metric.target, add_special_tokens=False).input_ids)
        if not target:
            raise PromptError(f"target {metric.target!r} has no tokens")
        foil: list[int] = []
        if metric.foil:
            foil = list(self.tokenizer(metric.foil, add_special_tokens=False).input_ids)
            if not foil:
                raise PromptError(f"foil {metric.foil!r} has no tokens")
        if not -n_pos <= metric.position < n_pos:
            raise PromptError(f"metric position {metric.position} is outside the prompt ({n_pos} tokens)")
        return MetricInfo(
            kind=metric.kind, target_text=metric.target, target_ids=tuple(target),
            target_pieces=tuple(self.decode_token(i) for i in target), foil_text=metric.foil,
            foil_ids=tuple(foil), foil_pieces=tuple(self.decode_token(i) for i in foil),
            position=metric.position % n_pos,
        )

    # ------------------------------------------------------------------ state

    def set_reference_prompts(self, prompts: Sequence[str]) -> None:
        self.reference_prompts = checked_reference_prompts(prompts)

    def add_vector(self, name: str, array) -> None:
        self.vectors[name] = checked_vector(name, array, self.adapter.d_model)

    def remove_vector(self, name: str) -> None:
        self.vectors.pop(name, None)

    def build_steering_vector(self, name: str, layer: int, positive: Sequence[str],
                              negative: Sequence[str]) -> np.ndarray:
        check_steering_prompts(layer, self.adapter.n_layers, positive, negative)
        with self.lock:
            def mean_resid(prompts: Sequence[str]) -> torch.Tensor:
                rows = [self._acts(self._prompt_ids(p)[0])["resid_pre"][layer][0, -1].float() for p in prompts]
                return torch.stack(rows).mean(0)

            vector = (mean_resid(positive) - mean_resid(negative)).cpu().numpy()
        self.add_vector(name, vector)
        return self.vectors[name]

    def validate(self, interventions: Iterable[Intervention], prompt: str,
                 corrupted: str | None = None) -> None:
        ids, _ = self._prompt_ids(prompt)
        plans.compile_plan(self, [iv for iv in interventions if iv.enabled], ids.shape[1], corrupted,
                           dry_run=True)

    # ------------------------------------------------------------------ traces

    def _set_attention(self, eager: bool) -> None:
        """Eager attention for a request that reads patterns or knocks out edges (sdpa returns no
        weights), sdpa otherwise; the implementation travels with remote requests, so NDIF runs the
        same one."""
        if eager and self.paths["attn_call"] is None:
            self.paths["attn_call"] = self._attention_call()
        wanted = "eager" if eager or not self._sdpa else "sdpa"
        if self.model.config._attn_implementation != wanted:
            try:
                self.model.set_attn_implementation(wanted)
            except ValueError:  # an architecture without sdpa (Gemma2) runs eager throughout
                self._sdpa = False
                self.model.set_attn_implementation("eager")

    def _attention_call(self) -> str:
        """nnsight's name for the attention-function call inside the attention module's forward,
        whose mask input knockouts edit and whose weights output patterns read."""
        envoy = self._traces.at(self._traces.at(self.lm, self.paths["layers"])[0], self.paths["attn"])
        source = envoy.source
        for name in source.names:
            line = source.compiled.source.splitlines()[source.compiled.lines[name] - 1]
            if name.startswith("attention_interface_") and "= attention_interface(" in line:
                return name
        raise MechscopeError(f"attention patterns and knockouts are not supported on the nnsight backend "
                             f"for {type(self.model).__name__}")

    def _send(self, size: RequestSize, should_stop: ShouldStop | None = None) -> None:
        """Checks before a trace leaves: the stop button, and NDIF's preflight for remote runs."""
        if should_stop is not None and should_stop():
            raise Cancelled("stopped")
        if self.preflight is not None:
            self.preflight(size)

    def _acts(self, ids: torch.Tensor) -> dict:
        """Full-sequence activations of `ids` at every site (patch and resample sources), cached."""
        key = tuple(ids[0].tolist())
        cached = self._acts_cache.get(key)
        if cached is not None:
            self._acts_cache.move_to_end(key)
            return cached
        self._send(RequestSize(1, ids.shape[1]))
        self._set_attention(False)
        acts = self._traces.acts_trace(self.lm, self.paths, ids, self.remote)
        self._acts_cache[key] = acts
        while len(self._acts_cache) > _ACTS_CACHE_SIZE:
            self._acts_cache.popitem(last=False)
        return acts

    def _means(self) -> dict:
        """Mean head outputs and attention / MLP writes over every token of the reference prompts."""
        key = tuple(self.reference_prompts)
        if self._means_cache is not None and self._means_cache[0] == key:
            return self._means_cache[1]
        sums: dict[str, list] = {site: [0.0] * self.adapter.n_layers for site in ("z", "attn_out", "mlp_out")}
        count = 0
        for prompt in self.reference_prompts:
            ids = self._prompt_ids(prompt)[0]
            acts = self._acts(ids)
            count += ids.shape[1]
            for site, per_layer in sums.items():
                for layer in range(self.adapter.n_layers):
                    per_layer[layer] = per_layer[layer] + acts[site][layer][0].sum(0)
        means = {site: [s / count for s in per_layer] for site, per_layer in sums.items()}
        self._means_cache = (key, means)
        return means

    def _prediction(self, logits: torch.Tensor, info: MetricInfo | None, top_k: int) -> Prediction:
        logits = logits.float().cpu()
        log_probs = torch.log_softmax(logits, dim=-1)
        k = max(1, min(top_k, logits.shape[-1]))
        top_lp, top_ids = log_probs.topk(k)
        top = [TokenProb(int(i), self.decode_token(int(i)), float(lp.exp()), float(logits[i]))
               for lp, i in zip(top_lp, top_ids)]
        metric = None
        if info is not None:
            metric = float(self._traces._metric(logits[None], self._metric_key(info))[0])
        return Prediction(top=top, logits=logits.numpy(), metric=metric)

    @staticmethod
    def _metric_key(info: MetricInfo) -> tuple:
        return (info.kind, info.target_id, info.foil_id if info.foil_id is not None else 0)

    # ------------------------------------------------------------------ run

    def run(self, prompt: str, interventions: Iterable[Intervention] = (), views: Views | None = None,
            metric: Metric | None = None, corrupted: str | None = None, top_k: int = 10,
            should_stop: ShouldStop | None = None) -> RunResult:
        """One trace: a clean row for the baseline and, with interventions, an edited row."""
        views = views or Views()
        started = time.perf_counter()
        active = [iv for iv in interventions if iv.enabled]
        with self.lock, torch.no_grad():
            ids, truncated_from = self._prompt_ids(prompt)
            n_pos = ids.shape[1]
            info = self.metric_info(metric, n_pos) if metric is not None and metric.target else None
            readout = info.position if info is not None else n_pos - 1
            heads: dict[int, list[int]] = {}
            for address in views.attention:
                addr = parse_address(address)
                plans.check_head(self, addr.layer, addr.head, f"attention view {address}")
                assert addr.head is not None  # Views accepts head addresses only
                heads.setdefault(addr.layer, []).append(addr.head)
            if views.attribution and not self.has_weights:
                raise MechscopeError("the attribution view needs the model's weights here; NDIF runs "
                                     "keep them remote (use --backend nnsight or native for it)")
            if views.attribution and self.adapter.post_ln:
                raise MechscopeError("direct logit attribution needs a pre-norm model (this one is post-LN)")
            plan = plans.compile_plan(self, active, n_pos, corrupted)
            rows = 1 if plan.empty else 2
            want = {"readout": readout, "lens_k": views.lens_k if views.logit_lens else 0,
                    "lens_target": info.target_id if info is not None else -1,
                    "dla": views.attribution, "stats": views.stats, "logprobs": views.logprobs,
                    "heads": heads, "sinks": views.sinks}
            self._send(RequestSize(rows, n_pos), should_stop)
            self._set_attention(bool(heads or views.sinks or plan.knockouts))
            out = self._traces.run_trace(self.lm, self.paths, ids.expand(rows, -1),
                                         plan.for_row(rows - 1), want, self.remote)
            logits = out["logits"]  # [row, vocab]
            baseline = self._prediction(logits[0], info, top_k)
            prediction = baseline if rows == 1 else self._prediction(logits[-1], info, top_k)
            result = RunResult(prompt=prompt, token_ids=ids[0].tolist(),
                               tokens=[self.decode_token(i) for i in ids[0].tolist()],
                               prediction=prediction, baseline=baseline, metric_info=info,
                               interventions=[iv.to_dict() for iv in active],
                               truncated_from=truncated_from,
                               source_metric=self._source_metric(active, metric))
            self._fill_views(result, out, views, info, readout, n_pos, logits[-1], plan)
            result.compute = ComputeInfo(time.perf_counter() - started, "full", 0)
            return result

    def _source_metric(self, active: list[Intervention], metric: Metric | None) -> float | None:
        """The metric on the one prompt the active patches copy from, without interventions (as
        `Passes.source_metric` on the native engine); None when there is no such prompt."""
        sources = {iv.patch_source for iv in active} - {None}
        if len(sources) != 1 or metric is None or not metric.target or metric.kind == "kl":
            return None
        ids, _ = self._prompt_ids(sources.pop())  # type: ignore[arg-type]
        info = self.metric_info(metric, ids.shape[1])
        want = {"readout": info.position, "lens_k": 0, "lens_target": -1, "dla": False, "stats": False,
                "logprobs": False, "heads": {}, "sinks": False}
        self._send(RequestSize(1, ids.shape[1]))
        self._set_attention(False)
        out = self._traces.run_trace(self.lm, self.paths, ids, {"row": 0, "layers": {}}, want, self.remote)
        return self._prediction(out["logits"][0], info, 1).metric

    def _fill_views(self, result: RunResult, out: dict, views: Views, info: MetricInfo | None,
                    readout: int, n_pos: int, logits: torch.Tensor, plan: plans.Plan) -> None:
        if views.logprobs:
            logprobs = np.full(n_pos, np.nan, dtype=np.float32)
            logprobs[1:] = out["logprobs"].float().cpu().numpy()
            result.token_logprobs = logprobs
        for address in views.attention:
            addr = parse_address(address)
            result.attention[address] = out["patterns"][(addr.layer, addr.head)].cpu().numpy()
        if views.sinks:
            result.sink_scores = torch.stack(out["sinks"]).float().cpu().numpy()
        if views.logit_lens:
            top_ids = out["lens_ids"].cpu()
            result.logit_lens = LogitLens(
                position=readout, top_ids=top_ids.numpy(),
                top_tokens=[[self.decode_token(int(i)) for i in row] for row in top_ids],
                top_probs=out["lens_probs"].float().cpu().numpy(),
                target_rank=out["lens_rank"].cpu().numpy() if info is not None else None,
                target_prob=out["lens_target_prob"].float().cpu().numpy() if info is not None else None)
        if views.attribution:
            result.attribution = self._attribution(out["dla"], info, readout, n_pos, logits, plan)
        if views.stats:
            stats = out["stats"]
            n = self.adapter.n_layers
            captures = Captures(norms=dict(enumerate(stats["norms"])), top_acts=dict(enumerate(stats["tops"])),
                                abs_median={i: float(stats["medians"][i]) for i in range(n)})
            result.stats = readouts.activation_stats(self, captures)

    def _attribution(self, dla: dict, info: MetricInfo | None, readout: int, n_pos: int,
                     logits: torch.Tensor, plan: plans.Plan) -> Attribution:
        """The native engine's direct logit attribution over this trace's readout-position records."""
        def at_readout(vector: torch.Tensor) -> torch.Tensor:  # [d] -> [1, pos, d], zero elsewhere
            full = torch.zeros(1, n_pos, vector.shape[-1], dtype=vector.dtype, device=vector.device)
            full[0, readout] = vector
            return full

        captures = Captures(z=dict(enumerate(dla["z"])), attn_raw=dict(enumerate(dla["attn_raw"])),
                            attn_out=dict(enumerate(dla["attn_out"])), mlp_out=dict(enumerate(dla["mlp_out"])))
        edits = Edits(start=0, replaced=plan.whole.replaced,
                      resid_deltas={layer: [at_readout(d) for d in items] for layer, items in dla["deltas"].items()})
        return readouts.direct_attribution(self, captures, dla["embed"], dla["final"], readout, info, edits,
                                           logits.float().cpu())

    # ------------------------------------------------------------------ sweeps and generation

    def sweep(self, kind: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
              on_progress: Callable[[SweepResult], None] | None = None,
              should_stop: ShouldStop | None = None,
              interventions: Iterable[Intervention] = ()) -> SweepResult:
        """Head or residual patching as batched traces (one row per variant), or AtP in one trace.
        Sweeps over an edited model run on the native engine only."""
        from mechscope.backends.nnsight_sweeps import sweep

        if any(iv.enabled for iv in interventions):
            raise MechscopeError("sweeps with interventions active need the native engine "
                                 "(the nnsight backend sweeps the unedited model)")
        return sweep(self, kind, clean, corrupt, metric, direction, on_progress, should_stop)

    def generate(self, prompt: str, interventions: Iterable[Intervention] = (), max_new_tokens: int = 20,
                 temperature: float = 0.0, seed: int = 0, corrupted: str | None = None,
                 on_token: Callable[[GeneratedToken], None] | None = None,
                 should_stop: ShouldStop | None = None) -> list[GeneratedToken]:
        """Greedy or seeded sampling, one trace per token re-running the whole sequence with the edits."""
        from mechscope.backends.nnsight_sweeps import generate

        return generate(self, prompt, interventions, max_new_tokens, temperature, seed, corrupted,
                        on_token, should_stop)


__all__ = ["BackendInfo", "NNsightEngine", "NdifError"]
