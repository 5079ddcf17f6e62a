"""What `mechscope replay` shows while it runs and which steps it runs: progress on stderr (a bar on
a terminal, one line per step in a pipe) and the `--steps` / `--kind` selections."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

BAR_WIDTH = 24


def parse_steps(text: str) -> set[int]:
    """`3,7-9` -> {3, 7, 8, 9} (step numbers are the seq column); ValueError with a one-line reason."""
    steps: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"--steps: {part!r} is not a number or a range like 7-9") from None
        if first < 1 or last < first or last - first > 1_000_000:
            raise ValueError(f"--steps: {part!r} is not a range of step numbers (1 or more, low-high)")
        steps.update(range(first, last + 1))
    return steps


def parse_kinds(text: str, known: set[str]) -> set[str]:
    """`run,sweep` -> {"run", "sweep"}; ValueError naming an unknown kind and the known ones."""
    kinds = {word.strip() for word in text.split(",") if word.strip()}
    unknown = sorted(kinds - known)
    if unknown or not kinds:
        raise ValueError(f"--kind: unknown kind {', '.join(unknown) or repr(text)} "
                         f"(known: {', '.join(sorted(known))})")
    return kinds


def selector(steps: set[int] | None, kinds: set[str] | None,
             kind_of: Callable[[Any], str | None]) -> Callable[[Any], bool] | None:
    """Keep an event when its seq is in `steps` and its request kind in `kinds` (None: any)."""
    if steps is None and kinds is None:
        return None
    return lambda event: (steps is None or event.seq in steps) and (kinds is None or kind_of(event) in kinds)


class Progress:
    """Steps done / total, the step running and the time since replay started, on `stream`."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()

    def start(self, seq: int, kind: str) -> None:
        """Step `seq` begins: the steps before it are done."""
        elapsed = time.perf_counter() - self.started
        if self.bar:
            filled = BAR_WIDTH * self.done // max(1, self.total)  # steps finished before this one
            line = (f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} "
                    f"· seq {seq} {kind} · {elapsed:.1f} s")
            self.stream.write(line.ljust(72))
        else:
            self.stream.write(f"step {self.done + 1}/{self.total}: seq {seq} {kind} ({elapsed:.1f} s elapsed)\n")
        self.stream.flush()
        self.done += 1

    def close(self) -> None:
        if self.bar:  # the table follows on stdout: leave the terminal line clean
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
