"""The features tab's job: choose the SAE folder, read the clean prompt's features, move the selection
over them, read the selected feature's card, name features and edit them as interventions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mechscope.engine.interventions import sae_label
from mechscope.requests.kinds import FeatureCardRequest, Outcome
from mechscope.tui.commands import palette_title
from mechscope.tui.widgets.features_view import FeaturesView
from mechscope.workbench.features import label_problem
from mechscope.workbench.numbers import parse_number

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

FEATURES_TAB = "tab-features"
EDIT_WORDS = {"clamp": ("value", "the activation the feature is set to"),
              "steer": ("coeff", "added to the feature's activation (coeff x its decoder direction)")}


class FeaturesPart:
    """Owns `FeatureActivationsRequest` and `FeatureCardRequest`: asks for the folder, submits when the
    tab is open or the selection moves, repaints; feature edits go to the intervention list."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen
        self.pending_card: FeatureCardRequest | None = None  # the card being read (not asked for twice)

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"sae_folder": self.ask_folder, "feature_move": self.move_feature, "feature_token": self.move_token,
                "feature_edit": self.edit, "feature_label": self.ask_label}

    @property
    def view(self) -> FeaturesView:
        return self.screen.part(FeaturesView, FeaturesView)

    def ask_folder(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        screen = self.screen
        current = screen.bench.features.folder or screen.bench.features.offered or ""

        def check(text: str) -> str | None:
            return None if text.strip() else "give the folder of an SAE"

        def done(text: str | None) -> None:
            if text is None:
                return
            request = screen.bench.features.use_folder(text)
            screen.show_tab(FEATURES_TAB)
            self.view.show_message(f"reading the SAE in {text.strip()}…")
            screen.submit(request)

        screen.app.push_screen(AskValueScreen(
            "SAE folder", "a folder on the engine's machine: SAELens (cfg.json + sae_weights.safetensors), "
            "sparsify (cfg.json + sae.safetensors) or Gemma Scope (params.npz)", current, check), done)

    def refresh(self) -> None:
        """The tab is open or the prompt changed: read the features of the current prompt if needed."""
        features = self.screen.bench.features
        if features.folder is None and features.offered is not None:
            features.use_offered()
            self.view.show_message(f"reading the SAE trained here on this model: {features.folder}… "
                                   f"(the palette's '{palette_title('sae_folder')}' picks another)")
        if features.folder is None:
            self.view.show_message(self.view.empty_text())
            return
        request = features.request()
        if request is not None:
            self.screen.submit(request)
        else:
            self.show()

    def finished(self, outcome: Outcome) -> None:
        if self.screen.tabs.active == FEATURES_TAB or not outcome.ok:
            self.show()
        features = self.screen.bench.features
        if features.error:
            self.screen.show_error(features.error)

    def card_finished(self, outcome: Outcome) -> None:
        if outcome.request == self.pending_card:
            self.pending_card = None
        if outcome.request == self.screen.bench.features.card_wanted():
            self.show_card()

    def show(self) -> None:
        features = self.screen.bench.features
        result = features.result
        if result is None:
            if features.error:
                self.view.show_message(features.error)
            return
        self.view.show(features)
        self.screen.feature_attribution.show()  # its table marks the selected (token, feature)
        self.read_card()

    def read_card(self) -> None:
        """Show the selected feature's card, reading it in a worker when it is not in hand."""
        request = self.screen.bench.features.card_request()
        self.show_card()
        if request is not None and request != self.pending_card:
            self.pending_card = request
            self.screen.submit(request)

    def show_card(self) -> None:
        self.view.show_card(self.screen.bench.features)

    # ---------------------------------------------------------------- the selection

    def ready(self) -> bool:
        """Features are read (else the status says how to read them and the tab opens)."""
        if self.screen.bench.features.result is not None:
            return True
        self.screen.show_tab(FEATURES_TAB)
        self.screen.show_error(f"no features read: choose an SAE with the palette's '{palette_title('sae_folder')}'")
        return False

    def move_feature(self, step: int) -> None:
        if self.ready():
            self.screen.bench.features.move_feature(step)
            self.selection_moved()

    def move_token(self, step: int) -> None:
        if self.ready():
            self.screen.bench.features.move_token(step)
            self.selection_moved()

    def selection_moved(self) -> None:
        if self.screen.tabs.active != FEATURES_TAB:
            self.screen.show_tab(FEATURES_TAB)  # opening the tab shows the selection
        else:
            self.show()

    # ---------------------------------------------------------------- names and edits

    def ask_label(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        screen = self.screen
        features = screen.bench.features
        feature = features.selected()
        if not self.ready() or feature is None or features.folder is None:
            return

        def done(text: str | None) -> None:
            if text is None:
                return
            problem = features.set_label(text)
            if problem:
                screen.show_error(problem)
                return
            label = features.label(feature)
            screen.say(f"feature {feature} named {label!r}" if label else f"feature {feature}: name taken away")
            self.show()

        screen.app.push_screen(AskValueScreen(
            f"name feature {feature} of {sae_label(features.folder)}",
            "a short name (e.g. 'L15 res: Mary/John names'); empty takes the name away; recorded in the session",
            features.label(feature), label_problem), done)

    def edit(self, kind: str) -> None:
        screen = self.screen
        if not self.ready() or not screen.loaded():
            return
        if kind == "ablate":
            screen.apply(screen.bench.edits.toggle_feature_ablation())
            return
        self.ask_amount(kind)

    def ask_amount(self, kind: str) -> None:
        """The clamp value or steering coefficient, checked by the engine's dry run before it is added."""
        from mechscope.screens.ask_value import AskValueScreen, error_of

        screen = self.screen
        features = screen.bench.features
        field, meaning = EDIT_WORDS[kind]
        made = features.edit(kind)
        if made is None:
            screen.show_error("no feature selected")
            return
        activation = features.activation() or 0.0
        initial = f"{activation:.4g}" if kind == "clamp" else "1"

        async def check(text: str) -> str | None:
            problem = error_of(parse_number, field, text)
            if problem is not None:
                return problem
            edit = features.edit(kind, float(text))
            return None if edit is None else await screen.dialogs.dry_run_problem(edit)

        def done(text: str | None) -> None:
            if text is None:
                return
            edit = features.edit(kind, float(text))
            if edit is not None:
                screen.apply(screen.bench.edits.set_feature_edit(edit))

        pos, feature = features.token(), features.selected()
        screen.app.push_screen(AskValueScreen(
            f"{kind} feature {feature} of {sae_label(features.folder or '')} at token {pos}",
            f"{field}: {meaning}; its activation at token {pos} is now {activation:.4g} "
            "(the SAE's error term is kept)", initial, check), done)
