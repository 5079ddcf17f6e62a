"""The model side: load a causal LM, run it with interventions, return plain data. No UI imports."""

from __future__ import annotations

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
    Metric,
    NeuronClamp,
    SteeringVector,
)
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

__all__ = [
    "INTERVENTION_TYPES", "ActivationPatch", "ActivationStats", "Address", "AttentionKnockout",
    "Attribution", "Cancelled", "ComponentAblation", "ComputeInfo", "Engine", "GeneratedToken",
    "HeadAblation", "HeadScale", "Intervention", "InterventionError", "LoadError", "LogitLens",
    "MechscopeError", "Metric", "OutOfMemory", "MetricInfo", "ModelInfo", "NeuronClamp", "Prediction",
    "PromptError", "RunResult", "SteeringVector", "SweepResult", "TokenProb",
    "UnsupportedArchitecture", "Views", "parse_address",
]
