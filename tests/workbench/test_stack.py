"""The intervention list model: ids, toggles, undo and the session events each change produces."""

from __future__ import annotations

import pytest

from mechscope.engine.interventions import ActivationPatch, HeadAblation, HeadScale, SteeringVector
from mechscope.screens.edit_intervention import field_text, parse_field, rebuild
from mechscope.workbench.stack import Change, InterventionStack, head_of


def test_toggle_head_adds_removes_and_replaces_mode():
    stack = InterventionStack()
    assert stack.toggle_head(HeadAblation(2, 1)) == [Change("added", 1, HeadAblation(2, 1))]
    changes = stack.toggle_head(HeadAblation(2, 1, mode="mean"))
    assert changes == [Change("changed", 1, HeadAblation(2, 1, mode="mean"))]
    assert stack.toggle_head(HeadAblation(2, 1, mode="mean")) == [Change("removed", 1)]
    assert stack.entries == ()
    assert stack.next_id == 2  # ids are never reused


def test_disabled_twin_is_re_enabled_not_duplicated():
    stack = InterventionStack()
    stack.add(HeadAblation(0, 3))
    assert stack.set_enabled(1, False) == [Change("toggled", 1, enabled=False)]
    assert stack.enabled() == []
    assert stack.toggle_head(HeadAblation(0, 3)) == [Change("toggled", 1, enabled=True)]
    assert stack.enabled() == [HeadAblation(0, 3)]


def test_undo_returns_inverse_changes():
    stack = InterventionStack()
    stack.add(HeadScale(1, 1, factor=2.0))
    stack.replace(1, HeadScale(1, 1, factor=4.0))
    stack.add(HeadAblation(0, 0))
    assert stack.undo() == [Change("removed", 2)]
    assert stack.undo() == [Change("changed", 1, HeadScale(1, 1, factor=2.0))]
    assert stack.undo() == [Change("removed", 1)]
    assert stack.undo() is None


def test_no_op_changes_are_not_history():
    stack = InterventionStack()
    stack.add(HeadAblation(0, 0))
    assert stack.set_enabled(1, True) == []
    assert stack.remove(99) == []
    assert len(stack.history) == 1


def test_head_marks_and_head_of():
    stack = InterventionStack()
    stack.add(HeadAblation(0, 0, mode="resample"))
    stack.add(ActivationPatch("L2.H3", "x"))
    stack.add(ActivationPatch("L2.mlp", "x"))
    stack.add(SteeringVector(1, "v"))
    assert stack.head_marks() == {(0, 0): "r", (2, 3): "p"}
    assert head_of(SteeringVector(1, "v")) is None


def test_edit_fields_round_trip():
    patch = ActivationPatch("L1.H2", "When Mary", positions=(3, 4))
    assert field_text(patch.positions) == "3,4"
    edited = rebuild(patch, {"address": "L2.H0", "source_prompt": "1", "positions": "5, 6"})
    assert edited == ActivationPatch("L2.H0", "1", positions=(5, 6))
    assert rebuild(patch, {"positions": ""}).positions is None
    steer = SteeringVector(3, "happy", coeff=4.0)
    assert rebuild(steer, {"positions": "last", "coeff": "-2"}) == SteeringVector(
        3, "happy", coeff=-2.0, positions="last")
    assert parse_field("7", 3) == 7


def test_edit_rejects_bad_values_with_one_line():
    with pytest.raises(ValueError, match="mode must be zero, mean or resample"):
        rebuild(HeadAblation(0, 0), {"mode": "half"})
    with pytest.raises(ValueError, match="layer must be an integer"):
        rebuild(HeadAblation(0, 0), {"layer": "two"})
