"""Engine speed and memory on one device: random-weight models of real shapes, each figure against a plain forward.

    python benchmarks/device.py --device cuda --dtype bfloat16   # four real shapes, about five minutes
    python benchmarks/device.py --device cpu --quick             # one tiny model (the test suite runs this)

Models are built from configs with random weights (no downloads): GPT-2 small, the demo's shape
(SmolLM2-135M: Llama, 30 layers x 9 heads, 3 KV heads, d_model 576, vocab 49152), a Llama 3.2 1B
shape and a Llama 3.1 8B shape. A model whose weights and working room do not fit in the device's
free memory is skipped with a note. For each model: the engine's operations on an IOI pair and on an
IOI set, each as median milliseconds, a ratio against a plain Hugging Face forward of the same
tokens timed alternately with it (so both see the same load), and the peak device memory the
operation allocated above the resident model (CUDA only). Repeats shrink with the model so the whole
run stays within --seconds; operations left when the time is spent are reported as skipped.

Imports nothing beyond torch, transformers, accelerate, numpy, safetensors and the engine.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers

from mechscope.engine import Engine, HeadAblation, Metric
from mechscope.engine.attention import ATTN_IMPLEMENTATION
from mechscope.engine.errors import OutOfMemory
from mechscope.engine.model_cache import first_line
from mechscope.engine.prompt_sets import PromptRow, PromptSet, ioi_set
from mechscope.engine.set_batches import encode
from mechscope.engine.set_runs import sweep_set
from mechscope.engine.testing import tiny_config, tiny_tokenizer
from mechscope.engine.verification import estimate_and_verify

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", target=" Mary", foil=" John")
PAIR = PromptSet("pair", (PromptRow(CLEAN, CORRUPT, " Mary", " John"),))
COLUMNS = ("model", "operation", "ms", "x forward", "peak MiB")
SERVED_NOTE = "the served toggle needs mechscope.serve (outside this benchmark's imports): see benchmarks/serve.py"


def _llama(layers: int, heads: int, kv_heads: int, d_model: int, d_mlp: int, vocab: int, rope_theta: float,
           tied: bool, rope_scaling: dict | None = None, max_positions: int = 8192) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=d_model,
        intermediate_size=d_mlp, vocab_size=vocab, rope_theta=rope_theta, rope_scaling=rope_scaling,
        tie_word_embeddings=tied, max_position_embeddings=max_positions, head_dim=d_model // heads,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


SHAPES: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "gpt2-small": lambda: transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                                                  n_positions=1024, bos_token_id=0, eos_token_id=0),
    "smollm2-135m (demo)": lambda: _llama(30, 9, 3, 576, 1536, 49152, 100000.0, True),
    "llama-3.2-1b": lambda: _llama(16, 32, 8, 2048, 8192, 128256, 500000.0, True, _llama3_rope(32.0), 131072),
    "llama-3.1-8b": lambda: _llama(32, 32, 8, 4096, 14336, 128256, 500000.0, False, _llama3_rope(8.0), 131072),
}
QUICK_SHAPES: dict[str, Callable[[], transformers.PretrainedConfig]] = {"tiny-llama": lambda: tiny_config("llama")}


@dataclass
class Row:
    model: str
    operation: str
    ms: float | None = None
    ratio: float | None = None
    peak_mib: float | None = None
    note: str = ""


class Device:
    """Timing and memory on one device: CUDA work is synchronised before a clock is read."""

    def __init__(self, name: str) -> None:
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free_bytes(self) -> int:
        if self.cuda:
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free)
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

    def timed(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def timed_with_peak(self, fn: Callable[[], object]) -> tuple[float, float | None]:
        """Seconds `fn` took and the MiB it allocated at its peak above what was allocated before it
        (CUDA only; None elsewhere)."""
        if not self.cuda:
            return self.timed(fn), None
        self.sync()
        resident = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        seconds = self.timed(fn)
        return seconds, (torch.cuda.max_memory_allocated(self.device) - resident) / 2**20

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def parameter_count(config: transformers.PretrainedConfig) -> int:
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def needed_bytes(n_params: int, dtype: torch.dtype) -> int:
    """Weights plus working room for sweeps and gradient passes over a 20-prompt set."""
    weights = n_params * torch.empty((), dtype=dtype).element_size()
    return int(weights * 1.3) + 3 * 2**30


def build(config: transformers.PretrainedConfig, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    with torch.device(device):  # parameters are created (and initialised) on the device itself
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class PlainForward:
    """A plain Hugging Face forward (sdpa attention, no hooks, no grad) of fixed inputs; the model's
    attention is switched to sdpa and back outside the timed call."""

    def __init__(self, model, inputs: dict) -> None:
        self.model = model
        self.inputs = inputs

    def __call__(self) -> object:
        with torch.no_grad():
            return self.model(**self.inputs)

    def timed(self, dev: Device) -> float:
        self.model.set_attn_implementation("sdpa")
        try:
            return dev.timed(self)
        finally:
            self.model.set_attn_implementation(ATTN_IMPLEMENTATION)


class Bench:
    """The operations of one model, each timed alternately with its plain forward."""

    def __init__(self, dev: Device, name: str, engine: Engine, deadline: float, op_seconds: float,
                 max_repeats: int) -> None:
        self.dev = dev
        self.name = name
        self.engine = engine
        self.deadline = deadline
        self.op_seconds = op_seconds
        self.max_repeats = max_repeats
        self.rows: list[Row] = []
        self.check = "not run"

    def plain(self, batch_kwargs: dict) -> PlainForward:
        return PlainForward(self.engine.model, batch_kwargs)

    def measure(self, operation: str, fn: Callable[[], object], plain: PlainForward,
                setup: Callable[[], object] | None = None) -> None:
        if time.perf_counter() > self.deadline:
            self.rows.append(Row(self.name, operation, note="skipped: out of time"))
            return
        print(f"{self.name}: {operation}", file=sys.stderr, flush=True)  # progress while the table waits
        try:
            plain.timed(self.dev)  # warm-up
            if setup is not None:
                setup()
            first, peak = self.dev.timed_with_peak(fn)  # also the warm-up; sizes the repeats
            repeats = max(1, min(self.max_repeats, int(self.op_seconds / max(first, 1e-4))))
            times, plain_times = [], []
            for _ in range(repeats):
                if time.perf_counter() > self.deadline:
                    break
                plain_times.append(plain.timed(self.dev))
                if setup is not None:
                    setup()
                times.append(self.dev.timed(fn))
            if not times:  # no time for a second call: the first one is the figure
                times, plain_times = [first], [plain.timed(self.dev)]
        except (OutOfMemory, torch.OutOfMemoryError):
            self.engine.clear_caches()
            self.dev.release()
            self.rows.append(Row(self.name, operation, note="out of memory"))
            return
        except Exception as error:  # one broken operation must not cost the figures of the others
            traceback.print_exc()
            self.rows.append(Row(self.name, operation, note=f"failed: {type(error).__name__}: {first_line(error)}"))
            return
        seconds, plain_seconds = statistics.median(times), statistics.median(plain_times)
        self.rows.append(Row(self.name, operation, seconds * 1e3, seconds / plain_seconds, peak))

    def run(self, set_rows: int) -> None:
        engine = self.engine
        a = engine.adapter
        ids = torch.tensor([engine.tokenize(CLEAN)[0]], device=engine.device)
        plain_pair = self.plain({"input_ids": ids})
        n_pos = ids.shape[1]

        self.check = logits_check(engine, plain_pair)
        plain_ms = statistics.median(plain_pair.timed(self.dev) for _ in range(5)) * 1e3
        self.rows.append(Row(self.name, f"plain forward, pair ({n_pos} tokens)", plain_ms, 1.0))
        self.measure("run, uncached", lambda: engine.run(CLEAN), plain_pair, setup=engine.clear_caches)
        mid = a.n_layers // 2
        engine.run(CLEAN, metric=METRIC)  # the clean pass is resident, as in the live UI
        heads = itertools.cycle(range(a.n_heads))
        self.measure(f"toggle one head at L{mid}",
                     lambda: engine.run(CLEAN, [HeadAblation(mid, next(heads))], metric=METRIC), plain_pair)
        self.measure(f"head sweep ({a.n_layers * a.n_heads} heads)",
                     lambda: engine.sweep("head", CLEAN, CORRUPT, METRIC), plain_pair, setup=engine.clear_caches)
        self.measure("AtP, pair", lambda: engine.sweep("atp", CLEAN, CORRUPT, METRIC), plain_pair,
                     setup=engine.clear_caches)
        self.measure("estimate+verify, pair", lambda: estimate_and_verify(engine, PAIR), plain_pair)

        pset = ioi_set(engine.tokenizer, n=set_rows)
        batch = encode(engine, pset.column("clean"))
        plain_set = self.plain({"input_ids": batch.ids, "attention_mask": batch.mask,
                                "position_ids": batch.position_ids})
        set_ms = statistics.median(plain_set.timed(self.dev) for _ in range(3)) * 1e3
        self.rows.append(Row(self.name, f"plain forward, set ({set_rows} rows, <= {batch.ids.shape[1]} tokens)",
                             set_ms, 1.0))
        self.measure(f"set sweep ({set_rows} rows)", lambda: sweep_set(engine, pset), plain_set)
        self.measure(f"estimate+verify, set ({set_rows} rows)", lambda: estimate_and_verify(engine, pset),
                     plain_set)


def logits_check(engine: Engine, plain: PlainForward) -> str:
    """How far the engine's run with no interventions is from the plain forward with the same attention
    (the engine's), at the last position: the engine's hooks must not change the model."""
    with torch.no_grad():
        plain_logits = plain.model(**plain.inputs).logits[0, -1].float().cpu().numpy()  # [vocab]
    engine_logits = engine.run(CLEAN).prediction.logits  # [vocab]
    diff = float(abs(engine_logits - plain_logits).max())
    scale = float(abs(plain_logits).max())
    same_top = int(engine_logits.argmax()) == int(plain_logits.argmax())
    return f"largest difference {diff:.3g} (largest logit magnitude {scale:.3g}), same top token: {same_top}"


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(rows: list[Row], title: str) -> None:
    print(title)
    widths = (max(len(COLUMNS[0]), *(len(r.model) for r in rows)),
              max(len(COLUMNS[1]), *(len(r.operation) for r in rows)), 10, 9, 9)
    print(" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths))))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        cells = [r.model.ljust(widths[0]), r.operation.ljust(widths[1])]
        if r.note:
            cells.append(r.note)
        else:
            cells += [_cell(r.ms, ".2f").rjust(widths[2]), _cell(r.ratio, ".2f").rjust(widths[3]),
                      _cell(r.peak_mib, ".1f").rjust(widths[4])]
        print(" | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--quick", action="store_true", help="one tiny model, few repeats (the test suite's run)")
    parser.add_argument("--models", default="", help="comma-separated subset of: " + ", ".join(SHAPES))
    parser.add_argument("--seconds", type=float, default=270.0, help="time for the whole run")
    parser.add_argument("--set-rows", type=int, default=20, help="IOI prompts in the set figures")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    dev = Device(args.device)
    if dev.cuda and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; pass --device cpu")
    dtype = getattr(torch, args.dtype)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.models:
        wanted = [m.strip() for m in args.models.split(",")]
        unknown = [m for m in wanted if m not in SHAPES]
        if unknown:
            raise SystemExit(f"unknown model {unknown[0]!r}; known: {', '.join(SHAPES)}")
        shapes = {m: SHAPES[m] for m in wanted}
    started = time.perf_counter()
    deadline = started + args.seconds
    rows: list[Row] = []
    fits: list[str] = []
    checks: list[str] = []
    for i, (name, make_config) in enumerate(shapes.items()):
        config = make_config()
        n_params = parameter_count(config)
        label = f"{name} {n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{name} {n_params / 1e6:.1f}M"
        need, free = needed_bytes(n_params, dtype), dev.free_bytes()
        if need > free:
            rows.append(Row(label, "-", note=f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"))
            continue
        if time.perf_counter() > deadline:
            rows.append(Row(label, "-", note="skipped: out of time"))
            continue
        try:
            model = build(config, dev.device, dtype)
        except torch.OutOfMemoryError:
            dev.release()
            rows.append(Row(label, "-", note="skipped: out of memory building it"))
            continue
        engine = Engine(model, tiny_tokenizer(), source=f"random {name}")
        # Split what time is left over the models still to come, bigger ones weigh more.
        left = list(shapes)[i:]
        weight = 1.0 + i
        share = (deadline - time.perf_counter()) * weight / sum(1.0 + j for j in range(i, i + len(left)))
        bench = Bench(dev, label, engine, min(deadline, time.perf_counter() + share),
                      op_seconds=share / 10, max_repeats=3 if args.quick else 20)
        # the set figures of an 8B-sized model would take most of the five minutes at 20 rows
        try:
            bench.run(4 if args.quick else args.set_rows if n_params < 4e9 else min(args.set_rows, 8))
        except Exception as error:  # the next model's figures still come
            traceback.print_exc()
            bench.rows.append(Row(label, "-", note=f"failed: {type(error).__name__}: {first_line(error)}"))
        rows += bench.rows
        checks.append(f"{label}: {bench.check}")
        fits.append(name)
        del engine, model, bench
        dev.release()
    where = torch.cuda.get_device_name(dev.device) if dev.cuda else f"CPU, {torch.get_num_threads()} threads"
    print_table(rows, f"mechscope engine on {where}, {args.dtype}; ratios against a plain forward of the same "
                      f"tokens in the same run; {time.perf_counter() - started:.0f} s in all")
    print(f"fit and ran: {', '.join(fits) or 'none'}")
    print("engine run with no interventions against the plain forward (same attention), last-position logits:")
    for line in checks:
        print(f"  {line}")
    print(SERVED_NOTE)


if __name__ == "__main__":
    main()
