"""The intervention dialogs' job: forms that make or edit interventions, knockouts by position,
steering vectors built or loaded. Every result goes through the screen's Workbench."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mechscope.engine.addresses import parse_address
from mechscope.engine.interventions import (
    AttentionKnockout,
    ComponentAblation,
    HeadScale,
    Intervention,
    NeuronClamp,
    Place,
    SteeringVector,
    chooser_types,
)
from mechscope.requests.kinds import AddVectorRequest, Outcome, Request
from mechscope.tui.commands import key_of
from mechscope.workbench.numbers import parse_number

if TYPE_CHECKING:
    from mechscope.screens.steering import SteeringRequest
    from mechscope.screens.workbench import WorkbenchScreen

EXAMPLE_POSITIVE = "I love this. It is wonderful"
EXAMPLE_NEGATIVE = "I hate this. It is awful"


class InterventionDialogs:
    """Dialog-driven commands that make, edit or steer interventions."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen
        self.steering_typed: dict[str, dict[str, str]] = {}  # mode -> the steering dialog's fields as last closed
        self.steer_after: tuple[str, SteeringVector] | None = None  # vector name -> steer once it exists

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"ablate": self.ablate, "patch_head": self.patch_head, "undo": self.undo,
                "clear_interventions": self.clear_interventions, "scale_head": self.scale_head, "edit_head": self.edit_head, "add_intervention": self.add_intervention,
                "ablate_component": self.ablate_component, "clamp_neuron": self.clamp_neuron,
                "knockout": self.knockout, "knockout_at": self.knockout_at, "build_vector": self.build_vector,
                "load_vector": self.load_vector}

    def ablate(self, mode: str) -> None:
        if self.screen.selected_head() is not None:
            self.screen.apply(self.screen.bench.edits.ablate(mode))

    def patch_head(self) -> None:
        if self.screen.selected_head() is not None:
            self.screen.apply(self.screen.bench.edits.patch_selected())

    def undo(self) -> None:
        self.screen.apply(self.screen.bench.edits.undo())

    def clear_interventions(self) -> None:
        self.screen.apply(self.screen.bench.edits.clear())

    def scale_head(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen, error_of

        screen = self.screen
        head = screen.selected_head()
        if head is None:
            return
        existing = [e for e in screen.bench.edits.stack.on_head(*head) if isinstance(e.intervention, HeadScale)]

        def done(text: str | None) -> None:
            if text is None:
                return
            scale = HeadScale(head[0], head[1], factor=float(text))
            if existing:
                screen.apply(screen.bench.edits.replace(existing[-1].id, scale))
            else:
                screen.apply(screen.bench.edits.add(scale))

        initial = f"{existing[-1].intervention.factor:g}" if existing else "2"  # type: ignore[attr-defined]
        screen.app.push_screen(AskValueScreen(f"scale L{head[0]}.H{head[1]}",
                                              "factor (0 removes the head, 1 leaves it, 2 doubles it)",
                                              initial, lambda text: error_of(parse_number, "factor", text)),
                               done)

    def edit_head(self) -> None:
        screen = self.screen
        head = screen.selected_head()
        if head is None:
            return
        entries = screen.bench.edits.stack.on_head(*head)
        if not entries:
            screen.show_error(f"no intervention on L{head[0]}.H{head[1]} ({key_of('ablate')} ablates it)")
            return
        self.edit_entry(entries[-1].id)

    def edit_entry(self, entry_id: int) -> None:
        from mechscope.screens.edit_intervention import EditInterventionScreen

        screen = self.screen
        entry = screen.bench.edits.stack.get(entry_id)
        if entry is None:
            return
        shown = screen.bench.edits.resolved(entry)

        def done(edited: Intervention | None) -> None:
            if edited is not None and edited != shown:
                screen.apply(screen.bench.edits.propose(edited, replace_id=entry_id))

        hint = "source_prompt follows the corrupted prompt until you change it" \
            if entry_id in screen.bench.edits.follows else ""

        async def check(edited: Intervention) -> str | None:
            return await self.dry_run_problem(edited, entry_id)

        screen.app.push_screen(EditInterventionScreen(shown, hint=hint, check=check) if hint else
                               EditInterventionScreen(shown, check=check), done)

    async def dry_run_problem(self, intervention: Intervention, replace_id: int | None = None) -> str | None:
        """What the engine's dry run says against this edit (None: accepted), run in a worker."""
        screen = self.screen
        if screen.engine is None:
            return None
        request = screen.bench.edits.dry_run_request(intervention, replace_id)
        if request is None:
            return None
        outcome = await screen.jobs.outcome(request)
        return None if outcome.ok else outcome.error

    def propose(self, intervention: Intervention, replace_id: int | None = None, toggle: bool = False) -> None:
        screen = self.screen
        if screen.loaded():
            screen.apply(screen.bench.edits.propose(intervention, replace_id=replace_id, toggle=toggle))

    def open_new_form(self, template: Intervention, title: str, hint: str) -> None:
        """The edit form filled with `template`; what the user saves is added after a dry run."""
        from mechscope.screens.edit_intervention import EditInterventionScreen

        def done(made: Intervention | None) -> None:
            if made is not None:
                self.propose(made)

        self.screen.app.push_screen(EditInterventionScreen(template, title=title, hint=hint,
                                                           check=self.dry_run_problem), done)

    def ablate_component(self, component: str) -> None:
        if self.screen.selected_head() is None:
            return
        name = "attention" if component == "attn" else "MLP"
        self.open_new_form(ComponentAblation(self.screen.selected_layer(), component, "zero"),  # type: ignore[arg-type]
                           f"ablate the {name} output of a layer",
                           "mode zero, mean or resample; empty positions = all")

    def clamp_neuron(self) -> None:
        screen = self.screen
        if screen.selected_head() is None:
            return
        d_mlp = screen.engine.info.d_mlp
        self.open_new_form(NeuronClamp(screen.selected_layer(), 0, 0.0), "clamp an MLP neuron",
                           f"neuron 0..{d_mlp - 1}; empty positions = all")

    def place(self) -> Place:
        """Where a new intervention starts: the selected head or layer, the prompt's last position."""
        screen = self.screen
        layer, head = screen.bench.selected or (0, 0)
        inputs = screen.bench.inputs
        result = screen.bench.result
        last = max(len(result.tokens) - 1, 0) if result is not None else 0
        vectors = tuple(sorted(getattr(screen.engine, "vectors", {}) or {}))
        info = screen.engine.info
        return Place(layer, head, last, inputs.clean, inputs.corrupted or "", vectors,
                     kv_group=max(info.n_heads // max(info.n_kv_heads, 1), 1))

    def add_intervention(self) -> None:
        from mechscope.screens.choose import ChooseScreen

        screen = self.screen
        if screen.selected_head() is None:
            return
        kinds = {cls.kind: cls for cls in chooser_types()}

        def chosen(kind: str | None) -> None:
            if kind is None:
                return
            if kind == "steering_vector" and not getattr(screen.engine, "vectors", None):
                screen.say("no steering vector yet: build one first")
                self.build_vector()
                return
            cls, place = kinds[kind], self.place()
            self.open_new_form(cls.example(place), f"add {cls.title}", cls.form_hint(place))

        items = [(cls.kind, cls.title, cls.description) for cls in kinds.values()]
        screen.app.push_screen(ChooseScreen("add an intervention", items), chosen)

    # ---------------------------------------------------------------- attention knockouts

    def knockout(self) -> None:
        """Focus the attention map to pick an edge; with the map focused, toggle the edge under its cursor."""
        screen = self.screen
        if screen.selected_head() is None:
            return
        attention_map = screen.attention_map
        view = screen.attention_view
        if not attention_map.has_focus:
            screen.tabs.active = "tab-attention"
            screen.call_after_refresh(attention_map.focus)
            screen.say("pick an edge: arrows move query / key, k or enter knocks it out, esc returns")
            return
        if view.address is None or attention_map.cursor is None:
            screen.show_error("no attention pattern to pick an edge from yet")
            return
        self.toggle_knockout(view.address, *attention_map.cursor)

    def toggle_knockout(self, address: str, query: int, key: int) -> None:
        parsed = parse_address(address)
        self.screen.apply(self.screen.bench.edits.toggle_knockout(parsed.layer, int(parsed.head), query, key))  # type: ignore[arg-type]

    def knockout_at(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        screen = self.screen
        head = screen.selected_head()
        if head is None:
            return
        result = screen.bench.result
        n_tokens = len(result.tokens) if result is not None else 1
        query, key = screen.attention_map.cursor or (n_tokens - 1, 0)

        def parse(text: str) -> tuple[int, int] | None:
            parts = [part.strip() for part in text.replace("->", ",").split(",")]
            if len(parts) != 2 or not all(part.isdigit() for part in parts):
                return None
            return int(parts[0]), int(parts[1])

        async def validate(text: str) -> str | None:
            edge = parse(text)
            if edge is None:
                return "two positions, query,key (e.g. 13,0)"
            return await self.dry_run_problem(AttentionKnockout(head[0], head[1], *edge))

        def done(text: str | None) -> None:
            edge = parse(text) if text else None
            if edge is not None:
                self.toggle_knockout(f"L{head[0]}.H{head[1]}", *edge)

        screen.app.push_screen(AskValueScreen(f"knock out an edge of L{head[0]}.H{head[1]}",
                                              f"query,key positions (0..{n_tokens - 1}; key ≤ query)",
                                              f"{query},{key}", validate), done)

    # ---------------------------------------------------------------- steering vectors

    def build_vector(self) -> None:
        self.open_steering("build")

    def load_vector(self) -> None:
        self.open_steering("load")

    def open_steering(self, mode: str) -> None:
        from mechscope.screens.steering import SteeringScreen

        screen = self.screen
        if screen.selected_head() is None:
            return
        first = not getattr(screen.engine, "vectors", None)
        dialog = SteeringScreen(mode, screen.engine.info.n_layers, screen.selected_layer(),
                                name="love-hate" if first and mode == "build" else "",
                                positive=EXAMPLE_POSITIVE if first else "",
                                negative=EXAMPLE_NEGATIVE if first else "",
                                previous=self.steering_typed.get(mode))

        def done(asked: SteeringRequest | None) -> None:
            self.steering_typed = {**self.steering_typed, mode: dialog.typed}
            if asked is None:
                return
            verb = "building" if asked.path is None else "loading"
            screen.say(f"{verb} steering vector {asked.name}…")
            steer = SteeringVector(asked.layer, asked.name, asked.coeff, asked.positions)  # type: ignore[arg-type]
            self.steer_after = (asked.name, steer)
            if asked.path is None:
                screen.submit(screen.bench.vectors.request(asked.name, asked.layer, asked.positive, asked.negative))
            else:
                screen.jobs.start(group="vector", prepare=lambda: vector_from_file(asked.path or "", asked.name))

        screen.app.push_screen(dialog, done)

    def vector_finished(self, outcome: Outcome) -> None:
        screen = self.screen
        pending, self.steer_after = self.steer_after, None
        if not outcome.ok or pending is None or pending[0] != getattr(outcome.request, "name", None):
            return
        steer = pending[1]
        norm = float(np.linalg.norm(outcome.result))
        screen.bench.info = f"vector {steer.vector_id} (norm {norm:.3g}): {steer.label}"
        if steer in screen.bench.interventions():
            screen.submit(screen.bench.next_run())  # already steering: its values changed
        else:
            screen.apply(screen.bench.edits.propose(steer))


def vector_from_file(path: str, name: str) -> Request | Outcome:
    """In the worker: read the file (disk I/O off the UI thread) into the request that adds it."""
    from mechscope.tui.vector_files import read_vector_file

    try:
        return AddVectorRequest(name, read_vector_file(path, name))
    except ValueError as exc:
        return Outcome(AddVectorRequest(name, np.zeros(0, dtype=np.float32)), error=str(exc))
