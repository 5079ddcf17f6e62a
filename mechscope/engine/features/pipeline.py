"""Training an SAE on a model's site: activations streamed from a corpus, checkpoints, the SAELens layout out.

Forward passes stop at the site's layer (`reading.site_values`). The first position of each chunk
is left out (its residual norm is an outlier in most models: the attention sink). A corpus smaller
than the run is gone over again, its site values held in memory (`ChunkSchedule`). Activations pass
through a shuffling buffer so one batch mixes many chunks. A checkpoint (safetensors + JSON) is
written every `checkpoint_every` steps; a run started again with the same settings resumes from it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mechscope.engine.errors import Cancelled
from mechscope.engine.features.cache import MANIFEST
from mechscope.engine.features.corpus import token_chunks
from mechscope.engine.features.formats import read_safetensors, save_saelens
from mechscope.engine.features.reading import site_values
from mechscope.engine.features.sae import FeatureError, SparseAutoencoder
from mechscope.engine.features.training import StepStats, TopKTrainer, TrainConfig
from mechscope.engine.interventions import parse_feature_site

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


@dataclass(frozen=True)
class Progress:
    tokens: int
    total: int
    tokens_per_second: float
    stats: StepStats
    corpus_pass: int = 1  # 2 and on: the corpus again, its site values from memory

    def line(self) -> str:
        s = self.stats
        again = f"  (corpus pass {self.corpus_pass})" if self.corpus_pass > 1 else ""
        return (f"{self.tokens}/{self.total} tokens  {self.tokens_per_second:.0f} tok/s  FVE {s.fve:.3f}  "
                f"L0 {s.l0:.1f}  dead {s.dead_fraction:.3f}{again}")


@dataclass(frozen=True)
class Stream:
    """Where training text comes from: documents, and a digest naming them for the manifest."""

    texts: Callable[[], Iterable[str]]
    digest: str
    description: str


class ChunkSchedule:
    """The order chunks are trained on: the stream's chunks as they come, then, while the run needs more
    tokens, the same chunks again in a new random order each pass. The site values of chunks already
    forwarded are held (up to `memory_bytes`), so a later pass over a small corpus costs no forward."""

    def __init__(self, chunks: Iterator[list[int]], seed: int, memory_bytes: int) -> None:
        self.fresh = chunks
        self.seed = seed
        self.memory_bytes = memory_bytes
        self.seen: list[list[int]] = []
        self.values: dict[int, torch.Tensor] = {}  # chunk index -> site values [pos - 1, d_model]
        self.held = 0
        self.passes = 1

    def order(self) -> Iterator[int]:
        """Chunk indices in training order (endless once the stream is read, unless it held nothing)."""
        for chunk in self.fresh:
            self.seen.append(chunk)
            yield len(self.seen) - 1
        while self.seen:
            self.passes += 1
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.passes)
            yield from torch.randperm(len(self.seen), generator=generator).tolist()

    def site_values(self, engine, site: str, group: list[int]) -> list[torch.Tensor]:
        """Float32 values [pos - 1, d_model] per chunk of `group`; one forward for those not held."""
        missing = [i for i in group if i not in self.values]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            ids = torch.tensor([self.seen[i] for i in missing], device=engine.device)
            with engine.lock, torch.no_grad():
                values = site_values(engine.passes, ids, site)[:, 1:].float().cpu()  # [seqs, pos-1, d_model]
            fresh = dict(zip(missing, values, strict=True))
            for i, row in fresh.items():
                if self.held + row.numel() * 4 <= self.memory_bytes:
                    self.values[i] = row
                    self.held += row.numel() * 4
        return [self.values[i] if i in self.values else fresh[i] for i in group]


def activation_batches(engine, site: str, schedule: ChunkSchedule, order: Iterator[int], batch_tokens: int,
                       seqs_per_forward: int, seed: int, consumed: list[int]) -> Iterator[torch.Tensor]:
    """Shuffled batches [batch_tokens, d_model] (float32) of site values; `consumed[0]` counts the chunks used."""
    generator = torch.Generator().manual_seed(seed)
    buffer: list[torch.Tensor] = []
    held = 0
    while True:
        group = list(itertools.islice(order, seqs_per_forward))
        if not group:
            return
        consumed[0] += len(group)
        values = schedule.site_values(engine, site, group)
        buffer.extend(values)
        held += sum(v.shape[0] for v in values)
        if held >= 2 * batch_tokens:
            pool = torch.cat(buffer)
            pool = pool[torch.randperm(pool.shape[0], generator=generator)]
            while pool.shape[0] >= 2 * batch_tokens:
                yield pool[:batch_tokens]
                pool = pool[batch_tokens:]
            buffer, held = [pool], pool.shape[0]


def site_layer(engine, site: str) -> int:
    """The layer `site` names, checked against the engine's model; FeatureError when it has no such layer."""
    layer, _ = parse_feature_site(site)
    if not 0 <= layer < engine.adapter.n_layers:
        raise FeatureError(f"site {site}: the model has layers 0..{engine.adapter.n_layers - 1}")
    return layer


def train(engine, site: str, config: TrainConfig, stream: Stream, tokens: int, out: Path,
          batch_tokens: int = 1024, seq_len: int = 128, seqs_per_forward: int = 8, checkpoint_every: int = 50,
          memory_bytes: int = 1 << 30, on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> SparseAutoencoder:
    """Train until `tokens` tokens have been used; writes the SAE and manifest.json to `out` and returns it."""
    site_layer(engine, site)
    out.mkdir(parents=True, exist_ok=True)
    trainer = TopKTrainer(engine.adapter.d_model, config, engine.device)
    settings = {"site": site, "config": config.to_dict(), "corpus_digest": stream.digest, "tokens": tokens,
                "batch_tokens": batch_tokens, "seq_len": seq_len, "model_digest": engine.weights_digest}
    skip = _resume(trainer, out, settings)
    schedule = ChunkSchedule(token_chunks(engine.tokenizer, stream.texts(), seq_len), config.seed, memory_bytes)
    order = schedule.order()
    for _ in itertools.islice(order, skip):
        pass
    consumed = [skip]
    started, tokens_at_start = time.perf_counter(), trainer.tokens
    stats = None
    for batch in activation_batches(engine, site, schedule, order, batch_tokens, seqs_per_forward,
                                    config.seed + trainer.steps, consumed):
        if trainer.tokens >= tokens:
            break
        if should_stop is not None and should_stop():
            _checkpoint(trainer, out, settings, consumed[0])
            raise Cancelled("training stopped (checkpoint saved; run it again to resume)")
        stats = trainer.step(batch)
        if on_progress is not None:
            rate = (trainer.tokens - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
            on_progress(Progress(trainer.tokens, tokens, rate, stats, schedule.passes))
        if trainer.steps % checkpoint_every == 0:
            _checkpoint(trainer, out, settings, consumed[0])
    if stats is None and trainer.steps == 0:
        raise FeatureError(f"the corpus ({stream.description}) has too little text for one batch of "
                           f"{batch_tokens} tokens")
    sae = trainer.sae(site)
    manifest = {**settings, "tokens_trained": trainer.tokens, "steps": trainer.steps, "seed": config.seed,
                "corpus": stream.description, "input_scale": trainer.scale,
                "seconds": round(time.perf_counter() - started, 1),
                "last_step": None if stats is None else vars(stats)}
    save_saelens(sae, out, {"model_digest": engine.weights_digest, "model": engine.info.name,
                            "trained_by": "mechscope"})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name in (CHECKPOINT, CHECKPOINT_STATE):
        (out / name).unlink(missing_ok=True)
    return SparseAutoencoder(site=site, W_enc=sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec, b_dec=sae.b_dec,
                             activation="topk", k=config.k, source=str(out), format="saelens")


def _checkpoint(trainer: TopKTrainer, out: Path, settings: dict, chunks: int) -> None:
    from safetensors.torch import save

    tensors, numbers = trainer.state()
    tmp = out / (CHECKPOINT + ".tmp")
    tmp.write_bytes(save(tensors))  # a failed write is an OSError
    state_tmp = out / (CHECKPOINT_STATE + ".tmp")
    state_tmp.write_text(json.dumps({"settings": settings, "trainer": numbers, "chunks": chunks}), encoding="utf-8")
    tmp.replace(out / CHECKPOINT)
    state_tmp.replace(out / CHECKPOINT_STATE)


def _resume(trainer: TopKTrainer, out: Path, settings: dict) -> int:
    """Restore the checkpoint in `out` when it was made with `settings`; the chunks it had read."""
    state_path, tensors_path = out / CHECKPOINT_STATE, out / CHECKPOINT
    if not (state_path.is_file() and tensors_path.is_file()):
        return 0
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FeatureError(f"{state_path}: unreadable checkpoint; delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("settings") != settings:
        raise FeatureError(f"{out} holds a checkpoint made with other settings; use another --out or delete it")
    tensors = read_safetensors(tensors_path)
    try:
        trainer.restore(tensors, state["trainer"])
    except (KeyError, ValueError) as exc:
        raise FeatureError(f"{tensors_path}: {exc}") from None
    return int(state["chunks"])
