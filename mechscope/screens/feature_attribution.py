"""The features tab's attribution job: which SAE features move the metric, run on a key, shown as a ranked table."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from mechscope.requests.kinds import FeatureAttributionRequest, Outcome
from mechscope.screens.features import FEATURES_TAB
from mechscope.tui.commands import key_of, palette_title
from mechscope.tui.widgets.feature_attribution_view import FeatureAttributionView

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen


class FeatureAttributionPart:
    """Owns `FeatureAttributionRequest`: submits it on its key, repaints the table when it lands."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"feature_attribution": self.start, "feature_pick": self.ask_row}

    @property
    def view(self) -> FeatureAttributionView:
        return self.screen.part(FeatureAttributionView, FeatureAttributionView)

    def start(self) -> None:
        screen = self.screen
        state = screen.bench.feature_attribution
        request = state.request()
        if request is None:
            hint = (f" (palette: '{palette_title('sae_folder')}')" if screen.bench.features.folder is None else "")
            screen.show_error(f"{state.error}{hint}")
            return
        screen.show_tab(FEATURES_TAB)
        self.view.show_message(f"attributing the metric to the features of {request.sae_folder}: AtP over every "
                               f"active feature, then {request.verify} exact ablations…")
        screen.submit(request)

    def ask_row(self) -> None:
        """Select a row of the table (its feature at its token) in the features tab, where the card
        shows it and the feature keys edit it."""
        from mechscope.screens.ask_value import AskValueScreen, error_of

        screen = self.screen
        state = screen.bench.feature_attribution
        problem = state.unpickable()
        if problem is not None:
            screen.show_error(f"{problem} ({key_of('feature_attribution')})")
            return
        rows = len(state.result.features) if state.result is not None else 0
        ablate = key_of("feature_edit('ablate')")

        def done(text: str | None) -> None:
            if text is None:
                return
            try:
                picked = state.row(text)
            except ValueError as exc:  # the table changed while the dialog was open
                screen.show_error(str(exc))
                return
            screen.bench.features.pick(picked)
            screen.say(f"feature {picked.feature} at token {picked.position} selected: {ablate} ablates it there")
            screen.features.selection_moved()  # repaints the tab, the table's mark with it

        screen.app.push_screen(AskValueScreen(
            "pick an attribution row", f"the row's # in the feature attribution table, 1..{rows}", "",
            lambda text: error_of(state.row, text)), done)

    def cancel(self) -> bool:
        """Esc: stop a running attribution; True when one was running."""
        return self.screen.jobs.cancel("feature_attribution")

    def finished(self, outcome: Outcome) -> None:
        state = self.screen.bench.feature_attribution
        if outcome.request != state.issued:
            return
        if state.error:
            self.view.show_message(state.error)
            self.screen.show_error(state.error)
        elif outcome.cancelled and state.result is None:
            self.view.show_message("feature attribution stopped")
        elif outcome.cancelled:
            self.show()
            self.screen.say("feature attribution stopped: the table is the earlier one")
        else:
            self.show()

    def show(self) -> None:
        """Paint the attribution shown (restored from a session or just run), saying whether it is stale."""
        state = self.screen.bench.feature_attribution
        result = state.result
        if result is None or state.outcome is None:
            return
        request = cast(FeatureAttributionRequest, state.outcome.request)
        features = self.screen.bench.features
        token, feature = features.token(), features.selected()
        selected = None if token is None or feature is None else (token, feature)
        self.view.show(result, request.metric, state.staleness(), selected)
