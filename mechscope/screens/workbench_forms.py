"""The workbench screen's dialogs: forms that make or edit interventions, knockouts by position,
steering vectors built or loaded. A mixin of `WorkbenchScreen`: every result goes through its Workbench."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from textual import work

from mechscope.engine.addresses import parse_address
from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    Intervention,
    NeuronClamp,
    SteeringVector,
)
from mechscope.tui.commands import NEW_INTERVENTION_KINDS
from mechscope.tui.messages import Finished
from mechscope.workbench.executor import execute
from mechscope.workbench.numbers import parse_number
from mechscope.workbench.requests import AddVectorRequest, Outcome, Request

if TYPE_CHECKING:
    from textual.widgets import TabbedContent

    from mechscope.screens.steering import SteeringRequest
    from mechscope.tui.widgets.head_grid import HeadGrid
    from mechscope.tui.widgets.views import AttentionMap, AttentionView
    from mechscope.workbench.controller import Workbench

EXAMPLE_POSITIVE = "I love this. It is wonderful"
EXAMPLE_NEGATIVE = "I hate this. It is awful"


class InterventionForms:
    """Dialog-driven commands of the workbench screen (`WorkbenchScreen` provides what is declared here)."""

    if TYPE_CHECKING:
        bench: Workbench
        engine: Any
        engine_calls: int
        _steer_after: tuple[Request, SteeringVector] | None
        app: Any
        @property
        def grid(self) -> HeadGrid: ...
        @property
        def tabs(self) -> TabbedContent: ...
        @property
        def attention_view(self) -> AttentionView: ...
        @property
        def attention_map(self) -> AttentionMap: ...

        def apply(self, request: Request | None) -> None: ...
        def submit(self, request: Request | None) -> None: ...
        def say(self, text: str) -> None: ...
        def show_error(self, text: str) -> None: ...
        def selected_head(self) -> tuple[int, int] | None: ...
        def selected_layer(self) -> int: ...
        def call_after_refresh(self, callback: Any) -> Any: ...
        def post_message(self, message: Any) -> bool: ...
        def _execute(self, request: Request, on_partial: Any = None) -> Outcome: ...

    steering_typed: dict[str, dict[str, str]] = {}  # mode -> the steering dialog's fields as last closed

    def action_scale_head(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        head = self.selected_head()
        if head is None:
            return
        existing = [e for e in self.bench.stack.on_head(*head) if isinstance(e.intervention, HeadScale)]

        def validate(text: str) -> str | None:
            try:
                parse_number("factor", text)
            except ValueError as exc:
                return str(exc)
            return None

        def done(text: str | None) -> None:
            if text is None:
                return
            scale = HeadScale(head[0], head[1], factor=float(text))
            if existing:
                self.apply(self.bench.replace(existing[-1].id, scale))
            else:
                self.apply(self.bench.add(scale))

        initial = f"{existing[-1].intervention.factor:g}" if existing else "2"  # type: ignore[attr-defined]
        self.app.push_screen(AskValueScreen(f"scale L{head[0]}.H{head[1]}",
                                            "factor (0 removes the head, 1 leaves it, 2 doubles it)",
                                            initial, validate), done)

    def action_edit_head(self) -> None:
        head = self.selected_head()
        if head is None:
            return
        entries = self.bench.stack.on_head(*head)
        if not entries:
            self.show_error(f"no intervention on L{head[0]}.H{head[1]} (space ablates it)")
            return
        self.edit_entry(entries[-1].id)

    def edit_entry(self, entry_id: int) -> None:
        from mechscope.screens.edit_intervention import EditInterventionScreen

        entry = self.bench.stack.get(entry_id)
        if entry is None:
            return
        shown = self.bench.resolved(entry)

        def done(edited: Intervention | None) -> None:
            if edited is not None and edited != shown:
                self.apply(self.bench.propose(edited, replace_id=entry_id))

        hint = "source_prompt follows the corrupted prompt until you change it" \
            if entry_id in self.bench.follows else ""
        def check(edited: Intervention) -> str | None:
            return self.dry_run_problem(edited, entry_id)

        self.app.push_screen(EditInterventionScreen(shown, hint=hint, check=check) if hint else
                             EditInterventionScreen(shown, check=check), done)

    def dry_run_problem(self, intervention: Intervention, replace_id: int | None = None) -> str | None:
        """What the engine's dry run says against this edit (None: accepted). Cheap: no forward pass."""
        if self.engine is None:
            return None
        request = self.bench.dry_run_request(intervention, replace_id)
        if request is None:
            return None
        outcome = execute(self.engine, request)
        return None if outcome.ok else outcome.error

    def propose(self, intervention: Intervention, replace_id: int | None = None, toggle: bool = False) -> None:
        if self.engine is None:
            self.show_error("the model is still loading")
            return
        self.apply(self.bench.propose(intervention, replace_id=replace_id, toggle=toggle))

    def open_new_form(self, template: Intervention, title: str, hint: str) -> None:
        """The edit form filled with `template`; what the user saves is added after a dry run."""
        from mechscope.screens.edit_intervention import EditInterventionScreen

        def done(made: Intervention | None) -> None:
            if made is not None:
                self.propose(made)

        self.app.push_screen(EditInterventionScreen(template, title=title, hint=hint,
                                                    check=self.dry_run_problem), done)

    def action_ablate_component(self, component: str) -> None:
        if self.selected_head() is None:
            return
        name = "attention" if component == "attn" else "MLP"
        self.open_new_form(ComponentAblation(self.selected_layer(), component, "zero"),  # type: ignore[arg-type]
                           f"ablate the {name} output of a layer",
                           "mode zero, mean or resample; empty positions = all")

    def action_clamp_neuron(self) -> None:
        if self.selected_head() is None:
            return
        d_mlp = self.engine.info.d_mlp
        self.open_new_form(NeuronClamp(self.selected_layer(), 0, 0.0), "clamp an MLP neuron",
                           f"neuron 0..{d_mlp - 1}; empty positions = all")

    def new_intervention(self, kind: str) -> Intervention:
        """A sensible new intervention of `kind` on the selected head or layer, to edit in the form."""
        layer, head = self.grid.selected or (0, 0)
        inputs = self.bench.inputs
        result = self.bench.result
        last = max(len(result.tokens) - 1, 0) if result is not None else 0
        vectors = sorted(getattr(self.engine, "vectors", {}) or {})
        templates: dict[str, Intervention] = {
            "head_ablation": HeadAblation(layer, head),
            "head_scale": HeadScale(layer, head, 2.0),
            "activation_patch": ActivationPatch(f"L{layer}.H{head}", inputs.corrupted or inputs.clean),
            "attention_knockout": AttentionKnockout(layer, head, last, 0),
            "component_ablation": ComponentAblation(layer, "attn", "zero"),
            "neuron_clamp": NeuronClamp(layer, 0, 0.0),
            "steering_vector": SteeringVector(layer, vectors[-1] if vectors else "", 4.0),
        }
        return templates[kind]

    def action_add_intervention(self) -> None:
        from mechscope.screens.choose import ChooseScreen

        if self.selected_head() is None:
            return

        def chosen(kind: str | None) -> None:
            if kind is None:
                return
            if kind == "steering_vector" and not getattr(self.engine, "vectors", None):
                self.say("no steering vector yet: build one first")
                self.action_build_vector()
                return
            hints = {"component_ablation": "component attn or mlp; mode zero, mean or resample",
                     "steering_vector": f"vectors: {', '.join(sorted(getattr(self.engine, 'vectors', {})))}; "
                                        "positions all, last or 3,4",
                     "activation_patch": "address like L3.H1, L3.attn, L3.mlp, L3.resid_pre"}
            self.open_new_form(self.new_intervention(kind), f"add {kind.replace('_', ' ')}",
                               hints.get(kind, "empty positions = all"))

        self.app.push_screen(ChooseScreen("add an intervention", list(NEW_INTERVENTION_KINDS)), chosen)

    # ---------------------------------------------------------------- attention knockouts

    def action_knockout(self) -> None:
        """Focus the attention map to pick an edge; with the map focused, toggle the edge under its cursor."""
        if self.selected_head() is None:
            return
        attention_map = self.attention_map
        view = self.attention_view
        if not attention_map.has_focus:
            self.tabs.active = "tab-attention"
            self.call_after_refresh(attention_map.focus)
            self.say("pick an edge: arrows move query / key, k or enter knocks it out, esc returns")
            return
        if view.address is None or attention_map.cursor is None:
            self.show_error("no attention pattern to pick an edge from yet")
            return
        self.toggle_knockout(view.address, *attention_map.cursor)

    def toggle_knockout(self, address: str, query: int, key: int) -> None:
        parsed = parse_address(address)
        self.apply(self.bench.toggle_knockout(parsed.layer, int(parsed.head), query, key))  # type: ignore[arg-type]

    def action_knockout_at(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        head = self.selected_head()
        if head is None:
            return
        result = self.bench.result
        n_tokens = len(result.tokens) if result is not None else 1
        query, key = self.attention_map.cursor or (n_tokens - 1, 0)

        def parse(text: str) -> tuple[int, int] | None:
            parts = [part.strip() for part in text.replace("->", ",").split(",")]
            if len(parts) != 2 or not all(part.isdigit() for part in parts):
                return None
            return int(parts[0]), int(parts[1])

        def validate(text: str) -> str | None:
            edge = parse(text)
            if edge is None:
                return "two positions, query,key (e.g. 13,0)"
            return self.dry_run_problem(AttentionKnockout(head[0], head[1], *edge))

        def done(text: str | None) -> None:
            edge = parse(text) if text else None
            if edge is not None:
                self.toggle_knockout(f"L{head[0]}.H{head[1]}", *edge)

        self.app.push_screen(AskValueScreen(f"knock out an edge of L{head[0]}.H{head[1]}",
                                            f"query,key positions (0..{n_tokens - 1}; key ≤ query)",
                                            f"{query},{key}", validate), done)

    # ---------------------------------------------------------------- steering vectors

    def action_build_vector(self) -> None:
        self.open_steering("build")

    def action_load_vector(self) -> None:
        self.open_steering("load")

    def open_steering(self, mode: str) -> None:
        from mechscope.screens.steering import SteeringScreen

        if self.selected_head() is None:
            return
        first = not getattr(self.engine, "vectors", None)
        screen = SteeringScreen(mode, self.engine.info.n_layers, self.selected_layer(),
                                name="love-hate" if first and mode == "build" else "",
                                positive=EXAMPLE_POSITIVE if first else "",
                                negative=EXAMPLE_NEGATIVE if first else "",
                                previous=self.steering_typed.get(mode))

        def done(asked: SteeringRequest | None) -> None:
            self.steering_typed = {**self.steering_typed, mode: screen.typed}
            if asked is None:
                return
            verb = "building" if asked.path is None else "loading"
            self.say(f"{verb} steering vector {asked.name}…")
            steer = SteeringVector(asked.layer, asked.name, asked.coeff, asked.positions)  # type: ignore[arg-type]
            if asked.path is None:
                request: Request = self.bench.vector_request(asked.name, asked.layer, asked.positive,
                                                             asked.negative)
                self._steer_after = (request, steer)
                self.submit(request)
            else:
                self.engine_calls += 1
                self.load_vector_file(asked.path, asked.name, steer)

        self.app.push_screen(screen, done)

    @work(thread=True, exclusive=True, exit_on_error=False, group="vector")
    def load_vector_file(self, path: str, name: str, steer: SteeringVector) -> None:
        """Read the file here (disk I/O off the UI thread), then add the vector as a request."""
        from mechscope.tui.vector_files import read_vector_file

        try:
            vector = read_vector_file(path, name)
        except ValueError as exc:
            outcome = Outcome(AddVectorRequest(name, np.zeros(0, dtype=np.float32)), error=str(exc))
            self.post_message(Finished(outcome))
            return
        request = AddVectorRequest(name, vector)
        self._steer_after = (request, steer)  # set before the message that reads it is posted
        self.post_message(Finished(self._execute(request)))

    def vector_finished(self, outcome: Outcome) -> None:
        pending, self._steer_after = self._steer_after, None
        if not outcome.ok or pending is None or pending[0] is not outcome.request:
            return
        steer = pending[1]
        norm = float(np.linalg.norm(outcome.result))
        self.bench.info = f"vector {steer.vector_id} (norm {norm:.3g}): {steer.label}"
        if steer in self.bench.interventions():
            self.submit(self.bench.next_run())  # already steering: its values changed
        else:
            self.apply(self.bench.propose(steer))
