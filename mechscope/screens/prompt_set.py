"""The prompt-set dialog (`L`): a JSONL / CSV file to load, or a built-in template and a row count."""

from __future__ import annotations

from mechscope.screens.ask_value import AskValueScreen

PROMPT_SET_HELP = ("a .jsonl / .csv file (clean, corrupted, target, foil), or a template and a count: "
                   "ioi 20 · capitals 10 · induction 10 (a third number is the seed); in-context tasks "
                   "antonyms 20 · country-capital 20 · uppercase 20 (a fourth number: shots, default 10)")


class PromptSetScreen(AskValueScreen):
    """Returns the typed text (a path, or template and count); the Workbench's `sets.open_text` reads it."""

    def __init__(self, initial: str = "ioi 20") -> None:
        super().__init__("prompt set", PROMPT_SET_HELP, initial,
                         validate=lambda text: None if text.strip() else "type a path or a template")
