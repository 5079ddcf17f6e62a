"""The prompt-set dialog (`L`): a JSONL / CSV file to load, or a built-in template and a row count."""

from __future__ import annotations

import asyncio

from mechscope.screens.ask_value import AskValueScreen
from mechscope.workbench.set_texts import set_text_problem

PROMPT_SET_HELP = ("a .jsonl / .csv file (clean, corrupted, target, foil), or a template and a count: "
                   "ioi 20 · capitals 10 · induction 10 (a third number is the seed); in-context tasks "
                   "antonyms 20 · country-capital 20 · uppercase 20 (a fourth number: shots, default 10)")


async def _problem(text: str) -> str | None:
    return await asyncio.to_thread(set_text_problem, text)  # a file is read to check it: off the UI thread


class PromptSetScreen(AskValueScreen):
    """Returns the typed text (a path, or template and count) once `set_texts` finds it makes a set (a
    wrong count, a missing or malformed file keeps the dialog open); `sets.open_text` reads it."""

    def __init__(self, initial: str = "ioi 20") -> None:
        super().__init__("prompt set", PROMPT_SET_HELP, initial, validate=_problem)
