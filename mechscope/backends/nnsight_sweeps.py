"""Patching sweeps and generation on the nnsight backend: batched traces, one row per variant."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch

import mechscope.backends.plan as plans
from mechscope.backends.ndif import RequestSize
from mechscope.engine.errors import PromptError
from mechscope.engine.generation import check_generation, eos_ids, sample_tokens
from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import GeneratedToken, SweepResult, check_direction

if TYPE_CHECKING:
    from mechscope.backends.nnsight_engine import NNsightEngine


def sweep(engine: NNsightEngine, kind: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
          on_progress: Callable[[SweepResult], None] | None = None,
          should_stop: ShouldStop | None = None) -> SweepResult:
    """Head or residual patching as batched traces (one row per variant), or AtP in one trace."""
    if kind not in ("head", "resid", "atp"):
        raise ValueError(f"sweep kind must be head, resid or atp, got {kind!r}")
    check_direction(direction)
    if metric is None or not metric.target:
        raise PromptError("a sweep needs a metric with a target token")
    started = time.perf_counter()
    base_prompt, source_prompt = (clean, corrupt) if direction == "noising" else (corrupt, clean)
    a = engine.adapter
    with engine.lock:
        base_ids, _ = engine._prompt_ids(base_prompt)
        source_ids, _ = engine._prompt_ids(source_prompt)
        n_pos = base_ids.shape[1]
        if source_ids.shape[1] != n_pos:
            raise PromptError(
                f"clean and corrupted prompts must have the same number of tokens for a sweep "
                f"({base_ids.shape[1]} vs {source_ids.shape[1]})")
        info = engine.metric_info(metric, n_pos)
        key = engine._metric_key(info)
        pair = torch.cat([base_ids, source_ids])  # [2, pos]
        if kind == "resid":
            col_labels = [f"{p}:{engine.decode_token(t)}" for p, t in enumerate(base_ids[0].tolist())]
        else:
            col_labels = [f"H{h}" for h in range(a.n_heads)]
        width = n_pos if kind == "resid" else a.n_heads
        values = np.full((a.n_layers, width), np.nan, dtype=np.float32)
        if kind == "atp":
            engine._send(RequestSize(2, n_pos, backward=True), should_stop)
            engine._set_attention(False)
            with torch.enable_grad():
                out = engine._traces.atp_trace(engine.lm, engine.paths, pair, info.position, key, engine.remote)
            values[:] = out["scores"].float().cpu().numpy()
            base_metric, source_metric = (float(v) for v in out["metrics"])
        else:
            per_trace = max(1, (engine.max_rows - 2) // width)
            base_metric = source_metric = float("nan")
            for first in range(0, a.n_layers, per_trace):
                layers = list(range(first, min(a.n_layers, first + per_trace)))
                batch = torch.cat([pair, base_ids.expand(len(layers) * width, -1)])
                engine._send(RequestSize(batch.shape[0], n_pos), should_stop)
                engine._set_attention(False)
                with torch.no_grad():
                    metrics = engine._traces.sweep_trace(engine.lm, engine.paths, batch, kind, layers,
                                                         info.position, key, engine.remote)
                metrics = metrics.float().cpu()
                base_metric, source_metric = float(metrics[0]), float(metrics[1])
                values[layers] = (metrics[2:] - base_metric).view(len(layers), width).numpy()
                if on_progress is not None and layers[-1] < a.n_layers - 1:
                    on_progress(_sweep_result(engine, kind, values, base_metric, source_metric,
                                                   col_labels, False, started))
        result = _sweep_result(engine, kind, values, base_metric, source_metric, col_labels, True, started)
        if on_progress is not None:
            on_progress(result)
        return result

def _sweep_result(engine: NNsightEngine, kind: str, values: np.ndarray, base_metric: float, source_metric: float,
                  col_labels: list[str], complete: bool, started: float) -> SweepResult:
    return SweepResult(kind=kind, values=values.copy(), base_metric=base_metric,  # type: ignore[arg-type]
                       source_metric=source_metric,
                       row_labels=[f"L{layer}" for layer in range(engine.adapter.n_layers)],
                       col_labels=col_labels, complete=complete, seconds=time.perf_counter() - started)

def generate(engine: NNsightEngine, prompt: str, interventions: Iterable[Intervention] = (), max_new_tokens: int = 20,
             temperature: float = 0.0, seed: int = 0, corrupted: str | None = None,
             on_token: Callable[[GeneratedToken], None] | None = None,
             should_stop: ShouldStop | None = None) -> list[GeneratedToken]:
    """Greedy or seeded sampling, one trace per token re-running the whole sequence with the edits."""
    check_generation(max_new_tokens, temperature)
    active = [iv for iv in interventions if iv.enabled]
    with engine.lock, torch.no_grad():
        ids, _ = engine._prompt_ids(prompt)
        plan = plans.compile_plan(engine, active, ids.shape[1], corrupted)
        want = {"readout": -1, "lens_k": 0, "lens_target": -1, "dla": False, "stats": False,
                "logprobs": False, "heads": {}, "sinks": False}

        def next_logits(ids: torch.Tensor) -> torch.Tensor:
            engine._send(RequestSize(1, ids.shape[1]), should_stop)
            engine._set_attention(plan.knockouts)
            return engine._traces.run_trace(engine.lm, engine.paths, ids, plan.for_row(0), want,
                                            engine.remote)["logits"][0].float().cpu()  # [vocab]

        return sample_tokens(ids, next_logits, max_new_tokens, temperature, seed,
                             eos_ids(engine.tokenizer, engine.model), engine.adapter.max_context,
                             engine.decode_token, on_token, should_stop)
