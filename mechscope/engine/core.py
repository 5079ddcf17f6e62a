"""The resident model as one object: a thin facade over passes, compiled edits, readouts, sweeps and generation."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Literal, cast

import numpy as np
import torch

from mechscope.engine import attention, readouts
from mechscope.engine.adapters import Adapter
from mechscope.engine.addresses import parse_address
from mechscope.engine.capabilities import LOCAL_CAPABILITIES
from mechscope.engine.captures import Captures, CaptureSpec
from mechscope.engine.errors import InterventionError, OutOfMemory
from mechscope.engine.features import edits as _feature_edits  # noqa: F401 - registers their compile functions
from mechscope.engine.features.attached import attach, attached_saes
from mechscope.engine.features.cache import trained_saes
from mechscope.engine.features.results import (
    FeatureActivations,
    FeatureAttribution,
    FeatureCardResult,
)
from mechscope.engine.features.sae import SparseAutoencoder
from mechscope.engine.generation import generate
from mechscope.engine.interventions import Intervention
from mechscope.engine.layer_replay import last_mlp_at_readout
from mechscope.engine.metric import Metric
from mechscope.engine.passes import Passes, check_text
from mechscope.engine.placement import placement_summary
from mechscope.engine.prompt_edits import compile_edits
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import (
    ComputeInfo,
    GeneratedToken,
    MetricInfo,
    ModelInfo,
    PathPatchResult,
    RunResult,
    SweepResult,
)
from mechscope.engine.sweeps import sweep
from mechscope.engine.user_inputs import (
    check_steering_prompts,
    checked_reference_prompts,
    checked_vector,
)
from mechscope.engine.views import Views

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


class Engine:
    """A causal LM kept resident, answering run / sweep / generate requests with plain data.

    Thread-safe: `lock` serialises model access. `should_stop` callbacks are checked between layers.
    The work is done by `passes` (forward passes and caches), `edits` (interventions to hooks),
    `readouts`, `sweeps` and `generation`; this class holds the state a user sets (vectors, reference
    prompts) and the lock.
    """

    capabilities: ClassVar[frozenset[str]] = LOCAL_CAPABILITIES

    def __init__(self, model, tokenizer, source: str = "<memory>", weights_digest: str = "",
                 name: str | None = None) -> None:
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.weights_digest = weights_digest
        self.adapter = Adapter(model)
        self.passes = Passes(model, tokenizer, self.adapter)
        self.lock = threading.RLock()
        self.vectors: dict[str, np.ndarray] = {}
        self.saes: dict[str, SparseAutoencoder] = attached_saes(self.passes)  # feature edits find them by name
        self.reference_prompts: list[str] = list(DEFAULT_REFERENCE_PROMPTS)
        attention.register()
        model.set_attn_implementation(attention.ATTN_IMPLEMENTATION)
        self.device = self.passes.device
        self.dtype = self.passes.dtype
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
            trained_saes=trained_saes(weights_digest),
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
                self.passes.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise OutOfMemory(
                    f"out of memory on {self.device}; the engine dropped its caches and is still usable "
                    "(try a shorter prompt or fewer views)") from None

    def clear_caches(self) -> None:
        """Forget cached passes and activations (the next run computes everything again)."""
        with self.lock:
            self.passes.clear()

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        """A prompt's token ids (with the tokenizer's special tokens) and their text pieces."""
        ids = self.tokenizer(check_text(text, "the text")).input_ids
        return list(ids), [self.decode_token(i) for i in ids]

    def decode_token(self, token_id: int) -> str:
        return self.passes.decode_token(token_id)

    def metric_info(self, metric: Metric, n_pos: int) -> MetricInfo:
        """How `metric` reads on a prompt of `n_pos` tokens (memoised); PromptError if it cannot."""
        return self.passes.metric_info(metric, n_pos)

    # ------------------------------------------------------------------ state a user sets

    def set_reference_prompts(self, prompts: Sequence[str]) -> None:
        self.reference_prompts = checked_reference_prompts(prompts)

    def add_vector(self, name: str, array) -> None:
        self.vectors[name] = checked_vector(name, array, self.adapter.d_model)

    def remove_vector(self, name: str) -> None:
        """Forget the steering vector `name` (nothing happens if there is none)."""
        self.vectors.pop(name, None)

    def attach_sae(self, name: str, sae: SparseAutoencoder) -> SparseAutoencoder:
        """Hold `sae` under `name` for feature views and edits; FeatureError if it does not fit the model."""
        with self.lock:
            return attach(self.passes, name, sae)

    def load_sae(self, name: str, folder: str, site: str | None = None) -> SparseAutoencoder:
        """Read the SAE in `folder` (SAELens, sparsify or Gemma Scope layout) and attach it as `name`."""
        from mechscope.engine.features.formats import load_sae

        return self.attach_sae(name, load_sae(folder, site, self.adapter.d_model))

    def remove_sae(self, name: str) -> None:
        """Forget the SAE `name` (nothing happens if there is none)."""
        with self.lock:
            self.saes.pop(name, None)

    def feature_activations(self, prompt: str, sae_folder: str, site: str | None = None,
                            top_k: int = 10) -> FeatureActivations:
        """The strongest features of the SAE in `sae_folder` at every token of `prompt`, with the quality
        figures stored beside it (`mechscope features eval`) when they were measured on this SAE."""
        from mechscope.engine.features.activations import sae_from_folder, top_features
        from mechscope.engine.features.quality import read_quality

        with self.guard():
            sae = sae_from_folder(self.passes, sae_folder, site)
            result = top_features(self.passes, sae, check_text(prompt, "prompt"), top_k)
        return dataclasses.replace(result, quality=read_quality(sae_folder, sae.digest))

    def feature_card(self, sae_folder: str, feature: int, site: str | None = None,
                     k: int = 10) -> FeatureCardResult:
        """Feature `feature` of the SAE in `sae_folder`: density and top contexts from the index beside
        it (when `mechscope features index` built one) and the tokens its decoder direction promotes
        and suppresses."""
        from mechscope.engine.features.activations import sae_from_folder
        from mechscope.engine.features.cards import card_of_folder

        with self.guard():
            return card_of_folder(self, sae_from_folder(self.passes, sae_folder, site), sae_folder, feature, k)

    def feature_attribution(self, prompt: str, sae_folder: str, site: str | None, metric: Metric | None,
                            interventions: Iterable[Intervention] = (), top_n: int = 20, verify: int = 10,
                            corrupted: str | None = None, should_stop: ShouldStop | None = None,
                            include_first: bool = False) -> FeatureAttribution:
        """The active features of the SAE in `sae_folder` on `prompt` (with `interventions`; resample
        sources: `corrupted`) ranked by attribution patching, the top `verify` ablated exactly, each
        with its direct effect (the first token a candidate only with `include_first`); see
        `features.attribution.feature_attribution`."""
        from mechscope.engine.features.activations import sae_from_folder
        from mechscope.engine.features.attribution import check_sizes, feature_attribution

        check_sizes(top_n, verify)
        with self.guard():
            sae = sae_from_folder(self.passes, sae_folder, site)
            edit_hooks = self._edit_hooks(interventions, check_text(prompt, "prompt"), corrupted)
            return feature_attribution(self.passes, sae, prompt, metric, edit_hooks, top_n, verify, should_stop,
                                       include_first)

    def build_steering_vector(self, name: str, layer: int, positive: Sequence[str],
                              negative: Sequence[str]) -> np.ndarray:
        """Mean difference of the residual entering `layer` at the last token, positive minus negative."""
        check_steering_prompts(layer, self.adapter.n_layers, positive, negative)
        passes = self.passes
        with self.guard(), torch.no_grad():
            def mean_resid(prompts: Sequence[str]) -> torch.Tensor:
                rows = [passes.clean(passes.prompt_ids(p)[0]).calls[layer].hidden[0, -1].float() for p in prompts]
                return torch.stack(rows).mean(0)

            vector = (mean_resid(positive) - mean_resid(negative)).cpu().numpy()
        self.add_vector(name, vector)
        return self.vectors[name]

    # ------------------------------------------------------------------ requests

    def validate(self, interventions: Iterable[Intervention], prompt: str,
                 corrupted: str | None = None) -> None:
        """Raise InterventionError naming the first intervention that does not fit.

        Checks ranges, shapes, prompt lengths and vector names only (no forward pass), so it does not
        wait for the model lock: the UI can check an edit while a sweep runs."""
        ids, _ = self.passes.prompt_ids(prompt)
        compile_edits(self.passes, interventions, ids.shape[1], corrupted, self.vectors,
                      self.reference_prompts, dry_run=True)

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
        passes = self.passes
        with self.guard(), torch.no_grad():
            ids, truncated_from = passes.prompt_ids(prompt)
            n_pos = ids.shape[1]
            info = passes.metric_info(metric, n_pos) if metric is not None and metric.measurable else None
            readout = info.position if info is not None else n_pos - 1
            spec = self._spec(views, readout)
            was_cached = passes.is_cached(ids, spec)
            clean = passes.clean(ids, spec, should_stop)
            edits = compile_edits(passes, active, n_pos, corrupted, self.vectors, self.reference_prompts)
            mode: Literal["full", "incremental", "cached"]
            if edits.hooks or edits.knockouts:
                start = edits.start
                captures = Captures()
                # per-token log-probs and activation stats read the last layer at every position
                narrow = [] if views.logprobs or views.stats else last_mlp_at_readout(self.adapter, readout, edits.hooks)
                hooks = narrow + edits.hooks + passes.capture_hooks(spec, captures, start, edits.knockouts)
                final = passes.run_layers(clean.calls, start, clean.calls[start].hidden, hooks, should_stop)
                captures = captures.merged_below(clean.captures, start)
                mode = "incremental" if start > 0 else "full"
            else:
                start = 0
                final = clean.final
                captures = clean.captures
                mode = "cached" if was_cached else "full"
            base_logits = clean.readout_logits.get(readout)
            if base_logits is None:
                base_logits = clean.readout_logits[readout] = passes.logits(clean.final[:, readout])[0]  # [vocab]
            if clean.tokens is None:
                clean.tokens = [self.decode_token(i) for i in ids[0].tolist()]
            edited = final is not clean.final
            logits = passes.logits(final[:, readout])[0] if edited else base_logits
            baseline = clean.baselines.get((info, top_k))
            if baseline is None:
                baseline = clean.baselines[(info, top_k)] = passes.prediction(base_logits, info, top_k,
                                                                              base_logits)
            prediction = (baseline if logits is base_logits
                          else passes.prediction(logits, info, top_k, base_logits))
            result = RunResult(
                prompt=prompt,
                token_ids=ids[0].tolist(),
                tokens=list(clean.tokens),
                prediction=prediction,
                baseline=baseline,
                metric_info=info,
                interventions=[iv.to_dict() for iv in active],
                truncated_from=truncated_from,
                source_metric=passes.source_metric(active, metric, base_logits),
            )
            if views.logprobs:
                result.token_logprobs = passes.token_logprobs(ids, final)
            for address in views.attention:
                addr = parse_address(address)
                assert addr.head is not None  # Views accepts head addresses only
                pattern = captures.controls[addr.layer].patterns[addr.head][0]
                result.attention[address] = pattern.float().cpu().numpy()
            if views.sinks:
                result.sink_scores = np.stack(
                    [cast(torch.Tensor, captures.controls[layer].sink)[0].float().cpu().numpy()
                     for layer in range(self.adapter.n_layers)])
            if views.logit_lens:
                key = ("lens", readout, info, views.lens_k)

                def clean_lens():
                    return readouts.logit_lens(passes, clean.captures, readout, info, views.lens_k)

                if not edited:
                    result.logit_lens = clean.view(key, clean_lens)
                else:  # rows below the first edited layer are the clean run's
                    below = clean.view(key, clean_lens) if start > 0 else None
                    result.logit_lens = readouts.logit_lens(passes, captures, readout, info, views.lens_k,
                                                            below, start)
            if views.attribution:
                def attribution():
                    return readouts.attribution(passes, captures, clean, final, readout, info, edits, logits)

                result.attribution = (attribution() if edited
                                      else clean.view(("attribution", readout, info), attribution))
            if views.stats:
                def stats():
                    return readouts.activation_stats(passes, captures)

                result.stats = stats() if edited else clean.view(("stats",), stats)
            result.compute = ComputeInfo(time.perf_counter() - started, mode, start)
            return result

    def _spec(self, views: Views, readout: int) -> CaptureSpec:
        heads: set[tuple[int, int]] = set()
        for address in views.attention:
            addr = parse_address(address)
            assert addr.head is not None  # Views accepts head addresses only
            heads.add((addr.layer, addr.head))
        a = self.adapter
        for layer, head in heads:
            if not 0 <= layer < a.n_layers:
                raise InterventionError(f"attention view L{layer}.H{head}: layer {layer} is out of range "
                                        f"0..{a.n_layers - 1}")
            if not 0 <= head < a.n_heads:
                raise InterventionError(f"attention view L{layer}.H{head}: head {head} is out of range "
                                        f"0..{a.n_heads - 1}")
        return CaptureSpec(readout=readout, heads=frozenset(heads), sinks=views.sinks, dla=views.attribution,
                           lens=views.logit_lens, stats=views.stats)

    def sweep(self, kind: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
              on_progress: Callable[[SweepResult], None] | None = None,
              should_stop: ShouldStop | None = None,
              interventions: Iterable[Intervention] = (), head_input: str = "output") -> SweepResult:
        """Head patching [layer, head], residual / attention / MLP patching [layer, pos] or AtP; see
        `sweeps.sweep`. With `interventions`, every pass of the sweep runs on the edited model
        (resample ablations take the corrupted prompt as their source). `head_input` "q", "k" or
        "v": the head sweep patches each head's query, key or value instead of its output."""
        with self.guard():
            edit_hooks = self._edit_hooks(interventions, clean, corrupt)
            on_inputs = {"head_input": head_input} if head_input != "output" else {}
            return sweep(self.passes, kind, clean, corrupt, metric, direction,  # type: ignore[arg-type]
                         on_progress, should_stop, edit_hooks, **on_inputs)

    def _edit_hooks(self, interventions: Iterable[Intervention], clean: str,
                    corrupt: str | None) -> Callable[[], list] | None:
        """A maker of fresh hooks applying `interventions` (resample sources: `corrupt`), checked
        once now; None when none is enabled."""
        active = [iv for iv in interventions if iv.enabled]
        if not active:
            return None
        passes = self.passes
        n_pos = passes.prompt_ids(clean)[0].shape[1]

        def edit_hooks() -> list:
            edits = compile_edits(passes, active, n_pos, corrupt, self.vectors, self.reference_prompts)
            return edits.hooks + passes.capture_hooks(CaptureSpec(readout=0), Captures(), 0, edits.knockouts)

        with torch.no_grad():
            edit_hooks()  # a misfit intervention is an error before any pass
        return edit_hooks

    def path_patch(self, sender: str, receivers: Sequence[str], clean: str, corrupt: str, metric: Metric,
                   direction: str = "noising", interventions: Iterable[Intervention] = (),
                   should_stop: ShouldStop | None = None) -> PathPatchResult:
        """The metric when a sender head's change from the source run reaches only `receivers`; see
        `paths.path_patch`."""
        from mechscope.engine import paths

        with self.guard():
            edit_hooks = self._edit_hooks(interventions, clean, corrupt)
            return paths.path_patch(self.passes, sender, receivers, clean, corrupt, metric, direction,
                                    edit_hooks, should_stop)

    def path_sweep(self, receiver: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
                   on_progress: Callable[[SweepResult], None] | None = None,
                   should_stop: ShouldStop | None = None,
                   interventions: Iterable[Intervention] = ()) -> SweepResult:
        """Every earlier head's path effect into one head's query, key or value; see `paths.path_sweep`."""
        from mechscope.engine import paths

        with self.guard():
            edit_hooks = self._edit_hooks(interventions, clean, corrupt)
            return paths.path_sweep(self.passes, receiver, clean, corrupt, metric, direction, on_progress,
                                    should_stop, edit_hooks)

    def generate(self, prompt: str, interventions: Iterable[Intervention] = (), max_new_tokens: int = 20,
                 temperature: float = 0.0, seed: int = 0, corrupted: str | None = None,
                 on_token: Callable[[GeneratedToken], None] | None = None,
                 should_stop: ShouldStop | None = None) -> list[GeneratedToken]:
        """Generate with interventions active, streaming tokens to `on_token`; see `generation.generate`."""
        with self.guard():
            return generate(self.passes, prompt, interventions, max_new_tokens, temperature, seed, corrupted,
                            self.vectors, self.reference_prompts, on_token, should_stop)

    # Prompt sets, attribution estimators, head detectors and massive activations live in their own
    # modules (imported on first use); these are the notebook-facing entry points.

    def run_set(self, pset, kind="logit_diff", interventions=(), prompt="clean", padding="left", means="clean"):
        """The metric on every row of a `PromptSet`, batched; see `set_runs.run_set`."""
        from mechscope.engine import set_runs

        return set_runs.run_set(self, pset, kind, interventions, prompt, padding, self.vectors, means)

    def sweep_set(self, pset, **options):
        """Head patching over every row of a `PromptSet` (mean and spread per cell); see `set_runs.sweep_set`."""
        from mechscope.engine import set_runs

        return set_runs.sweep_set(self, pset, **options)

    def estimate(self, pset, method, steps=5, **options):
        """An attribution estimate ("atp", "atp*", "graddrop", "eap-ig") of head patching over a set."""
        from mechscope.engine import estimators

        return estimators.estimate(self, pset, method, steps, **options)

    def estimate_and_verify(self, pset, method, steps=5, *, kind="logit_diff", direction="noising",
                            verify=None, should_stop=None):
        """An estimate, then exact patches of the likely top heads in one batched pass; see
        `verification.estimate_and_verify` (verify None: the estimate's uncertainty picks them)."""
        from mechscope.engine import verification

        return verification.estimate_and_verify(self, pset, method, steps, kind, direction, verify,
                                                should_stop=should_stop)

    def detect_heads(self):
        """Head-detector grids (previous-token, duplicate-token, induction, sink, copy suppression)."""
        from mechscope.engine import detectors

        return detectors.head_scores(self)

    def function_vector(self, pset, layer, n_heads=10, coeff=1.0, name="fv", should_stop=None):
        """The function vector of an in-context set's task, registered as the steering vector `name`;
        see `function_vectors.function_vector`."""
        from mechscope.engine import function_vectors

        result = function_vectors.function_vector(self, pset, layer, n_heads, coeff, name, should_stop)
        self.add_vector(name, result.vector)
        return result

    def set_attention(self, pset, layer, head):
        """One head's attention between the set's roles (IO, S1, S2, END for IOI), over the set; see `roles`."""
        from mechscope.engine import roles

        return roles.set_attention(self, pset, layer, head)

    def detect_role_heads(self, pset):
        """Name-mover and S-inhibition grids on an IOI set; see `roles.role_head_scores`."""
        from mechscope.engine import roles

        return roles.role_head_scores(self, pset)

    def massive_activations(self, prompts, ratio: float = 100.0):
        """Per layer, the residual dimensions whose magnitude dwarfs the rest; see `massive`."""
        from mechscope.engine import massive

        return massive.massive_activations(self, prompts, ratio)
