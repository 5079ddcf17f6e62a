"""Engine speed as ratios against a plain Hugging Face forward measured in the same run (CPU, 2 threads).

    python benchmarks/engine.py            # GPT-2-small-shaped random model and the demo model
    python benchmarks/engine.py --no-demo  # only the random model
    python benchmarks/engine.py --only-set --set-rows 100  # head sweep over 100 IOI prompts (demo)
    python benchmarks/engine.py --fv-rows 20  # also a function vector over 20 antonym prompts

Each figure is a median over repeats, timed alternately with a plain forward so that both see the
same machine load: a ratio is the median of the engine's times over the median of the plain
forwards timed beside them. Every engine cache is cleared before each timed repeat that should not
reuse it, so no figure comes from a cached answer.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable

import torch
import transformers

from mechscope.engine import Engine, HeadAblation, Metric
from mechscope.engine.testing import tiny_tokenizer

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", target=" Mary", foil=" John")


def paired_medians(plain: Callable[[], object], fn: Callable[[], object], repeats: int,
                   setup: Callable[[], object] | None = None) -> tuple[float, float]:
    """Medians of `fn` and of `plain`, timed alternately (slow drifts in machine load cancel)."""
    fn_times, plain_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        plain()
        plain_times.append(time.perf_counter() - start)
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        fn_times.append(time.perf_counter() - start)
    return statistics.median(fn_times), statistics.median(plain_times)


def tensor_bytes(tensors) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
    return total


def engine_cache_bytes(engine: Engine) -> int:
    tensors = []
    for clean in engine.passes.clean_cache.values():
        tensors.append(clean.final)
        for call in clean.calls:
            tensors += [call.hidden, *call.kwargs.values()]
            tensors += [v for v in call.kwargs.values() if isinstance(v, tuple) for v in v]
    for acts in engine.passes.source_cache.values():
        for group in (acts.z, acts.attn_out, acts.mlp_out, acts.resid_post):
            tensors += list(group)
    return tensor_bytes(tensors)


def gpt2_small_random() -> tuple[transformers.PreTrainedModel, object]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    model = transformers.GPT2LMHeadModel(config).eval()
    return model, tiny_tokenizer()


def bench(name: str, model, tokenizer, clean: str, corrupt: str, repeats: int) -> None:
    engine = Engine(model, tokenizer, source=name)
    ids = torch.tensor([tokenizer(clean).input_ids])
    n_pos = ids.shape[1]
    plain = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    plain.set_attn_implementation("sdpa")

    def plain_forward():
        with torch.no_grad():
            plain(ids)

    plain_forward()

    def clear():
        engine.clear_caches()

    beside_plain = functools.partial(paired_medians, plain_forward)  # every figure timed next to it
    run_plain = beside_plain(lambda: engine.run(clean), repeats, setup=clear)

    mid = engine.adapter.n_layers // 2
    engine.run(clean, metric=METRIC)  # the clean pass is resident, as in the live UI
    toggles = iter(range(10**6))
    incremental = beside_plain(
        lambda: engine.run(clean, [HeadAblation(mid, next(toggles) % engine.adapter.n_heads)], metric=METRIC),
        repeats)
    late = engine.adapter.n_layers - 2
    late_toggle = beside_plain(
        lambda: engine.run(clean, [HeadAblation(late, next(toggles) % engine.adapter.n_heads)], metric=METRIC),
        repeats)

    sweep_repeats = max(1, repeats // 5)
    head_sweep = beside_plain(lambda: engine.sweep("head", clean, corrupt, METRIC), sweep_repeats, setup=clear)
    atp = beside_plain(lambda: engine.sweep("atp", clean, corrupt, METRIC), sweep_repeats, setup=clear)
    # senders -> one head's query: L23.H3 (the demo's name-mover candidate) scaled to the model's depth
    a = engine.adapter
    receiver = f"L{round(a.n_layers * 23 / 30)}.H{3 % a.n_heads}.q"
    path_sweep = beside_plain(lambda: engine.path_sweep(receiver, clean, corrupt, METRIC), sweep_repeats,
                              setup=clear)

    clear()
    engine.run(clean, metric=METRIC)
    engine.sweep("head", clean, corrupt, METRIC)
    extra = engine_cache_bytes(engine)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    n_variants = engine.adapter.n_layers * engine.adapter.n_heads
    print(f"\n{name}: {engine.adapter.n_layers} layers x {engine.adapter.n_heads} heads, d_model "
          f"{engine.adapter.d_model}, vocab {engine.adapter.vocab_size}, {n_pos}-token prompt, "
          f"{torch.get_num_threads()} threads")
    base = statistics.median([plain_median for _, plain_median in (run_plain, incremental)])
    print(f"  plain HF forward                   {base * 1e3:8.2f} ms   1.00x")
    rows = [
        ("run, no interventions (uncached)", run_plain, "target <= 1.0x"),
        (f"toggle one head ablation at L{mid}", incremental, "target <= 0.45x"),
        (f"toggle one head ablation at L{late}", late_toggle, "re-runs 2 layers"),
        (f"head-patching sweep ({n_variants} heads)", head_sweep, "target <= 22x"),
        ("AtP over every head", atp, "target <= 4x"),
        (f"path sweep into {receiver}", path_sweep, "target <= 10x"),
    ]
    for label, (seconds, plain_seconds), target in rows:
        print(f"  {label:34} {seconds * 1e3:8.2f} ms {seconds / plain_seconds:6.2f}x  ({target})")
    print(f"  extra memory held by the engine's caches: {extra / 2**20:.1f} MiB "
          f"({extra / weights:.1%} of the {weights / 2**20:.0f} MiB of weights)")


def bench_set(name: str, model, tokenizer, rows: int, repeats: int) -> None:
    """Mean-metric head-patching sweep over `rows` IOI prompts, against one plain forward of the
    same padded batch (attention mask and position ids as the sweep uses them)."""
    from mechscope.engine.prompt_sets import ioi_set
    from mechscope.engine.set_batches import encode
    from mechscope.engine.set_runs import sweep_set

    engine = Engine(model, tokenizer, source=name)
    pset = ioi_set(tokenizer, n=rows)
    batch = encode(engine, pset.column("clean"))
    plain = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    plain.set_attn_implementation("sdpa")

    def plain_forward():
        with torch.no_grad():
            plain(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.position_ids)

    plain_forward()
    result = {}

    def sweep():
        result["sweep"] = sweep_set(engine, pset)

    seconds, plain_seconds = paired_medians(plain_forward, sweep, max(1, repeats))
    a = engine.adapter
    mean = result["sweep"].base_metric.mean()
    print(f"\n{name}: {rows} IOI prompts ({min(batch.lengths)}-{max(batch.lengths)} tokens), "
          f"{a.n_layers * a.n_heads} heads, {torch.get_num_threads()} threads")
    print(f"  plain HF forward over the set      {plain_seconds * 1e3:8.1f} ms   1.00x")
    print(f"  mean-metric head-patching sweep    {seconds * 1e3:8.1f} ms {seconds / plain_seconds:6.2f}x"
          f"  (mean logit diff IO - S {mean:.3f})")


# Words that are one token in the tiny tokenizer, for models whose tokenizer lacks the shipped lists'.
FALLBACK_PAIRS = [("Mary", "John"), ("store", "drink"), ("Alice", "Bob"), ("dog", "moon"), ("Paris", "sad"),
                  ("John", "Mary"), ("drink", "store"), ("Bob", "Alice")]


def bench_function_vector(name: str, model, tokenizer, rows: int, repeats: int, shots: int = 5) -> None:
    """A function vector (AIE of every head, the vector, zero-shot accuracy with and without) over
    `rows` in-context antonym prompts, against one plain forward of the same padded batch."""
    from mechscope.engine.function_vectors import function_vector
    from mechscope.engine.prompt_sets import PromptSetError, icl_set
    from mechscope.engine.set_batches import encode

    engine = Engine(model, tokenizer, source=name)
    try:
        pset = icl_set(tokenizer, "antonyms", n=rows, shots=shots)
    except PromptSetError:
        pset = icl_set(tokenizer, "antonyms", n=rows, shots=min(shots, len(FALLBACK_PAIRS) - 1),
                       pairs=FALLBACK_PAIRS)
    batch = encode(engine, pset.column("clean"))
    plain = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    plain.set_attn_implementation("sdpa")

    def plain_forward():
        with torch.no_grad():
            plain(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.position_ids)

    plain_forward()
    layer = engine.adapter.n_layers * 2 // 5
    result = {}

    def compute():
        result["fv"] = function_vector(engine, pset, layer, n_heads=10 if engine.adapter.n_heads * 3 > 10 else 3)

    seconds, plain_seconds = paired_medians(plain_forward, compute, max(1, repeats))
    a = engine.adapter
    fv = result["fv"]
    print(f"\n{name}: function vector over {rows} antonym prompts ({min(batch.lengths)}-{max(batch.lengths)} "
          f"tokens), {a.n_layers * a.n_heads} heads, {torch.get_num_threads()} threads")
    print(f"  plain HF forward over the set      {plain_seconds * 1e3:8.1f} ms   1.00x")
    print(f"  function vector (AIE, vector, acc) {seconds * 1e3:8.1f} ms {seconds / plain_seconds:6.2f}x"
          f"  (zero-shot accuracy {fv.accuracy_without:.0%} -> {fv.accuracy_with:.0%} at L{layer})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-demo", action="store_true", help="skip the demo model")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set-rows", type=int, default=0,
                        help="also time a head-patching sweep over this many IOI prompts (demo model)")
    parser.add_argument("--only-set", action="store_true", help="only the prompt-set figure")
    parser.add_argument("--fv-rows", type=int, default=0,
                        help="also time a function vector over this many antonym prompts (demo model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    if args.fv_rows:
        from mechscope.engine.loading import load_model

        loaded = load_model("demo", device="cpu", dtype="float32")
        bench_function_vector("demo (SmolLM2-135M-Instruct)", loaded.model, loaded.tokenizer, args.fv_rows,
                              max(1, args.repeats // 10))
    if args.set_rows or args.only_set:
        from mechscope.engine.loading import load_model

        loaded = load_model("demo", device="cpu", dtype="float32")
        bench_set("demo (SmolLM2-135M-Instruct)", loaded.model, loaded.tokenizer, args.set_rows or 100,
                  max(1, args.repeats // 10))
        if args.only_set:
            return
    model, tokenizer = gpt2_small_random()
    # A 20-token prompt for the GPT-2-shaped model, as the issue specifies.
    clean = "When Mary and John went to the store, John gave a drink to Mary and the cat sat"
    corrupt = "When Mary and John went to the store, Mary gave a drink to Mary and the cat sat"
    n_tokens = len(tokenizer(clean).input_ids)
    if n_tokens != 20:
        raise SystemExit(f"benchmark prompt has {n_tokens} tokens, expected 20")
    bench("GPT-2-small-shaped random model", model, tokenizer, clean, corrupt, args.repeats)
    if not args.no_demo:
        from mechscope.engine.loading import load_model

        loaded = load_model("demo", device="cpu", dtype="float32")
        bench("demo (SmolLM2-135M-Instruct)", loaded.model, loaded.tokenizer, CLEAN, CORRUPT, args.repeats)


if __name__ == "__main__":
    main()
