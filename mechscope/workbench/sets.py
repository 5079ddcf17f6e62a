"""The workbench's prompt set: its rows and selected row, set runs, set sweeps, estimates, head
detectors and massive activations, as plain state the TUI renders (held by `Workbench.sets`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np

from mechscope.engine.metric import METRIC_TITLES, SET_METRIC_KINDS
from mechscope.engine.prompt_sets import (
    DEFAULT_SHOTS,
    TEMPLATES,
    PromptSet,
    PromptSetError,
)
from mechscope.engine.results import ESTIMATE_METHODS, Direction, EstimateMethod, SetSweepResult
from mechscope.requests.kinds import (
    AUTO_VERIFY,
    DetectHeadsRequest,
    EstimateRequest,
    MassiveRequest,
    Outcome,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    RunSetRequest,
    SweepSetRequest,
    TemplateSetRequest,
)
from mechscope.workbench.set_circuits import SetCircuits
from mechscope.workbench.set_rows import (
    RowProblem,
    Tokenize,
    check_rows,
    row_numbers,
    with_spacing_fixed,
    without_rows,
)
from mechscope.workbench.set_texts import (
    MAX_VERIFY,
    TemplateText,
    parse_estimate_text,
    read_set_file,
    row_count_problem,
)
from mechscope.workbench.state import Inputs
from mechscope.workbench.typed_values import MAX_REFERENCE_PROMPTS

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench

SET_SWEEP_GRID = "set patching"
ESTIMATE_GRID = "estimate"
EXACT_MARK = "="  # a verified head: the estimate's value there is the exact patching effect

_R = TypeVar("_R", bound=Request)


def mean_std(values: Any) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():+.3f} ± {v.std():.3f}"


class PromptSets:
    """UI-free state of the current prompt set. Commands return the request to run next (or None);
    `accept` stores an outcome when it is the latest of its kind and records set runs and sweeps."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.pset: PromptSet | None = None
        self.row = 0
        self.run: Outcome | None = None  # the latest RunSetRequest outcome
        self.sweep: Outcome | None = None  # the latest SweepSetRequest outcome (or its partial result)
        self.sweep_partial: Any = None
        self.estimate: Outcome | None = None
        self.detectors: Any = None  # HeadScores: one [layer, head] grid per detector
        self.massive: Outcome | None = None
        self.error: str | None = None
        self.tokenize: Tokenize | None = None  # the engine's, once loaded: rows are checked with it
        self.problems: list[RowProblem] = []  # the current set's rows that fail the checks
        self.changes = ""  # what the last fix or drop did to the rows, for the set tab
        self._issued: dict[str, Request] = {}  # request kind -> the latest issued
        self.circuits = SetCircuits(self)  # function vectors, role attention, role detectors

    # -- derived state --------------------------------------------------------------------------

    def metric_kind(self) -> str:
        kind = self.bench.inputs.metric_kind
        return kind if kind in SET_METRIC_KINDS else "logit_diff"

    def describe(self) -> str:
        """One line: the set, the selected row and the set-level metric with and without interventions."""
        if self.pset is None:
            return "no prompt set"
        text = f"set {self.pset.name} · row {self.row + 1}/{len(self.pset)}"
        run = self.run
        if run is None or not run.ok:
            return text + " · set numbers not computed"
        request, result = cast(RunSetRequest, run.request), run.result
        text += f" · {METRIC_TITLES[request.metric_kind]} baseline {mean_std(result.baseline)}"
        if request.interventions:
            effect = np.asarray(result.values) - np.asarray(result.baseline)
            text += (f" → with {len(request.interventions)} intervention(s) {mean_std(result.values)}"
                     f" (Δ {mean_std(effect)})")
            if any(getattr(iv, "mode", None) == "mean" for iv in request.interventions):
                text += (" · means over the set's corrupted prompts (ABC)" if request.means == "corrupted"
                         else " · means over the set's clean prompts")
        if self.run_is_stale():
            text += " · stale: interventions or metric changed"
        return text

    def run_is_stale(self) -> bool:
        if self.run is None:
            return False
        request = cast(RunSetRequest, self.run.request)
        return (request.pset != self.pset or request.interventions != self.bench.interventions()
                or request.metric_kind != self.metric_kind() or request.means != self.mean_rows())

    def grid_names(self) -> list[str]:
        """The set-level grid metrics that have values now (detectors once computed)."""
        names = []
        if self.sweep_values() is not None:
            names.append(SET_SWEEP_GRID)
        if self.estimate is not None and self.estimate.ok:
            names.append(ESTIMATE_GRID)
        if self.detectors is not None:
            names.extend(self.detectors.scores)
        return names + self.circuits.grid_names()

    def sweep_result(self) -> SetSweepResult | None:
        """The latest set sweep's `SetSweepResult`: the finished one, else what the running one has
        streamed so far (None before any)."""
        return self.sweep.result if self.sweep is not None and self.sweep.ok else self.sweep_partial

    def sweep_values(self) -> np.ndarray | None:
        result = self.sweep_result()
        return None if result is None else self.bench.sweeps.effect_values(result)

    def grid_values(self, name: str) -> np.ndarray | None:
        if name == SET_SWEEP_GRID:
            return self.sweep_values()
        if name == ESTIMATE_GRID:
            return None if self.estimate is None or not self.estimate.ok else self.estimate.result.values
        if self.detectors is not None and name in self.detectors.scores:
            return np.asarray(self.detectors.scores[name], dtype=np.float64)
        return self.circuits.grid_values(name)

    def exact_marks(self) -> dict[tuple[int, int], str]:
        """The estimate's verified heads (their cells hold exact patching values)."""
        if self.estimate is None or not self.estimate.ok:
            return {}
        return dict.fromkeys(self.estimate.result.exact, EXACT_MARK)

    # -- commands -------------------------------------------------------------------------------

    def load(self, path: str) -> RunRequest | None:
        """Read a JSONL or CSV set; its first row becomes the inputs. None (and `error`) on a bad file."""
        try:
            pset = read_set_file(Path(path).expanduser())
        except ValueError as exc:
            self.error = str(exc)
            return None
        return self.use(pset)

    def open(self, chosen: TemplateText | PromptSet) -> Request | None:
        """What the prompt-set dialog chose (`set_texts.load_set_text`): a template to build ("ioi 20",
        a row count, then optionally a seed and, for an in-context task, the shots per prompt:
        "antonyms 20 0 10"), or a set the dialog already read from its file to check it."""
        if isinstance(chosen, PromptSet):
            return self.use(chosen)
        return self.template(chosen.template, *chosen.numbers)

    def estimate_text(self, text: str) -> EstimateRequest | None:
        """What the estimate dialog typed (`set_texts.parse_estimate_text`): a method, then optional
        "steps N" and "verify K"."""
        try:
            parsed = parse_estimate_text(text)
        except ValueError as exc:
            self.error = str(exc)
            return None
        return self.estimate_request(parsed.method, parsed.steps, parsed.verify_top_k)

    def template(self, template: str, count: int, seed: int = 0,
                 shots: int = DEFAULT_SHOTS) -> TemplateSetRequest | None:
        if template not in TEMPLATES:
            self.error = f"unknown template {template!r} (known: {', '.join(TEMPLATES)})"
            return None
        if problem := row_count_problem(count):
            self.error = problem
            return None
        return self._issue(TemplateSetRequest(template, count, seed, shots))

    def use(self, pset: PromptSet, changes: str = "") -> RunRequest | None:
        """Make `pset` current (results of another set are dropped), check its rows and select its
        first row; `changes` says how it was made from the previous set (rows fixed or dropped)."""
        if pset != self.pset:
            self.run = self.sweep = self.estimate = self.massive = None
            self.sweep_partial = None
            self.circuits.reset()
        self.pset = pset
        self.error = None
        self.changes = changes
        self.check()
        self.bench.recorder.prompt_set(pset)
        return self.select_row(0)

    def check(self, tokenize: Tokenize | None = None) -> None:
        """Check the current set's rows (with `tokenize` from now on when given: the engine arrived)."""
        if tokenize is not None:
            self.tokenize = tokenize
        ok = self.pset is None or self.tokenize is None
        self.problems = [] if ok else check_rows(self.pset, self.tokenize)  # type: ignore[arg-type]

    def spaceable(self) -> list[RowProblem]:
        """The failing rows whose target / foil would change by spacing them."""
        rows = self.pset.rows if self.pset is not None else ()
        return [p for p in self.problems if p.spaced != rows[p.row]]

    def fix_spacing(self) -> RunRequest | None:
        """A new set whose failing rows have their target / foil spaced as the model predicts."""
        if (pset := self._need_set()) is None:
            return None
        spaced = self.spaceable()
        if not spaced:
            self.error = "no row of the set has a target or foil to space"
            return None
        return self.use(with_spacing_fixed(pset, spaced), f"spacing fixed in rows {row_numbers(spaced)}")

    def drop_failing_rows(self) -> RunRequest | None:
        """A new set without the rows that fail the checks."""
        if (pset := self._need_set()) is None:
            return None
        if not self.problems:
            self.error = "every row of the set passes the checks"
            return None
        if len(self.problems) == len(pset):
            self.error = "every row of the set fails the checks: nothing would be left"
            return None
        dropped = self.problems
        return self.use(without_rows(pset, dropped),
                        f"dropped rows {row_numbers(dropped)} of {len(pset)}: "
                        + " · ".join(p.note for p in dropped))

    def select_row(self, row: int) -> RunRequest | None:
        """The row's clean / corrupted / target / foil become the inputs; returns their run."""
        if self.pset is None:
            self.error = "no prompt set: load or generate one first"
            return None
        self.row = row % len(self.pset)
        item = self.pset.rows[self.row]
        return self.bench.set_inputs(Inputs(item.clean, item.corrupted, item.target, item.foil,
                                            self.bench.inputs.metric_kind))

    def step(self, delta: int) -> RunRequest | None:
        return self.select_row(self.row + delta)

    def _need_set(self) -> PromptSet | None:
        if self.pset is None:
            self.error = "no prompt set: load or generate one first"
        return self.pset

    def _issue(self, request: _R) -> _R:
        self._issued[request.kind] = request
        self.error = None
        return request

    def run_request(self) -> RunSetRequest | None:
        """The metric over every row, with the enabled interventions (set-level numbers)."""
        if (pset := self._need_set()) is None:
            return None
        return self._issue(RunSetRequest(pset, self.metric_kind(), self.bench.interventions(),  # type: ignore[arg-type]
                                         means=self.mean_rows()))

    # -- mean ablation's distribution -------------------------------------------------------------

    def abc_prompts(self) -> tuple[str, ...] | None:
        """The set's corrupted prompts (None without a set or when a row has none)."""
        if self.pset is None or not all(self.pset.column("corrupted")):
            return None
        return tuple(self.pset.column("corrupted"))

    def mean_rows(self) -> Literal["clean", "corrupted"]:
        """What set runs' mean ablation averages over: the set's corrupted prompts once they are the
        reference prompts (`abc_means_request`), its clean prompts otherwise."""
        abc = self.abc_prompts()
        return "corrupted" if abc is not None and self.bench.reference_prompts == abc else "clean"

    def mean_origin(self, short: bool = False) -> str:
        """What mean ablation averages over, as labels say it: `ABC` (the set's corrupted prompts),
        `ref` (reference prompts); in full with `short` False."""
        if self.mean_rows() == "corrupted":
            assert self.pset is not None
            return "ABC" if short else f"ABC: the {len(self.pset)} corrupted prompts of set {self.pset.name!r}"
        refs = self.bench.reference_prompts
        if short:
            return "ref"
        if refs is None:
            return "the default reference prompts" + (" (a set's own rows in set runs)" if self.pset else "")
        return f"{len(refs)} reference prompt(s)" + (f" (set runs: the clean rows of {self.pset.name!r})"
                                                     if self.pset else "")

    def abc_means_request(self) -> ReferencePromptsRequest | None:
        """Mean ablation over the set's corrupted prompts (the IOI paper's ABC distribution): the
        reference prompts of single-prompt runs become them, and set runs average over them too."""
        if (pset := self._need_set()) is None:
            return None
        prompts = self.abc_prompts()
        if prompts is None:
            self.error = f"set {pset.name!r} has rows without a corrupted prompt: no ABC distribution to average over"
            return None
        if len(prompts) > MAX_REFERENCE_PROMPTS:
            self.error = (f"set {pset.name!r} has {len(prompts)} corrupted prompts; mean ablation averages "
                          f"over at most {MAX_REFERENCE_PROMPTS}")
            return None
        self.error = None
        return ReferencePromptsRequest(prompts)

    def sweep_request(self, direction: Direction = "noising", source: str = "prompts") -> SweepSetRequest | None:
        if (pset := self._need_set()) is None:
            return None
        self.sweep_partial = None
        return self._issue(SweepSetRequest(pset, self.metric_kind(), direction, source))  # type: ignore[arg-type]

    def estimate_request(self, method: EstimateMethod = "atp", steps: int = 5,
                         verify_top_k: int = AUTO_VERIFY) -> EstimateRequest | None:
        if (pset := self._need_set()) is None:
            return None
        if method not in ESTIMATE_METHODS:
            self.error = f"unknown estimator {method!r} (known: {', '.join(ESTIMATE_METHODS)})"
            return None
        if not AUTO_VERIFY <= verify_top_k <= MAX_VERIFY:
            self.error = f"verify must be auto or 0 to {MAX_VERIFY}, got {verify_top_k}"
            return None
        return self._issue(EstimateRequest(pset, method, max(1, steps), self.metric_kind(),  # type: ignore[arg-type]
                                           verify_top_k=verify_top_k))

    def detect_request(self) -> DetectHeadsRequest:
        return self._issue(DetectHeadsRequest())

    def massive_request(self, ratio: float = 100.0) -> MassiveRequest | None:
        if (pset := self._need_set()) is None:
            return None
        return self._issue(MassiveRequest(pset, ratio))

    # -- outcomes -------------------------------------------------------------------------------

    def partial(self, request: SweepSetRequest, result: Any) -> bool:
        """A streamed set sweep result; False when that sweep was replaced by a newer one."""
        if self._issued.get(request.kind) is not request:
            return False
        self.sweep_partial = result
        return True

    def request_types(self) -> tuple[type, ...]:
        """The request types whose outcomes `accept` takes."""
        return tuple(self._acceptors())

    def _acceptors(self) -> dict[type, Callable[[Outcome], Request | None]]:
        return {TemplateSetRequest: self._accept_template, RunSetRequest: self._accept_run,
                SweepSetRequest: self._accept_sweep, EstimateRequest: self._accept_estimate,
                DetectHeadsRequest: self._accept_detectors, MassiveRequest: self._accept_massive,
                **self.circuits.acceptors()}

    def accept(self, outcome: Outcome) -> Request | None:
        """Store the latest outcome of its kind and record it (a set sweep once it finished)."""
        request = outcome.request
        if self._issued.get(request.kind) is not request:
            return None  # superseded by a newer request of the same kind
        if not outcome.ok:
            if not outcome.cancelled:
                self.error = f"{request.kind.replace('_', ' ')}: {outcome.error}"
            return None
        self.error = None
        return self._acceptors()[type(request)](outcome)

    def _record(self, outcome: Outcome) -> None:
        self.bench.recorder.work(outcome, outcome.request.kind.replace("_", " "))

    def _accept_template(self, outcome: Outcome) -> Request | None:
        self._record(outcome)
        return self.use(outcome.result)

    def _accept_run(self, outcome: Outcome) -> None:
        self.run = outcome
        self._record(outcome)

    def _accept_sweep(self, outcome: Outcome) -> None:
        self.sweep, self.sweep_partial = outcome, None
        if outcome.result.complete:
            self._record(outcome)

    def _accept_estimate(self, outcome: Outcome) -> None:
        self.estimate = outcome
        self._record(outcome)

    def _accept_detectors(self, outcome: Outcome) -> None:
        self.detectors = outcome.result
        self._record(outcome)

    def _accept_massive(self, outcome: Outcome) -> None:
        self.massive = outcome
        self._record(outcome)

    def restorers(self) -> dict[type, Callable[[Outcome], None]]:
        """How a recorded outcome of each set request type is shown again (`Workbench.restore_outcome`)."""
        return {RunSetRequest: self._restore_on_set("run"), SweepSetRequest: self._restore_on_set("sweep"),
                EstimateRequest: self._restore_on_set("estimate"),
                MassiveRequest: self._restore_on_set("massive"),
                DetectHeadsRequest: self._restore_detectors, **self.circuits.restorers()}

    def _restore_on_set(self, slot: str) -> Callable[[Outcome], None]:
        """An outcome over the current prompt set goes back in `slot`; one over another set is
        dropped, as `use` drops them."""
        def restore(outcome: Outcome) -> None:
            if self.pset is not None and getattr(outcome.request, "pset", None) == self.pset:
                setattr(self, slot, outcome)
        return restore

    def _restore_detectors(self, outcome: Outcome) -> None:
        self.detectors = outcome.result

    def restore(self, recorded: dict[str, Any] | None) -> None:
        """A resumed session's latest prompt set (its `prompt_set` payload); the inputs stay as the
        session left them, the row is the one they match (else the first)."""
        self.reset()
        if recorded is None:
            return
        try:
            self.pset = PromptSet.from_dict(recorded)
        except PromptSetError as exc:
            self.pset, self.error = None, f"the session's prompt set was not restored: {exc}"
            return
        self.bench.recorder.remember_prompt_set(self.pset)
        clean = self.bench.inputs.clean
        self.row = next((i for i, row in enumerate(self.pset.rows) if row.clean == clean), 0)

    def reset(self) -> None:
        """Another session or model: the set stays, its results go."""
        self.run = self.sweep = self.estimate = self.massive = None
        self.sweep_partial = self.detectors = None
        self.circuits.reset()
        self._issued.clear()
