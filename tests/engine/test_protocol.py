"""The in-process engine provides the interface every engine implements, with matching signatures."""

from __future__ import annotations

import inspect

from mechscope.engine import Engine
from mechscope.engine.protocol import EngineProtocol
from mechscope.engine.testing import tiny_engine


def test_engine_satisfies_the_protocol():
    engine = tiny_engine("gpt2")
    assert isinstance(engine, EngineProtocol)


def test_engine_methods_take_the_protocols_parameters():
    for name, member in vars(EngineProtocol).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        wanted = list(inspect.signature(member).parameters.values())
        got = inspect.signature(getattr(Engine, name)).parameters
        for param in wanted:
            assert param.name in got, f"Engine.{name} lacks parameter {param.name}"
            assert got[param.name].default == param.default, f"Engine.{name}({param.name}) default differs"
        assert list(got)[: len(wanted)] == [p.name for p in wanted], f"Engine.{name} parameter order"


def test_the_in_process_engine_offers_everything_but_forwarding():
    from mechscope.engine.capabilities import ALL_CAPABILITIES, DESCRIPTIONS

    assert set(DESCRIPTIONS) == ALL_CAPABILITIES
    assert Engine.capabilities == ALL_CAPABILITIES - {"forward"}
    for method in ("run_set", "sweep_set", "estimate", "detect_heads", "massive_activations"):
        assert callable(getattr(Engine, method))
