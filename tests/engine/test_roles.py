"""Role positions, a head's role x role attention over a set (against the single-prompt attention view,
averaged by hand) and the name-mover / S-inhibition grids, on the tiny models; the demo's IOI set."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.engine import Views
from mechscope.engine.prompt_sets import PromptRow, PromptSet, ioi_set
from mechscope.engine.roles import (
    IOI_ROLES,
    RoleError,
    role_head_scores,
    role_positions,
    set_attention,
)
from mechscope.engine.testing import FAMILIES, tiny_engine

ROWS = PromptSet("two", (
    PromptRow("When Mary and John went to the store, John gave a drink to", "", " Mary", " John"),
    PromptRow("Alice and Bob walked to the park, and Bob handed a book to", "", " Alice", " Bob"),
))


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    return tiny_engine(request.param)


def _by_hand(engine, text: str, io: str, s: str) -> dict[str, int]:
    """Where each name starts: the first of the pieces that spell it (a name may be split in two)."""
    pieces = engine.tokenize(text)[1]

    def starts(name: str) -> list[int]:
        return [i for i in range(len(pieces)) for k in (1, 2, 3) if "".join(pieces[i:i + k]).strip() == name
                and pieces[i].strip()]

    subject = starts(s)
    return {"IO": starts(io)[0], "S1": subject[0], "S2": subject[1], "END": len(pieces) - 1}


def test_ioi_roles_are_the_name_tokens(engine):
    names, rows = role_positions(engine, ROWS)
    assert names == IOI_ROLES
    assert rows == [_by_hand(engine, ROWS.rows[0].clean, "Mary", "John"),
                    _by_hand(engine, ROWS.rows[1].clean, "Alice", "Bob")]


@pytest.mark.parametrize("layer,head", [(0, 1), (2, 3)])
def test_role_table_is_the_hand_averaged_attention(engine, layer, head):
    result = set_attention(engine, ROWS, layer, head)
    _, rows = role_positions(engine, ROWS)
    tables = []
    for row, roles in zip(ROWS.rows, rows):
        pattern = engine.run(row.clean, views=Views(attention=(f"L{layer}.H{head}",))).attention[f"L{layer}.H{head}"]
        tables.append([[pattern[roles[q], roles[k]] for k in IOI_ROLES] for q in IOI_ROLES])
    np.testing.assert_allclose(result.mean, np.mean(tables, axis=0), atol=1e-5)
    np.testing.assert_allclose(result.std, np.std(tables, axis=0), atol=1e-5)
    assert result.roles == IOI_ROLES and result.rows == 2


def test_role_detectors_are_the_role_tables_end_row(engine):
    scores = role_head_scores(engine, ROWS).scores
    for layer, head in [(0, 0), (1, 3)]:
        table = set_attention(engine, ROWS, layer, head).mean
        end = IOI_ROLES.index("END")
        assert scores["name_mover"][layer, head] == pytest.approx(table[end, IOI_ROLES.index("IO")], abs=1e-5)
        assert scores["s_inhibition"][layer, head] == pytest.approx(table[end, IOI_ROLES.index("S2")], abs=1e-5)
    assert scores["name_mover_logit"].shape == (engine.adapter.n_layers, engine.adapter.n_heads)


def test_a_set_without_ioi_roles_is_refused_in_one_line():
    engine = tiny_engine("llama")
    plain = PromptSet("plain", (PromptRow("The cat sat on the mat", "", " the"),))
    assert role_positions(engine, plain)[0] == ("START", "END")
    with pytest.raises(RoleError, match="need an IOI set"):
        role_head_scores(engine, plain)


@pytest.mark.demo
def test_demo_ioi_role_tables_and_role_detectors(demo_engine):
    """On ioi-20, L23.H3 (the head with the largest direct effect on logit(IO) - logit(S)) attends
    from END to S2, not to IO: it raises IO by pushing the subject down. The heads that attend
    END->IO most (L24.H4, L23.H0, L23.H1) are the attention name movers; L23.H0 and L23.H1 also
    raise logit(IO) - logit(S) directly."""
    pset = ioi_set(demo_engine.tokenizer, 20)
    end, io, s2 = (IOI_ROLES.index(r) for r in ("END", "IO", "S2"))
    table = set_attention(demo_engine, pset, 23, 3)
    print(f"\nL23.H3 over ioi-20: END->IO {table.mean[end, io]:.3f} ± {table.std[end, io]:.3f}, "
          f"END->S2 {table.mean[end, s2]:.3f} ± {table.std[end, s2]:.3f}")
    scores = role_head_scores(demo_engine, pset)
    for name in scores.scores:
        print(name, [(f"L{layer}.H{head}", round(value, 3)) for layer, head, value in scores.top(name, 5)])
    assert table.mean[end, s2] > 0.3 > table.mean[end, io]
    assert scores.top("name_mover_logit", 1)[0][:2] == (23, 3)
    for layer, head in [(23, 0), (23, 1)]:
        mover = set_attention(demo_engine, pset, layer, head)
        print(f"L{layer}.H{head}: END->IO {mover.mean[end, io]:.3f}, END->S2 {mover.mean[end, s2]:.3f}")
        assert mover.mean[end, io] > mover.mean[end, s2]
        assert scores.scores["name_mover_logit"][layer, head] > 0
