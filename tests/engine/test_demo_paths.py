"""Path patching on the demo model (SmolLM2-135M-Instruct): senders into the name-mover candidate L23.H3's query."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.engine import Metric

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
IOI = Metric("logit_diff", target=" Mary", foil=" John")

pytestmark = pytest.mark.demo


def test_senders_into_the_name_movers_query_lower_the_logit_difference(demo_engine):
    """Wang et al. (2022): patching S-inhibition heads' outputs from the corrupted run into the name
    movers' queries lowers the logit difference. Measured here (noising, base +6.120, source -5.485):
    the senders' path effects into L23.H3.q sum to about -0.17; the strongest is L22.H4, about -0.06."""
    swept = demo_engine.path_sweep("L23.H3.q", CLEAN, CORRUPT, IOI)
    values = np.nan_to_num(swept.values[:23])  # [layer, head]: every earlier head
    order = np.argsort(values.ravel())
    top = [(f"L{i // 9}.H{i % 9}", round(float(values.ravel()[i]), 4)) for i in order[:5]]
    strongest = int(np.argmax(np.abs(values).ravel()))
    print(f"\nbase {swept.base_metric:+.3f}, source {swept.source_metric:+.3f}; sum of sender effects "
          f"{values.sum():+.4f}; most negative {top}; largest positive {values.max():+.4f}")
    assert np.isnan(swept.values[23:]).all()
    assert values.sum() < 0
    assert values.ravel()[strongest] < 0
    layer, head = divmod(strongest, 9)
    single = demo_engine.path_patch(f"L{layer}.H{head}", ("L23.H3.q",), CLEAN, CORRUPT, IOI)
    assert single.effect == pytest.approx(float(values[layer, head]), abs=1e-3)
