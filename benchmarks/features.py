"""SAE training throughput and the cost of reading features, each against a plain forward.

    python benchmarks/features.py                         # demo model, L15.resid_post, width 4096, k 32
    python benchmarks/features.py --sae DIR               # a trained / loaded SAE instead of random weights
    python benchmarks/features.py --tiny                  # a tiny random model (seconds; for tests)

Training: tokens/s of the forward stopped at the site's layer (what feeds training), of one TopK
optimiser step, and of both together (what `mechscope features train` gets on a corpus's first pass; later passes
read held values and cost the step alone), against a plain full
forward's tokens/s on the same batch. Toggle: for the IOI prompt, the extra time to encode the
site's value and rank its features (the features view; the value comes from the cached clean pass),
and an engine run with one feature clamped (incremental recompute from the site's layer), each as a
ratio to one plain full forward of the prompt.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mechscope.engine import Engine
from mechscope.engine.features.formats import load_sae
from mechscope.engine.features.reading import site_values
from mechscope.engine.features.sae import SparseAutoencoder
from mechscope.engine.features.training import TopKTrainer, TrainConfig
from mechscope.engine.interventions import FeatureClamp

PROMPT = "When Mary and John went to the store, John gave a drink to"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_sae(site: str, d_model: int, width: int, k: int) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(width, d_model, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return SparseAutoencoder(site=site, W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(width), W_dec=W_dec,
                             b_dec=torch.zeros(d_model), activation="topk", k=k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of --model")
    parser.add_argument("--site", default=None, help="default L15.resid_post (L1.resid_post with --tiny)")
    parser.add_argument("--sae", default=None, help="an SAE folder; default random TopK weights")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seqs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tiny:
        from mechscope.engine.testing import tiny_engine

        engine = tiny_engine("llama")
    else:
        engine = Engine.load(args.model)
    site = args.site or ("L1.resid_post" if args.tiny else "L15.resid_post")
    d_model = engine.adapter.d_model
    sae = (load_sae(args.sae, site, d_model) if args.sae else random_sae(site, d_model, args.width, args.k))
    engine.attach_sae("bench", sae)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, engine.adapter.vocab_size, (args.seqs, args.seq_len), generator=g).to(engine.device)
    n_tokens = ids.numel()
    with torch.no_grad():
        full = median_seconds(lambda: engine.passes.forward(ids, []), args.repeats)
        partial = median_seconds(lambda: site_values(engine.passes, ids, site), args.repeats)
        batch = site_values(engine.passes, ids, site).reshape(-1, d_model).float()
    trainer = TopKTrainer(d_model, TrainConfig(width=sae.d_sae, k=max(sae.k, 1)), engine.device)
    step = median_seconds(lambda: trainer.step(batch), args.repeats)
    print(f"model {engine.info.name}  site {site}  SAE {sae.d_sae} features, k {sae.k}  "
          f"batch {args.seqs}x{args.seq_len} tokens  device {engine.device}")
    print(f"plain full forward           {n_tokens / full:10.0f} tok/s")
    print(f"forward stopped at {site:<10}{n_tokens / partial:10.0f} tok/s  ({partial / full:.2f}x a full forward)")
    print(f"TopK step (forward+backward) {n_tokens / step:10.0f} tok/s")
    print(f"training (both)              {n_tokens / (partial + step):10.0f} tok/s  "
          f"({(partial + step) / full:.2f}x a full forward's time per token; a corpus's first pass)")
    print(f"training from held values    {n_tokens / step:10.0f} tok/s  "
          f"({step / full:.2f}x; later passes over a corpus smaller than the run)")

    prompt_ids, _ = engine.passes.prompt_ids(PROMPT)
    with torch.no_grad():
        forward = median_seconds(lambda: engine.passes.forward(prompt_ids, []), args.repeats * 3)
        value = site_values(engine.passes, prompt_ids, site)

        def view() -> object:
            return sae.encode(value[0]).topk(10, dim=-1)

        read = median_seconds(view, args.repeats * 3)
        acts = sae.encode(value[0])
    feature = int(acts[-1].argmax())
    clamp = [FeatureClamp(site, "bench", feature, float(acts[-1, feature]) * 2, positions=[-1])]
    engine.run(PROMPT)
    run_edit = median_seconds(lambda: engine.run(PROMPT, clamp), args.repeats * 3)
    print(f"features view (encode + top 10 per token)   {read / forward:.3f}x a plain forward")
    print(f"run with one feature clamped (incremental)  {run_edit / forward:.3f}x a plain forward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
