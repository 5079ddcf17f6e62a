"""Helpers for workbench tests: counting engines, app factory, waiting for workers, reading the screen."""

from __future__ import annotations

from textual.app import App, ComposeResult

from mechscope.engine.testing import tiny_engine
from mechscope.tui.app import MechscopeApp
from mechscope.tui.widgets.views import LensView


class CountingEngine:
    """A real tiny engine that counts the calls the UI makes and can be told to fail."""

    def __init__(self, family: str = "llama") -> None:
        self.inner = tiny_engine(family)
        self.calls: list[str] = []
        self.fail_with: Exception | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, *args, **kwargs):
        self.calls.append("run")
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner.run(*args, **kwargs)


def make_app(engine=None, **kwargs) -> MechscopeApp:
    engine = engine if engine is not None else tiny_engine("llama")
    kwargs.setdefault("source", "tiny-llama")
    return MechscopeApp(lambda progress: engine, **kwargs)


async def settle(pilot) -> None:
    """Let queued messages, running workers and the messages they post all finish."""
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def screen_text(app) -> str:
    """Every visible Static/label text on the current screen, for assertions on what the user reads."""
    from textual.widgets import Static

    parts = []
    for widget in app.screen.query(Static):
        rendered = widget.render()
        parts.append(getattr(rendered, "plain", str(rendered)))
    return "\n".join(parts)


def drawn_lines(app) -> list[str]:
    """Each row of text the screen would send to the terminal (Textual 8's full-screen update)."""
    update = app.screen._compositor.render_full_update()
    return ["".join(segment.text for segment in line) for line in update.strips]


class LensHost(App[None]):
    """The logit-lens view alone."""

    def compose(self) -> ComposeResult:
        yield LensView()
