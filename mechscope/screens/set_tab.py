"""The set tab's job: load or generate a prompt set, step its rows, set numbers, set sweeps, estimates
with exact verification, head detectors, massive activations, function vectors and the selected
head's role table over the set (beside its pattern). Every request comes from `Workbench.sets`; its
outcome goes back through `Workbench.accept`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mechscope.requests.kinds import Outcome, Request
from mechscope.tui.commands import key_of, palette_title
from mechscope.tui.widgets.set_view import SetRowTable, SetView, sweep_progress
from mechscope.workbench.set_circuits import FV_GRID
from mechscope.workbench.set_rows import problems_note
from mechscope.workbench.set_texts import parse_function_vector_text
from mechscope.workbench.sets import ESTIMATE_GRID, SET_SWEEP_GRID

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

RUNNING = {"run_set": "set numbers", "sweep_set": "set sweep", "estimate": "estimate",
           "detect_heads": "head detectors", "massive": "massive activations",
           "template_set": "building the prompt set", "function_vector": "function vector",
           "role_heads": "name-mover / S-inhibition scores"}
CANCELLABLE = ("sweep_set", "estimate", "function_vector")
GRID_AFTER = {"sweep_set": SET_SWEEP_GRID, "estimate": ESTIMATE_GRID,  # request kind -> the grid it fills
              "function_vector": FV_GRID, "role_heads": "name_mover"}
SHOWN_IN_TAB = ("massive", "run_set", "template_set", "function_vector")  # kinds whose result is the set tab
QUIET = ("set_attention",)  # follows the grid cursor: no status line while it runs
ROLES_DEBOUNCE_S = 0.3  # the role table is asked for once the grid cursor rests


class SetTab:
    """Prompt-set commands, shown in the set tab (`SetView`)."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen
        self._roles_timer: Any = None

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"prompt_set": self.open_set, "set_row": self.step_row, "set_numbers": self.set_numbers,
                "set_sweep": self.set_sweep, "estimate": self.estimate, "detect_heads": self.detect_heads,
                "massive": self.massive, "drop_failing_rows": self.drop_failing_rows,
                "abc_means": self.abc_means,
                "function_vector": self.function_vector, "role_heads": self.role_heads}

    @property
    def view(self) -> SetView:
        return self.screen.part(SetView, SetView)

    def started(self, request: Request) -> None:
        if request.kind in QUIET:
            return
        self.screen.say(f"{RUNNING.get(request.kind, request.kind)} running"
                        + (" (esc cancels)" if request.kind in CANCELLABLE else ""))
        if request.kind in CANCELLABLE:  # their progress and results are below the row table
            self.screen.tabs.active = "tab-set"
            self.view.show_results()

    def partial(self, request: Request, value: Any) -> None:
        if self.screen.bench.sets.partial(request, value) and self.screen.alive:  # type: ignore[arg-type]
            self.show()
            if request.kind == "sweep_set":
                self.screen.say(f"set sweep running: {sweep_progress(value)} (esc cancels)")
            if self.screen.grid_part.metric == SET_SWEEP_GRID:
                self.screen.grid_part.show()

    def finished(self, outcome: Outcome) -> None:
        """A set outcome was accepted by the Workbench: show what it changed."""
        screen = self.screen
        sets = screen.bench.sets
        kind = outcome.request.kind
        grid = screen.grid_part
        if kind in QUIET:
            if outcome.ok:
                self.show_roles()
            return
        if sets.error:
            screen.show_error(sets.error)
        elif outcome.cancelled:
            screen.say(f"{RUNNING.get(kind, kind)} cancelled")
        elif outcome.ok and kind == "template_set":
            self.say_checks()
        elif outcome.ok:
            screen.say(f"{RUNNING.get(kind, kind)} done")
            if kind in GRID_AFTER:
                grid.metric = GRID_AFTER[kind]
            elif kind == "detect_heads" and sets.detectors is not None:
                grid.metric = next(iter(sets.detectors.scores))
                screen.say(f"grid: {grid.title()} ({key_of('choose_grid')} chooses a detector, {key_of('cycle_grid')} "
                           f"cycles; {key_of('help')} shows their definitions)")
            if kind in SHOWN_IN_TAB:
                screen.tabs.active = "tab-set"
        self.show()
        if outcome.ok and kind == "template_set":
            self.request_roles()
        if outcome.ok and kind == "function_vector":
            screen.say(sets.circuits.function_vector_lines()[1].strip())
        if outcome.ok and kind == "run_set":
            self.view.show_numbers(sets)  # in a short view the set's name and failing rows scroll away
        grid.show()

    def show(self) -> None:
        self.sync_prompt_pane()
        self.view.show(self.screen.bench.sets)

    def sync_prompt_pane(self) -> None:
        """A row of the set became the inputs: show it in the prompt fields."""
        pane = self.screen.prompt_pane
        if pane.values() != self.screen.bench.inputs:
            pane.set_values(self.screen.bench.inputs)

    def say_checks(self) -> None:
        """A set became current: its size, or the rows that fail the checks and the ways out (this
        also replaces an earlier error about another set)."""
        sets = self.screen.bench.sets
        if sets.pset is None:
            return
        if sets.problems:
            self.screen.show_error(problems_note(sets.pset.name, sets.problems, key_of("use_spaced_tokens"),
                                                 f"ctrl+p {palette_title('drop_failing_rows')!r}"))
            return
        self.screen.bench.error = None  # an error about the set it replaces no longer holds
        self.screen.say(f"set {sets.pset.name}: {len(sets.pset)} rows"
                        + (f" ({sets.changes})" if sets.changes else "") + ", every row passes the checks")

    def fix_spacing(self) -> None:
        """T with a set whose rows fail: the set with their target / foil spaced becomes current."""
        self.submit_or_say(self.screen.bench.sets.fix_spacing())
        self.say_checks()

    def drop_failing_rows(self) -> None:
        if self.screen.loaded():
            self.submit_or_say(self.screen.bench.sets.drop_failing_rows())
            if self.screen.bench.sets.error is None:
                self.say_checks()

    def submit_or_say(self, request: Request | None) -> None:
        sets = self.screen.bench.sets
        if request is None:
            if sets.error:
                where = f" ({key_of('prompt_set')} loads or generates one)" if sets.pset is None else ""
                self.screen.show_error(sets.error + where)
            self.show()
            return
        self.screen.submit(request)
        self.show()

    def cancel(self) -> bool:
        """Esc: stop a running set sweep or estimate; True when one was running."""
        return self.screen.jobs.cancel("sets")

    # ---------------------------------------------------------------- commands

    def open_set(self) -> None:
        from mechscope.screens.prompt_set import PromptSetScreen

        screen = self.screen
        dialog = PromptSetScreen()

        def done(text: str | None) -> None:
            if text is None or dialog.chosen is None or not screen.loaded():
                return
            request = screen.bench.sets.open(dialog.chosen)
            self.submit_or_say(request)
            building = request is not None and request.kind == "template_set"  # checked once built
            if screen.bench.sets.error is None and not building:
                self.say_checks()
            screen.tabs.active = "tab-set"

        screen.app.push_screen(dialog, done)

    def step_row(self, delta: int) -> None:
        sets = self.screen.bench.sets
        request = sets.step(delta)
        if request is None and sets.pset is None:
            self.screen.show_error(f"no prompt set: {key_of('prompt_set')} loads or generates one")
            return
        self.screen.submit(request)
        self.show()

    def picked(self, message: SetRowTable.Picked) -> None:
        self.go_to_row(message.index)
        self.screen.grid.focus()

    def go_to_row(self, index: int) -> None:
        """A row of the set becomes the current inputs (enter on the set tab's table)."""
        sets = self.screen.bench.sets
        if sets.pset is None:
            return
        self.step_row(index - sets.row)

    def set_numbers(self) -> None:
        if self.screen.loaded():
            self.submit_or_say(self.screen.bench.sets.run_request())

    def set_sweep(self) -> None:
        if self.screen.loaded():
            self.submit_or_say(self.screen.bench.sets.sweep_request())

    def estimate(self) -> None:
        from mechscope.screens.estimate import EstimateScreen

        screen = self.screen
        if not screen.loaded():
            return
        if screen.bench.sets.pset is None:
            screen.show_error(f"no prompt set: press {key_of('prompt_set')} to load or generate one")
            return

        def done(text: str | None) -> None:
            if text is not None:
                self.submit_or_say(screen.bench.sets.estimate_text(text))

        screen.app.push_screen(EstimateScreen(), done)

    def detect_heads(self) -> None:
        if self.screen.loaded():
            self.submit_or_say(self.screen.bench.sets.detect_request())

    def massive(self) -> None:
        if self.screen.loaded():
            self.submit_or_say(self.screen.bench.sets.massive_request())

    def abc_means(self) -> None:
        """Mean ablation over the set's corrupted prompts (ABC), in single runs and set runs."""
        screen = self.screen
        request = screen.bench.sets.abc_means_request()
        if request is None:
            screen.show_error(screen.bench.sets.error or "no prompt set")
            return
        screen.submit(request)

    def function_vector(self) -> None:
        """The function vector of the current (in-context) set: asks for the layer it steers at."""
        from mechscope.screens.ask_value import AskValueScreen, error_of

        screen = self.screen
        if not screen.loaded():
            return
        if screen.bench.sets.pset is None:
            screen.show_error(f"no prompt set: press {key_of('prompt_set')} to load or generate one "
                              "(antonyms 20, country-capital 20, uppercase 20)")
            return
        n_layers = screen.engine.info.n_layers

        def done(text: str | None) -> None:
            if text is not None:
                self.submit_or_say(screen.bench.sets.circuits.function_vector_text(text, n_layers))

        screen.app.push_screen(AskValueScreen(
            "function vector", "the layer to add it at (zero-shot prompts), then optionally the number of "
            "top heads and a coefficient: 12 · 12 10 3", f"{n_layers * 2 // 5} 10 1",
            lambda text: error_of(parse_function_vector_text, text, n_layers)), done)

    def role_heads(self) -> None:
        if self.screen.loaded():
            self.submit_or_say(self.screen.bench.sets.circuits.role_heads_request())

    # ---------------------------------------------------------------- role table beside the pattern

    def follow_head(self) -> None:
        """The grid cursor moved: once it rests, the selected head's role table over the set."""
        self.show_roles()
        if self._roles_timer is not None:
            self._roles_timer.stop()
        if self.screen.bench.sets.pset is not None:
            self._roles_timer = self.screen.set_timer(ROLES_DEBOUNCE_S, self.request_roles)

    def request_roles(self) -> None:
        selected = self.screen.selected_head()
        if selected is None or not self.screen.alive:
            return
        request = self.screen.bench.sets.circuits.attention_request(*selected)
        if request is not None:
            self.screen.submit(request)

    def show_roles(self) -> None:
        selected = self.screen.bench.selected
        circuits = self.screen.bench.sets.circuits
        self.screen.attention_view.show_roles(None if selected is None else circuits.role_table(*selected))
