"""Rows of a prompt set checked with the single prompt's rules (one-token target / foil, the leading
space, equal clean / corrupted lengths), and the set with those rows fixed or dropped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from mechscope.engine.prompt_sets import PromptRow, PromptSet

Tokenize = Callable[[str], "tuple[list[int], list[str]]"]
SHOWN_REASONS = 2  # the status names this many rows' reasons in full; the set tab lists them all


@dataclass(frozen=True)
class RowProblem:
    """Row `row` (0-based) fails `reasons`; `spaced` is the row with its target / foil spaced, which
    passes when `fixable`."""

    row: int
    reasons: tuple[str, ...]
    spaced: PromptRow
    fixable: bool

    @property
    def note(self) -> str:
        return f"row {self.row + 1}: " + "; ".join(self.reasons)


def check_rows(pset: PromptSet, tokenize: Tokenize) -> list[RowProblem]:
    """Every row of `pset` that fails a check, in row order."""
    special = len(tokenize("")[0])  # tokens every text gets (a BOS): not part of the text

    def pieces(text: str) -> list[str]:
        return tokenize(text)[1][special:]

    problems = []
    for index, row in enumerate(pset.rows):
        reasons: list[str] = []
        fixable = True
        spaced = row
        for field in ("target", "foil"):
            typed = getattr(row, field)
            if not typed:
                continue
            typed_pieces = pieces(typed)
            after_word = bool(row.clean) and not row.clean[-1].isspace()
            can_space = not typed[0].isspace() and after_word and len(pieces(" " + typed)) == 1
            if len(typed_pieces) > 1:
                if can_space:
                    reasons.append(f"{field} {typed!r} is {len(typed_pieces)} tokens {typed_pieces}; "
                                   f"{' ' + typed!r} is one")
                else:
                    reasons.append(f"{field} {typed!r} is {len(typed_pieces)} tokens {typed_pieces}; "
                                   f"only {typed_pieces[0]!r} counts")
                    fixable = False
            elif can_space:
                reasons.append(f"{field} {typed!r} has no leading space; after a word the model predicts "
                               f"{' ' + typed!r}")
            if can_space:
                spaced = dataclasses.replace(spaced, **{field: " " + typed})
        if row.corrupted:
            n_clean, n_corrupted = len(pieces(row.clean)), len(pieces(row.corrupted))
            if n_clean != n_corrupted:
                reasons.append(f"clean is {n_clean} tokens, corrupted {n_corrupted} "
                               "(a sweep patches position by position)")
                fixable = False
        if reasons:
            problems.append(RowProblem(index, tuple(reasons), spaced, fixable))
    return problems


def row_numbers(problems: list[RowProblem]) -> str:
    return ", ".join(str(problem.row + 1) for problem in problems)


def problems_note(name: str, problems: list[RowProblem], fix_key: str, drop_command: str) -> str:
    """One status line: which rows fail, the first reasons, and the two ways out."""
    fixable = [p for p in problems if p.fixable]
    text = (f"set {name}: {len(problems)} row(s) fail the checks (rows {row_numbers(problems)}): "
            + " · ".join(p.note for p in problems[:SHOWN_REASONS])
            + (" · …" if len(problems) > SHOWN_REASONS else ""))
    if fixable:
        text += f" — {fix_key} fixes spacing in rows {row_numbers(fixable)}"
    return text + f"; {drop_command} drops them all"


def with_spacing_fixed(pset: PromptSet, problems: list[RowProblem]) -> PromptSet:
    """`pset` with every problem row's target / foil spaced (rows that stay bad are kept as they are now)."""
    rows = list(pset.rows)
    for problem in problems:
        rows[problem.row] = problem.spaced
    return PromptSet(pset.name, tuple(rows), pset.source)


def without_rows(pset: PromptSet, problems: list[RowProblem]) -> PromptSet:
    """`pset` without the problem rows (PromptSetError when none would be left)."""
    bad = {problem.row for problem in problems}
    return PromptSet(pset.name, tuple(row for i, row in enumerate(pset.rows) if i not in bad), pset.source)
