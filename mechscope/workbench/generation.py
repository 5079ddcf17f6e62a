"""The workbench's generation: its settings, the intervened and baseline lanes of the latest one, and
the tokens each has streamed (held by `Workbench.generations`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, cast

from mechscope.engine.results import GeneratedToken
from mechscope.requests.kinds import GenerateRequest, Outcome, Request
from mechscope.workbench.state import Generation, GenerationSettings, Lane
from mechscope.workbench.typed_values import parse_generation

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench


class Generations:
    """`settings` the next generation uses; `latest`, the one shown (None before the first)."""

    def __init__(self, bench: Workbench, settings: GenerationSettings | None = None) -> None:
        self.bench = bench
        self.settings = settings or GenerationSettings()
        self.latest: Generation | None = None

    def start(self) -> GenerateRequest | None:
        """The intervened lane's request; `latest.baseline` runs the same without interventions."""
        bench = self.bench
        if not bench.inputs.clean.strip():
            bench.error = "empty prompt: nothing to generate from"
            return None
        settings = self.settings
        request = GenerateRequest(bench.inputs.clean, bench.inputs.corrupted or None, bench.interventions(),
                                  settings.max_new_tokens, settings.temperature, settings.seed)
        self.latest = Generation(request, dataclasses.replace(request, interventions=()))
        bench.error = None
        return request

    def set_settings(self, max_new_tokens: str, temperature: str, seed: str) -> str | None:
        """Validate and store the settings `start` uses; returns the error, or None when stored."""
        try:
            settings = parse_generation(max_new_tokens, temperature, seed)
        except ValueError as exc:
            return str(exc)
        self.settings = settings
        self.bench.info = (f"generation: {settings.max_new_tokens} tokens, temperature {settings.temperature:g}, "
                           f"seed {settings.seed}")
        return None

    def is_current(self) -> bool:
        """The latest generation ran on the prompts and interventions as they are now."""
        gen, bench = self.latest, self.bench
        return gen is not None and gen.request.prompt == bench.inputs.clean \
            and gen.request.interventions == bench.interventions() \
            and gen.request.corrupted == (bench.inputs.corrupted or None)

    def lane(self, request: Request) -> Lane | None:
        gen = self.latest
        if gen is None:
            return None
        if request is gen.request:
            return "intervened"
        if request is gen.baseline:
            return "baseline"
        return None

    def token(self, request: GenerateRequest, token: GeneratedToken) -> Lane | None:
        """A streamed token; the lane it belongs to, or None for a superseded generation."""
        lane = self.lane(request)
        if lane is not None and self.latest is not None:
            self.latest.tokens[lane].append(token)
        return lane

    def accept(self, outcome: Outcome) -> None:
        """Store a lane's tokens; the intervened lane's outcome is recorded."""
        request = cast(GenerateRequest, outcome.request)
        lane, gen = self.lane(request), self.latest
        if lane is None or gen is None:
            return None
        if outcome.cancelled:
            gen.cancelled = True
            return None
        if not outcome.ok:
            self.bench.error = f"generate failed: {outcome.error}"
            return None
        gen.tokens[lane] = list(outcome.result)
        if lane == "intervened":
            gen.done = True
            self.bench.recorder.work(outcome, "generation")
        return None
