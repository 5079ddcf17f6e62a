"""The model side: load a causal LM, run it with interventions, return plain data. No UI imports.

Names are imported on first use, so `mechscope.engine.interventions` (plain dataclasses) can be read
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Address": "addresses",
    "parse_address": "addresses",
    "Engine": "core",
    "Cancelled": "errors",
    "InterventionError": "errors",
    "LoadError": "errors",
    "MechscopeError": "errors",
    "OutOfMemory": "errors",
    "PromptError": "errors",
    "UnsupportedArchitecture": "errors",
    "INTERVENTION_TYPES": "interventions",
    "ActivationPatch": "interventions",
    "AttentionKnockout": "interventions",
    "ComponentAblation": "interventions",
    "HeadAblation": "interventions",
    "HeadScale": "interventions",
    "Intervention": "interventions",
    "Metric": "metric",
    "NeuronClamp": "interventions",
    "SteeringVector": "interventions",
    "ActivationStats": "results",
    "Attribution": "results",
    "ComputeInfo": "results",
    "GeneratedToken": "results",
    "LogitLens": "results",
    "MetricInfo": "results",
    "ModelInfo": "results",
    "Prediction": "results",
    "RunResult": "results",
    "SweepResult": "results",
    "TokenProb": "results",
    "Views": "views",
}

__all__ = [
    "ActivationPatch",
    "ActivationStats",
    "Address",
    "AttentionKnockout",
    "Attribution",
    "Cancelled",
    "ComponentAblation",
    "ComputeInfo",
    "Engine",
    "GeneratedToken",
    "HeadAblation",
    "HeadScale",
    "INTERVENTION_TYPES",
    "Intervention",
    "InterventionError",
    "LoadError",
    "LogitLens",
    "MechscopeError",
    "Metric",
    "MetricInfo",
    "ModelInfo",
    "NeuronClamp",
    "OutOfMemory",
    "Prediction",
    "PromptError",
    "RunResult",
    "SteeringVector",
    "SweepResult",
    "TokenProb",
    "UnsupportedArchitecture",
    "Views",
    "parse_address",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None and name in _intervention_names():
        module = "interventions"  # an intervention type added without touching this table
    if module is None:
        raise AttributeError(f"module 'mechscope.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mechscope.engine.{module}"), name)
    globals()[name] = value
    return value


def _intervention_names() -> set[str]:
    from mechscope.engine.interventions import INTERVENTION_TYPES

    return {cls.__name__ for cls in INTERVENTION_TYPES}


if TYPE_CHECKING:
    from mechscope.engine.addresses import Address, parse_address
    from mechscope.engine.core import Engine
    from mechscope.engine.errors import (
        Cancelled,
        InterventionError,
        LoadError,
        MechscopeError,
        OutOfMemory,
        PromptError,
        UnsupportedArchitecture,
    )
    from mechscope.engine.interventions import (
        INTERVENTION_TYPES,
        ActivationPatch,
        AttentionKnockout,
        ComponentAblation,
        HeadAblation,
        HeadScale,
        Intervention,
        NeuronClamp,
        SteeringVector,
    )
    from mechscope.engine.metric import Metric
    from mechscope.engine.results import (
        ActivationStats,
        Attribution,
        ComputeInfo,
        GeneratedToken,
        LogitLens,
        MetricInfo,
        ModelInfo,
        Prediction,
        RunResult,
        SweepResult,
        TokenProb,
    )
    from mechscope.engine.views import Views
