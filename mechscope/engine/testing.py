"""Tiny random models of every supported family, built from configs (no downloads), for tests and benchmarks."""

from __future__ import annotations

import functools
from typing import Any

import torch
import transformers

_CORPUS = (
    "When Mary and John went to the store, John gave a drink to Mary. "
    "When Mary and John went to the store, Mary gave a drink to John. "
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat and looked at the moon. "
    "Alice and Bob walked to the park, and Bob handed a book to Alice. "
    "The capital of France is Paris. The Eiffel Tower is in Paris. "
    "I love this movie, it is wonderful and happy. I hate this film, it is awful and sad. "
    "One two three four five six seven eight nine ten. "
)

FAMILIES: tuple[str, ...] = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma",
                             "gemma2", "gemma3", "opt", "phi3")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory on a few sentences (vocab 400)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_config(family: str, vocab_size: int = 400, **overrides) -> transformers.PretrainedConfig:
    """A 3-layer, 4-head, d_model 32 config of `family` (grouped-query attention where the family has it)."""
    common: dict[str, Any] = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    gqa: dict[str, Any] = dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
               intermediate_size=64, max_position_embeddings=256)
    cfg: transformers.PretrainedConfig
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=256, **common)
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32,
                                         intermediate_size=64, max_position_embeddings=256,
                                         rotary_pct=0.5, **common)  # type: ignore[call-arg]  # transformers 5 takes it through **kwargs
    elif family == "llama":
        cfg = transformers.LlamaConfig(**gqa, **common)
    elif family == "mistral":
        cfg = transformers.MistralConfig(**gqa, sliding_window=None, **common)
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**gqa, **common)
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(**gqa, head_dim=8, **common)
    elif family == "gemma":
        cfg = transformers.GemmaConfig(**gqa, head_dim=8, **common)
    elif family == "gemma2":
        cfg = transformers.Gemma2Config(**gqa, head_dim=8, sliding_window=4, **common)
    elif family == "gemma3":
        cfg = transformers.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=4,
                                            layer_types=["sliding_attention", "full_attention",
                                                         "sliding_attention"], **common)
    elif family == "opt":
        cfg = transformers.OPTConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32,
                                     ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=256,
                                     **common)
    elif family == "phi3":
        cfg = transformers.Phi3Config(**gqa, **common)
    else:
        raise ValueError(f"no tiny config for {family!r}; known: {', '.join(FAMILIES)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random-weight causal LM of `family` in eval mode, fp32, default attention implementation."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    # Random init gives tiny weights; scale up so attention patterns and norms are far from uniform.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3 if "embed" in name or "wte" in name or "wpe" in name else 0.15)
            elif "bias" in name:
                param.normal_(0.0, 0.05)
    return model.eval()


def tiny_engine(family: str = "llama", seed: int = 0, **overrides):
    """An `Engine` wrapping a tiny random model and the tiny tokenizer."""
    from mechscope.engine.core import Engine

    return Engine(tiny_model(family, seed, **overrides), tiny_tokenizer(), source=f"tiny-{family}")
