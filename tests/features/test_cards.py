"""Feature cards: the top-context index, density and logit lens, against brute force on a tiny model."""

from __future__ import annotations

import pytest
import torch

from mechscope.engine.core import Engine
from mechscope.engine.features.cards import (
    build_index,
    feature_card,
    load_index,
    logit_lens,
    save_index,
)
from mechscope.engine.features.corpus import token_chunks
from mechscope.engine.features.reading import site_values
from mechscope.engine.features.sae import FeatureError
from mechscope.engine.testing import _CORPUS, tiny_model, tiny_tokenizer

from .saes import random_sae


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_model("llama", seed=6), tiny_tokenizer(), source="tiny")


def test_index_holds_each_features_strongest_tokens_and_density(engine, tmp_path):
    sae = engine.attach_sae("cards", random_sae("L1.resid_post", seed=4, activation="topk", k=5))
    chunks = list(token_chunks(tiny_tokenizer(), _CORPUS.split(". ") * 2, 12))[:10]
    index = build_index(engine, sae, iter(chunks), tokens=10_000, top_n=3, before=4, after=2, seqs_per_forward=3)
    with torch.no_grad():
        acts = sae.encode(site_values(engine.passes, torch.tensor(chunks), sae.site)[:, 1:])  # [seqs, 11, d_sae]
    flat = acts.reshape(-1, sae.d_sae)
    assert index.tokens == flat.shape[0]
    torch.testing.assert_close(torch.tensor(index.density, dtype=torch.float64),
                               (flat > 0).double().mean(0), atol=1e-12, rtol=0)
    for feature in range(sae.d_sae):
        expected = flat[:, feature].topk(3).values
        got = [c.activation for c in index.top[feature]]
        assert got == pytest.approx([v for v in expected.tolist() if v > 0], abs=1e-5)
        for context in index.top[feature]:
            row, pos = [(r, p) for r in range(len(chunks)) for p in range(1, 12)
                        if abs(float(acts[r, p - 1, feature]) - context.activation) < 1e-6][0]
            assert context.tokens[context.at] == engine.decode_token(chunks[row][pos])
            assert len(context.tokens) <= 7
    save_index(index, tmp_path)
    assert load_index(tmp_path) == index
    (tmp_path / "index.json").write_text('{"tokens": 1}')
    with pytest.raises(FeatureError, match="malformed feature index"):
        load_index(tmp_path)


def test_logit_lens_is_the_direction_through_the_final_norm_and_unembedding(engine):
    sae = engine.attach_sae("lens", random_sae("L2.mlp_out", seed=5))
    promoted, suppressed = logit_lens(engine, sae, 7, k=5)
    model = engine.model
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(sae.W_dec[7][None]))[0]  # the plain HF modules
    top, bottom = logits.topk(5), (-logits).topk(5)
    assert [t for t, _ in promoted] == [engine.decode_token(int(i)) for i in top.indices]
    assert [v for _, v in promoted] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [t for t, _ in suppressed] == [engine.decode_token(int(i)) for i in bottom.indices]
    card = feature_card(engine, sae, 7, None, k=5)
    assert card.density is None and card.contexts == [] and card.promoted == promoted
    with pytest.raises(FeatureError, match="out of range"):
        logit_lens(engine, sae, 64)


def test_engine_feature_card_reads_the_folder_and_the_index_beside_it(engine, tmp_path):
    from mechscope.engine.features.cards import Context, FeatureIndex
    from mechscope.engine.features.formats import save_saelens

    sae = random_sae("L2.mlp_out", seed=5)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    bare = engine.feature_card(folder, 7, k=5)
    attached = engine.attach_sae("lens-again", sae)
    promoted, suppressed = logit_lens(engine, attached, 7, k=5)
    assert not bare.indexed and bare.density is None and bare.context_tokens == []
    assert bare.promoted == [t for t, _ in promoted] and bare.suppressed == [t for t, _ in suppressed]
    assert bare.promoted_logits.tolist() == pytest.approx([v for _, v in promoted], abs=1e-6)
    assert bare.sae_digest == sae.digest and bare.d_sae == 64
    top = [[Context(2.0 - i, ["a", " b", " c"], i) for i in range(f % 4)] for f in range(64)]
    save_index(FeatureIndex(tokens=500, density=[f / 1000 for f in range(64)], top=top), folder)
    card = engine.feature_card(folder, 7, k=2)
    assert card.indexed and card.index_tokens == 500 and card.density == pytest.approx(0.007)
    assert card.context_values.tolist() == [2.0, 1.0] and card.context_at == [0, 1]
    assert card.context_tokens == [["a", " b", " c"]] * 2 and len(card.promoted) == 2
    with pytest.raises(FeatureError, match="out of range 0..63"):
        engine.feature_card(folder, 64)
    with pytest.raises(FeatureError, match="k must be in 1..100"):
        engine.feature_card(folder, 1, k=0)
