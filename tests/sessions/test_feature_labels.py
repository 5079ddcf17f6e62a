"""feature_label events: validated, folded per SAE folder ("" takes a name away), exported as a comment."""

from __future__ import annotations

import pytest

from mechscope.sessions import Session
from mechscope.sessions.events import validate_payload
from mechscope.sessions.export import export_script


def test_feature_names_fold_per_folder_and_export_as_comments(tmp_path):
    session = Session.create(name="labels", root=tmp_path)
    session.record_feature_label("/saes/res15", 7, "L15 res: Mary/John names")
    session.record_feature_label("/saes/res15", 9, "commas")
    session.record_feature_label("/saes/mlp3", 7, "numbers")
    session.record_feature_label("/saes/res15", 9, "")
    session.record_feature_label("/saes/res15", 7, "names")
    assert session.state().feature_labels == {"/saes/res15": {7: "names"}, "/saes/mlp3": {7: "numbers"}}
    session.close()
    reopened = Session.open("labels", root=tmp_path)
    assert reopened.state().feature_labels == {"/saes/res15": {7: "names"}, "/saes/mlp3": {7: "numbers"}}
    script = export_script(reopened)
    assert "feature 7 of /saes/res15 is named 'names'" in script


@pytest.mark.parametrize(("payload", "message"), [
    ({"sae_folder": "/s", "feature": -1, "label": "x"}, "feature must not be negative"),
    ({"sae_folder": "/s", "feature": 1, "label": 3}, "label must be a string"),
    ({"feature": 1, "label": "x"}, "missing field 'sae_folder'"),
])
def test_bad_feature_names_are_refused(payload, message):
    with pytest.raises(ValueError, match=message):
        validate_payload("feature_label", payload)
