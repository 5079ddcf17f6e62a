"""The request kinds, under the name other packages import them by until they import `mechscope.requests`."""

from __future__ import annotations

from mechscope.requests.kinds import (
    REQUEST_TYPES,
    SET_REQUESTS,
    AddVectorRequest,
    BuildVectorRequest,
    DetectHeadsRequest,
    Direction,
    EstimateMethod,
    EstimateRequest,
    GenerateRequest,
    MassiveRequest,
    Outcome,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    RunSetRequest,
    SetMetricKind,
    SweepKind,
    SweepRequest,
    SweepSetRequest,
    TemplateSetRequest,
    ValidateRequest,
    request_from_dict,
    request_to_dict,
)

__all__ = [
    "REQUEST_TYPES", "SET_REQUESTS", "AddVectorRequest", "BuildVectorRequest", "DetectHeadsRequest",
    "Direction", "EstimateMethod", "EstimateRequest", "GenerateRequest", "MassiveRequest", "Outcome",
    "ReferencePromptsRequest", "Request", "RunRequest", "RunSetRequest", "SetMetricKind", "SweepKind",
    "SweepRequest", "SweepSetRequest", "TemplateSetRequest", "ValidateRequest", "request_from_dict",
    "request_to_dict",
]
