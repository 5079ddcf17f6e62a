"""The prompt-set dialog (`L`): a JSONL / CSV file to load, or a built-in template and a row count."""

from __future__ import annotations

import asyncio

from mechscope.engine.prompt_sets import PromptSet
from mechscope.screens.ask_value import AskValueScreen
from mechscope.workbench.set_texts import TemplateText, load_set_text

PROMPT_SET_HELP = ("a .jsonl / .csv file (clean, corrupted, target, foil), or a template and a count: "
                   "ioi 20 · capitals 10 · induction 10 (a third number is the seed); in-context tasks "
                   "antonyms 20 · country-capital 20 · uppercase 20 (a fourth number: shots, default 10)")


class PromptSetScreen(AskValueScreen):
    """Returns the typed text (a path, or template and count) once `set_texts` finds it makes a set (a
    wrong count, a missing or malformed file keeps the dialog open); `chosen` is what it makes, the
    template or the set read from the file, for `sets.open`."""

    def __init__(self, initial: str = "ioi 20") -> None:
        super().__init__("prompt set", PROMPT_SET_HELP, initial, validate=self.check)
        self.chosen: TemplateText | PromptSet | None = None

    async def check(self, text: str) -> str | None:
        try:  # a file is read to check it: off the UI thread, and once
            self.chosen = await asyncio.to_thread(load_set_text, text)
        except ValueError as exc:
            return str(exc)
        return None
