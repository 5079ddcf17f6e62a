"""TopK SAE training: a planted dictionary is recovered; checkpoints resume exactly."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mechscope.engine.features.training import TopKTrainer, TrainConfig

D, N_TRUE, ACTIVE = 64, 256, 4


@contextlib.contextmanager
def one_thread():
    """Matrices this small run fastest on one thread (and predictably on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def planted(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(N_TRUE, D, generator=g)
    directions /= directions.norm(dim=-1, keepdim=True)  # [n_true, d]

    def batch(n: int) -> torch.Tensor:  # [n, d]: 4 random true directions with weights in [0.5, 1.5]
        chosen = torch.rand(n, N_TRUE, generator=g).argsort(-1)[:, :ACTIVE]
        weights = torch.rand(n, ACTIVE, generator=g) + 0.5
        return (weights[..., None] * directions[chosen]).sum(1)

    return directions, batch


def test_planted_dictionary_is_recovered():
    directions, batch = planted()
    trainer = TopKTrainer(D, TrainConfig(width=512, k=ACTIVE, lr=1e-2, dead_after=512 * 20))
    with one_thread():
        for _ in range(100):
            stats = trainer.step(batch(512))
    sae = trainer.sae("L0.resid_post")
    rows = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    best = (directions @ rows.T).max(-1).values  # [n_true]: best cosine of each true direction
    assert float(best.mean()) >= 0.9, float(best.mean())
    assert stats.l0 == ACTIVE and stats.fve > 0.7


def test_exported_sae_reads_raw_values_as_the_trainer_does():
    _, batch = planted(2)
    trainer = TopKTrainer(D, TrainConfig(width=128, k=8, lr=1e-3))
    x = batch(64) * 37.0  # far from unit scale: the trainer's input scale must fold into the weights
    with one_thread():
        trainer.step(x)
    sae = trainer.sae("L0.mlp_out")
    scaled = x * trainer.scale
    p = trainer.params
    pre = (scaled - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    values, indices = pre.topk(8, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    torch.testing.assert_close(sae.encode(x), acts.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), ((acts @ p["W_dec"] + p["b_dec"]) / trainer.scale).detach(),
                               atol=1e-4, rtol=1e-4)
    assert torch.allclose(p["W_dec"].norm(dim=-1), torch.ones(128), atol=1e-5)


def test_a_restored_checkpoint_continues_exactly():
    _, batch = planted(3)
    config = TrainConfig(width=128, k=4, lr=3e-3, dead_after=64)
    data = [batch(128) for _ in range(6)]
    first = TopKTrainer(D, config)
    with one_thread():
        for x in data[:3]:
            first.step(x)
        tensors, numbers = first.state()
        second = TopKTrainer(D, config)
        second.restore({k: v.clone() for k, v in tensors.items()}, dict(numbers))
        for x in data[3:]:
            a, b = first.step(x), second.step(x)
            assert a == b
    for name in first.params:
        assert torch.equal(first.params[name], second.params[name])
    with pytest.raises(ValueError, match="other settings"):
        TopKTrainer(D, TrainConfig(width=128, k=5)).restore(tensors, numbers)
