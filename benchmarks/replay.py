"""`mechscope replay S --check` of a 33-step session against the time its steps took when recorded.

    python benchmarks/replay.py              # demo model, a 20-prompt IOI set in the session
    python benchmarks/replay.py --rows 100   # the set sweep over 100 prompts
    python benchmarks/replay.py --tiny       # a tiny random model (smoke run)

The session is recorded here, in a temporary data folder, as a researcher's hour in the workbench
leaves it: live runs toggling heads with the workbench's views, head sweeps, a path sweep, a set run,
a set sweep, an estimate with verified heads and two generations (33 steps). Each step is executed
through `mechscope.requests.execute` and recorded with its own duration. Then `mechscope replay NAME
--check` runs as a user would run it (a fresh process loading the model); the figure is the replay's
time (after loading) over the sum of the recorded durations (target <= 1.2x), with the lines of
progress the replay printed on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
OTHER = "When John and Mary went to the store, Mary gave a drink to"


def requests(engine, rows: int) -> list:
    """The 33 steps, in the order a session would hold them."""
    from mechscope.engine import HeadAblation, HeadScale, Metric, Views
    from mechscope.engine.prompt_sets import ioi_set
    from mechscope.requests.kinds import (
        AUTO_VERIFY,
        EstimateRequest,
        GenerateRequest,
        PathSweepRequest,
        RunRequest,
        RunSetRequest,
        SweepRequest,
        SweepSetRequest,
    )

    a = engine.adapter
    metric = Metric("logit_diff", target=" Mary", foil=" John")
    views = Views(attention=(f"L{a.n_layers // 2}.H0",), sinks=True, logit_lens=True, attribution=True,
                  stats=True)
    pset = ioi_set(engine.tokenizer, n=rows)
    steps: list = [RunRequest(CLEAN, CORRUPT, metric, views=views)]
    active: list = []
    for i in range(18):  # toggles at several layers, as a researcher edits heads one at a time
        layer, head = (a.n_layers * (i % 6)) // 6, i % a.n_heads
        edit = HeadAblation(layer, head) if i % 3 else HeadScale(layer, head, factor=0.5)
        active = [*active[-2:], edit]
        steps.append(RunRequest(CLEAN, CORRUPT, metric, tuple(active), views))
    steps.append(RunRequest(OTHER, None, Metric("logit_diff", target=" John", foil=" Mary"), views=views))
    steps.append(SweepRequest("head", CLEAN, CORRUPT, metric))
    steps.append(SweepRequest("atp", CLEAN, CORRUPT, metric))
    steps.append(SweepRequest("resid", CLEAN, CORRUPT, metric))
    steps.append(SweepRequest("attn", CLEAN, CORRUPT, metric))
    steps.append(SweepRequest("head", CLEAN, CORRUPT, metric, "denoising"))
    receiver = f"L{round(a.n_layers * 23 / 30)}.H{3 % a.n_heads}.q"
    steps.append(PathSweepRequest(receiver, CLEAN, CORRUPT, metric))
    steps.append(RunSetRequest(pset))
    steps.append(RunSetRequest(pset, interventions=(HeadAblation(a.n_layers - 2, 0),)))
    steps.append(SweepSetRequest(pset))
    steps.append(EstimateRequest(pset, verify_top_k=AUTO_VERIFY))
    steps.append(RunRequest(CLEAN, CORRUPT, metric, tuple(active), views))
    steps.append(GenerateRequest(CLEAN, max_new_tokens=12))
    steps.append(GenerateRequest(CLEAN, None, tuple(active), max_new_tokens=12))
    assert len(steps) == 33, len(steps)
    return steps


def record(model: str, data_dir: Path, rows: int) -> tuple[str, float]:
    """Record the session; returns its name and the sum of its steps' own durations."""
    os.environ["MECHSCOPE_DATA_DIR"] = str(data_dir)
    from mechscope.engine import Engine
    from mechscope.requests.registry import execute
    from mechscope.sessions import Session

    engine = Engine.load(model, device="cpu", dtype="float32")
    session = Session.create("replay-bench", engine=engine)
    total = 0.0
    for request in requests(engine, rows):
        outcome = execute(engine, request)
        if not outcome.ok:
            raise SystemExit(f"{request.kind}: {outcome.error}")
        session.record_outcome(outcome)
        total += outcome.seconds
        print(f"  recorded {request.kind:<10} {outcome.seconds:7.2f} s", flush=True)
    session.close()
    return session.name, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20, help="IOI prompts in the session's set")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the demo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = "demo"
        if args.tiny:
            from mechscope.engine.testing import tiny_model, tiny_tokenizer

            model = str(Path(tmp) / "tiny-llama")
            tiny_model("llama").save_pretrained(model)
            tiny_tokenizer().save_pretrained(model)
        name, recorded = record(model, Path(tmp), args.rows)
        env = {**os.environ, "MECHSCOPE_DATA_DIR": tmp, "OMP_NUM_THREADS": str(args.threads)}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mechscope", "replay", name, "--check", "--model", model,
                               "--device", "cpu", "--dtype", "float32"],
                              cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"replay exited with {done.returncode}")
    found = re.search(r"replayed in ([\d.]+) s; the recorded steps took ([\d.]+) s", done.stdout)
    assert found, done.stdout[-2000:]
    replayed = float(found.group(1))
    progress = [line for line in done.stderr.splitlines() if line.strip()]
    print(f"\n{'tiny random model' if args.tiny else 'demo (SmolLM2-135M-Instruct)'}: 33 steps ({args.rows}-prompt set), {args.threads} threads")
    print(f"  recorded steps' own durations  {recorded:8.1f} s")
    print(f"  replay --check (after loading) {replayed:8.1f} s  {replayed / recorded:5.2f}x  (target <= 1.2x)")
    print(f"  the whole command              {wall:8.1f} s  (loading the model included)")
    print(f"  progress lines on stderr: {len(progress)}; last: {progress[-1] if progress else '-'}")


if __name__ == "__main__":
    main()
