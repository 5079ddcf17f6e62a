"""The head grid's job: which metric colours it, its marks, moving to a typed address, number mode."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mechscope.tui.commands import key_of
from mechscope.tui.widgets.head_grid import GRID_METRICS, SET_GRID_METRICS, HeadGrid
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.workbench.set_circuits import FV_GRID
from mechscope.workbench.sets import ESTIMATE_GRID, SET_SWEEP_GRID

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

SWEEP_OF_GRID = {"patching": "head", "atp": "atp"}  # grid metric -> the sweep kind that computes it
GRID_OF_SWEEP = {kind: name for name, kind in SWEEP_OF_GRID.items()}
BASE_GRIDS = ("attribution", "sink", "patching", "atp")
NORMALISABLE_GRIDS = ("patching", SET_SWEEP_GRID)  # grids of exact patching effects, shown in either scale
ADDRESS = re.compile(r"^\s*(?:l(?:ayer)?\s*(?P<layer>\d+)\s*(?:[.\s]\s*h(?:ead)?\s*(?P<head>\d+))?"
                     r"|(?P<part>mlp|attn|attention)\s*(?P<part_layer>\d+))\s*$", re.IGNORECASE)


def parse_grid_address(text: str, n_layers: int, n_heads: int) -> tuple[int, int | None]:
    """`L23.H3`, `L23 H3`, `L23`, `mlp 5`, `attn 5` -> (layer, head or None); ValueError says what is wrong."""
    found = ADDRESS.match(text)
    if found is None:
        raise ValueError(f"not an address: {text.strip()!r} (try L23.H3, L23 or mlp 5)")
    layer = int(found["layer"] if found["layer"] is not None else found["part_layer"])
    head = int(found["head"]) if found["head"] is not None else None
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise ValueError(f"head {head} is out of range 0..{n_heads - 1}")
    return layer, head


class GridPart:
    """Colours the head grid by one metric (the run's, a sweep's, the set's or a detector's)."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen
        self.metric = "attribution"

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"cycle_grid": self.cycle, "choose_grid": self.choose, "go_to": self.go_to,
                "toggle_numbers": self.toggle_numbers, "toggle_effect_scale": self.toggle_effect_scale}

    @property
    def grid(self) -> HeadGrid:
        return self.screen.grid

    def names(self) -> list[str]:
        """What `c` cycles through: the run's and single-pair sweeps' grids, then the set's."""
        names = list(BASE_GRIDS) + self.screen.bench.sets.grid_names()
        if self.metric not in names:
            names.append(self.metric)
        return names

    def values(self, name: str) -> np.ndarray | None:
        bench = self.screen.bench
        result = bench.result
        if name == "attribution":
            return None if result is None or result.attribution is None else result.attribution.heads
        if name == "sink":
            return None if result is None else result.sink_scores
        if name not in SWEEP_OF_GRID:
            return bench.sets.grid_values(name)
        return bench.sweeps.values(SWEEP_OF_GRID[name])

    def show(self, name: str | None = None) -> None:
        if name is not None:
            self.metric = name
        bench = self.screen.bench
        values = self.values(self.metric)
        stale = bench.sweeps.staleness(SWEEP_OF_GRID.get(self.metric, ""))
        note = f"{stale}: rerun the sweep" if stale else "not computed"
        normalised = (bench.sweeps.effect_scale == "normalised" and values is not None
                      and self.metric in NORMALISABLE_GRIDS)
        self.grid.show_metric(self.metric, values, note, self.sweep_direction(values), normalised)
        self.show_marks()

    def sweep_direction(self, values: np.ndarray | None) -> str:
        """The direction of the sweep behind a sweep grid ("" for the other grids)."""
        sweep = self.screen.bench.sweeps.states.get(SWEEP_OF_GRID.get(self.metric, ""))
        return sweep.request.direction if sweep is not None and values is not None else ""

    def show_marks(self) -> None:
        stack = self.screen.bench.edits.stack
        sets = self.screen.bench.sets
        exact = (sets.exact_marks() if self.metric == ESTIMATE_GRID
                 else sets.circuits.marks() if self.metric == FV_GRID else {})
        self.grid.set_marks({**exact, **stack.head_marks()})
        self.grid.set_row_marks(stack.layer_marks())

    def cycle(self) -> None:
        names = self.names()
        self.use(names[(names.index(self.metric) + 1) % len(names)])

    def use(self, name: str) -> None:
        self.show(name)
        if self.values(self.metric) is None and self.metric in SWEEP_OF_GRID:
            key = key_of(f"sweep('{SWEEP_OF_GRID[self.metric]}')")
            stale = self.screen.bench.sweeps.staleness(SWEEP_OF_GRID[self.metric])
            why = f"{stale} since the sweep: " if stale else ""
            self.screen.say(f"grid: {self.title()} ({why}press {key} to run the sweep)")
        else:
            self.screen.say(f"grid: {self.title()}")

    def title(self) -> str:
        """The grid metric as the grid's title names it (`previous-token`, not `previous_token`)."""
        return (GRID_METRICS.get(self.metric) or SET_GRID_METRICS.get(self.metric, (self.metric, True)))[0]

    def choose(self) -> None:
        """Pick the grid metric from a list (detectors included) instead of cycling through them."""
        from mechscope.screens.choose import ChooseScreen

        titles = {**GRID_METRICS, **SET_GRID_METRICS}
        items = [(name, titles.get(name, (name, True))[0],
                  "computed" if self.values(name) is not None else "not computed yet")
                 for name in self.names()]

        def chosen(name: str | None) -> None:
            if name is not None:
                self.use(name)

        self.screen.app.push_screen(ChooseScreen("colour the grid by", items), chosen)

    def go_to(self) -> None:
        """Move the cursor to a typed address: `L23.H3`, `L23`, `mlp 5`."""
        from mechscope.screens.ask_value import AskValueScreen, error_of

        screen = self.screen
        if screen.engine is None:
            screen.show_error("the model is still loading")
            return
        n_layers, n_heads = self.grid.n_layers, self.grid.n_heads

        def done(text: str | None) -> None:
            if text is None:
                return
            layer, head = parse_grid_address(text, n_layers, n_heads)
            if head is None:
                head = screen.bench.selected[1] if screen.bench.selected is not None else 0
            screen.select(layer, head)

        screen.app.push_screen(AskValueScreen("go to", "a head or layer: L23.H3, L23, mlp 5", "",
                                              lambda text: error_of(parse_grid_address, text, n_layers, n_heads)),
                               done)

    def toggle_numbers(self) -> None:
        shown = not self.grid.show_numbers
        for heatmap in self.screen.query(Heatmap):
            heatmap.toggle_numbers(shown)
        self.screen.say("numbers in heatmaps" if shown else
                        f"heatmaps: colours only ({key_of('toggle_numbers')} shows numbers)")

    def toggle_effect_scale(self) -> None:
        """Δ metric or normalised effect in the sweep grids, the sweep view and the set tab."""
        screen = self.screen
        screen.bench.sweeps.toggle_effect_scale()
        self.show()
        screen.sweeps.rescale()
        screen.set_tab.show()
        screen.say(screen.bench.info)
