"""Median time from a keypress to the repainted workbench, excluding model compute (target: <= 50 ms).

Runs the app headless with Pilot on an engine stub that answers every request from results computed
once on a tiny random model, so what is timed is the UI: key dispatch, worker hand-off, message
handling, widget updates and the repaint. With `--model demo` (or any engine source) the real engine
runs and each run's own compute time (RunResult.compute.seconds) is subtracted instead.

    python benchmarks/tui.py [--model demo] [--repeats 40] [--size 120x40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textual import events  # noqa: E402

from mechscope.requests.kinds import RunRequest  # noqa: E402
from mechscope.screens.workbench import WorkbenchScreen  # noqa: E402
from mechscope.tui.app import MechscopeApp  # noqa: E402


class InstantEngine:
    """Answers run() from a memo of real results keyed by the request, so compute takes ~0 s."""

    def __init__(self, engine) -> None:
        self.inner = engine
        self.memo: dict[tuple, object] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, prompt, interventions=(), views=None, metric=None, corrupted=None, top_k=10,
            should_stop=None):
        key = (prompt, tuple(interventions), views, metric, corrupted, top_k)
        if key not in self.memo:
            self.memo[key] = self.inner.run(prompt, interventions=interventions, views=views,
                                            metric=metric, corrupted=corrupted, top_k=top_k)
        return self.memo[key]


class TimedScreen(WorkbenchScreen):
    """Stamps when an outcome has been applied (accepted by the Workbench and repainted)."""

    def on_finished(self, message) -> None:
        # Only the live run's outcome: the attention pattern that follows it is another request,
        # and stamping it too would time the key to the attention's repaint instead.
        request = message.outcome.request
        live = isinstance(request, RunRequest) and not self.bench.is_attention_request(request)
        super().on_finished(message)
        if live:
            self.app.result_at = time.perf_counter()


class TimedApp(MechscopeApp):
    """Stamps when a key reaches the app, when a run result has been applied, and every repaint."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.workbench = TimedScreen(self.bench, source=self.source, deterministic=kwargs.get("deterministic", False))
        self.key_at = 0.0
        self.result_at = 0.0
        self.paints: list[float] = []
        self.subtract_compute = False  # True with a real engine; memoised results took no time

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self.key_at = time.perf_counter()
        await super().on_event(event)

    def _display(self, screen, renderable) -> None:
        super()._display(screen, renderable)
        self.paints.append(time.perf_counter())

    def first_paint_after(self, moment: float) -> float:
        return next(t for t in self.paints if t >= moment)


async def measure(app: TimedApp, size: tuple[int, int], repeats: int, warm: bool) -> dict:
    samples: dict[str, list[float]] = {"toggle ablation (space)": [], "grid cursor (j/k)": []}
    async with app.run_test(size=size) as pilot:
        for _ in range(4):
            await pilot.pause()
            await app.workers.wait_for_complete()
        if warm:  # fill the memo so the timed presses never wait for the model
            for _ in range(2):
                await toggle(pilot, app)
        for index in range(repeats):
            samples["toggle ablation (space)"].append(await toggle(pilot, app))
            app.paints.clear()
            await pilot.press("j" if index % 2 == 0 else "k")
            await pilot.pause()
            samples["grid cursor (j/k)"].append(app.first_paint_after(app.key_at) - app.key_at)
    return samples


async def toggle(pilot, app: TimedApp) -> float:
    """Press space, wait for the new result on screen; seconds from key to repaint minus compute."""
    before = app.bench.result
    app.paints.clear()
    await pilot.press("space")
    while app.bench.result is before:
        await app.workers.wait_for_complete()
        await pilot.pause()
    await pilot.pause()
    result = app.bench.result
    compute = result.compute.seconds if app.subtract_compute and result.compute else 0.0
    return app.first_paint_after(app.result_at) - app.key_at - compute


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="engine source (default: stubbed tiny model)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    os.environ.setdefault("MECHSCOPE_DATA_DIR", tempfile.mkdtemp(prefix="mechscope-bench-"))

    if args.model is None:
        from mechscope.engine.testing import tiny_engine

        engine = InstantEngine(tiny_engine("llama"))
        label = "stubbed tiny-llama (results memoised: no model compute)"
    else:
        from mechscope.engine import Engine

        engine = Engine.load(args.model)
        label = f"{args.model} (model compute subtracted)"
    app = TimedApp(lambda progress: engine, source=label, record=False, deterministic=True)
    app.subtract_compute = args.model is not None
    samples = asyncio.run(measure(app, (width, height), args.repeats, warm=args.model is None))

    print(f"keypress -> repaint at {width}x{height}, {label}, {args.repeats} presses each")
    for name, values in samples.items():
        ms = sorted(v * 1000 for v in values)
        print(f"  {name:<26} median {statistics.median(ms):6.1f} ms   "
              f"p90 {ms[int(0.9 * (len(ms) - 1))]:6.1f} ms   (target <= 50 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
