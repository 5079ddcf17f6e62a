"""One row's unembedding on the CPU, run as slices over torch's threads, equals the module's own call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.engine import Engine, Metric
from mechscope.engine.testing import tiny_model, tiny_tokenizer
from mechscope.engine.unembedding import MIN_ELEMENTS, unembed


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _never_called(*args, **kwargs):
    raise AssertionError("the module's own forward ran")


@pytest.mark.parametrize("vocab", [8192, 8191, 8255])  # whole slices, and ragged tails of 63 and 127 rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead", [(), (1,), (1, 1)])
def test_one_row_sliced_equals_the_module(two_threads, vocab, dtype, lead):
    torch.manual_seed(0)
    module = nn.Linear(576, vocab, bias=False).to(dtype)
    assert module.weight.numel() >= MIN_ELEMENTS  # the sliced path, not the fallback
    normed = torch.randn(*lead, 576, dtype=dtype)
    with torch.no_grad():
        expected = module(normed)
        module.forward = _never_called  # type: ignore[method-assign]  # proves the slices ran
        got = unembed(module, normed)
    assert got.shape == expected.shape == (*lead, vocab)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["two rows", "bias", "small", "one thread"])
def test_other_products_are_the_module_call(two_threads, case):
    torch.manual_seed(0)
    module = nn.Linear(576, 64 if case == "small" else 8192, bias=case == "bias")
    normed = torch.randn(2 if case == "two rows" else 1, 576)
    if case == "one thread":
        torch.set_num_threads(1)
    with torch.no_grad():
        expected = module(normed)
        assert torch.equal(unembed(module, normed), expected)
        module.forward = _never_called  # type: ignore[method-assign]
        with pytest.raises(AssertionError, match="forward ran"):
            unembed(module, normed)


def test_engine_prediction_with_a_large_vocabulary_equals_the_plain_model(two_threads):
    """A tiny Llama with a 2**17-token unembedding: the live run's readout takes the sliced path."""
    model = tiny_model("llama", vocab_size=1 << 17)
    assert model.get_output_embeddings().weight.numel() >= MIN_ELEMENTS
    tokenizer = tiny_tokenizer()
    prompt = "When Mary and John went to the store, John gave a drink to"
    engine = Engine(model, tokenizer)
    run = engine.run(prompt, metric=Metric("logit_diff", target=" Mary", foil=" John"))
    ids = torch.tensor([tokenizer(prompt).input_ids])
    with torch.no_grad():
        plain = model(ids).logits[0, -1].float()  # [vocab]
    torch.testing.assert_close(torch.from_numpy(run.prediction.logits), plain, rtol=1e-5, atol=1e-5)
    assert run.prediction.top[0].id == int(plain.argmax())
