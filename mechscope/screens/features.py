"""The features tab's job: choose the SAE folder, read the clean prompt's features, show them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mechscope.requests.kinds import Outcome
from mechscope.tui.widgets.features_view import FeaturesView

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

FEATURES_TAB = "tab-features"


class FeaturesPart:
    """Owns `FeatureActivationsRequest`: asks for the folder, submits when the tab is open, repaints."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"sae_folder": self.ask_folder}

    @property
    def view(self) -> FeaturesView:
        return self.screen.part(FeaturesView, FeaturesView)

    def ask_folder(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        screen = self.screen
        current = screen.bench.features.folder or ""

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

    def show(self) -> None:
        features = self.screen.bench.features
        result = features.result
        if result is None:
            if features.error:
                self.view.show_message(features.error)
            return
        self.view.show(result, features.folder or "", features.strip())
