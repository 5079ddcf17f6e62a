"""SAE quality figures against an independent computation on the plain HF model."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.engine.core import Engine
from mechscope.engine.features.corpus import token_chunks
from mechscope.engine.features.quality import evaluate
from mechscope.engine.testing import _CORPUS, tiny_model, tiny_tokenizer

from .saes import random_sae


def _chunks(seq_len: int = 16) -> list[list[int]]:
    return list(token_chunks(tiny_tokenizer(), _CORPUS.split(". "), seq_len))[:6]


def test_quality_matches_a_computation_by_hand():
    plain = tiny_model("llama", seed=4)
    engine = Engine(tiny_model("llama", seed=4), tiny_tokenizer(), source="tiny")
    sae = random_sae("L1.resid_post", seed=3, activation="topk", k=6)
    chunks = _chunks()
    quality = evaluate(engine, sae, iter(chunks), tokens=10_000, seqs_per_forward=4)

    ids = torch.tensor(chunks)  # [seqs, pos]
    layer = plain.model.layers[1]
    mode = {"value": "clean"}
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        x = (output[0] if isinstance(output, tuple) else output).clone()  # [seqs, pos, d]
        seen.append(x.detach())
        rows = x[:, 1:].double()
        if mode["value"] == "sae":
            pre = (rows - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
            top = pre.topk(6, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
            x[:, 1:] = (acts @ sae.W_dec.double() + sae.b_dec.double()).float()
        elif mode["value"] == "zero":
            x[:, 1:] = 0
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handle = layer.register_forward_hook(hook)
    losses, logits = {}, {}
    with torch.no_grad():
        for name in ("clean", "sae", "zero"):
            mode["value"] = name
            out = plain(ids).logits.double()  # [seqs, pos, vocab]
            logits[name] = out
            logprobs = torch.log_softmax(out[:, 1:-1], -1)
            losses[name] = float(-logprobs.gather(-1, ids[:, 2:, None]).mean())
    handle.remove()
    x = seen[0][:, 1:].double().reshape(-1, 32)
    pre = (x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
    top = pre.topk(6, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
    recon = acts @ sae.W_dec.double() + sae.b_dec.double()
    fve = 1 - float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    p = torch.log_softmax(logits["clean"][:, 1:-1], -1)
    q = torch.log_softmax(logits["sae"][:, 1:-1], -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())

    assert quality.tokens == x.shape[0]
    assert quality.fve == pytest.approx(fve, abs=1e-5)
    assert quality.l0 == pytest.approx(float((acts > 0).sum(-1).double().mean()), abs=1e-9)
    assert quality.dead_fraction == pytest.approx(1 - float((acts > 0).any(0).double().mean()), abs=1e-9)
    assert quality.ce_clean == pytest.approx(losses["clean"], abs=1e-5)
    assert quality.ce_sae == pytest.approx(losses["sae"], abs=1e-4)
    assert quality.ce_zero == pytest.approx(losses["zero"], abs=1e-4)
    recovered = (losses["zero"] - losses["sae"]) / (losses["zero"] - losses["clean"])
    assert quality.ce_recovered == pytest.approx(recovered, abs=1e-3)
    assert quality.kl == pytest.approx(kl, abs=1e-5) and quality.kl > 0
    assert not math.isnan(quality.ce_recovered) and len(quality.lines()) == 10


def test_typical_fve_leaves_out_massive_activations(monkeypatch):
    from mechscope.engine.features import quality as quality_module

    engine = Engine(tiny_model("llama", seed=4), tiny_tokenizer(), source="tiny")
    sae = random_sae("L1.resid_post", seed=3, activation="topk", k=6)
    chunks = _chunks()
    real = quality_module.site_values
    planted = []

    def with_a_massive_token(passes, ids, site):
        x = real(passes, ids, site).clone()  # [seqs, pos, d]
        x[0, 3] *= 500.0  # an attention-sink-like norm past position 0
        planted.append(x[:, 1:].double().reshape(-1, x.shape[-1]))
        return x

    monkeypatch.setattr(quality_module, "site_values", with_a_massive_token)
    quality = evaluate(engine, sae, iter(chunks), tokens=10_000, seqs_per_forward=3)
    x = torch.cat(planted)  # [tokens, d]
    recon = sae.decode(sae.encode(x.float())).double()
    norms = x.norm(dim=-1)
    typical = norms <= 10.0 * float(planted[0].float().norm(dim=-1).median())
    kept, kept_recon = x[typical], recon[typical]
    expected = 1 - float((kept - kept_recon).pow(2).sum() / (kept - kept.mean(0)).pow(2).sum())
    assert quality.massive_tokens == len(planted) == 2 and int((~typical).sum()) == 2
    assert quality.fve_typical == pytest.approx(expected, abs=1e-5)
    everything = 1 - float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert quality.fve == pytest.approx(everything, abs=1e-5) and quality.fve != pytest.approx(expected, abs=1e-3)
