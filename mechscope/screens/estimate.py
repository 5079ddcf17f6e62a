"""The attribution-estimate dialog (`Z`): the estimator, its steps and how many top heads to verify."""

from __future__ import annotations

from mechscope.engine.results import ESTIMATE_METHODS
from mechscope.screens.ask_value import AskValueScreen, error_of
from mechscope.workbench.set_texts import parse_estimate_text

ESTIMATE_HELP = (f"method ({', '.join(ESTIMATE_METHODS)}), then optional steps N (eap-ig) and verify K or "
                 "auto: exact patching of the estimate's top K heads (auto: the heads its uncertainty "
                 "leaves in reach of the top 10) replaces their values (marked = on the grid)")


class EstimateScreen(AskValueScreen):
    """Returns the typed text, e.g. "eap-ig steps 5 verify 10", once `set_texts` reads it as an
    estimate (the dialog stays open on a wrong one); `sets.estimate_text` reads it."""

    def __init__(self, initial: str = "atp verify auto") -> None:
        super().__init__("attribution estimate over the set", ESTIMATE_HELP, initial,
                         validate=lambda text: error_of(parse_estimate_text, text))
