"""Where things live in each supported Hugging Face architecture: one small table per family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from mechscope.engine.errors import UnsupportedArchitecture
from mechscope.engine.placement import loaded


@dataclass(frozen=True)
class FamilySpec:
    """Attribute paths, relative to the CausalLM model or to one decoder layer.

    layers: the ModuleList of decoder layers (from the CausalLM).
    final_norm: the norm applied after the last layer (from the CausalLM).
    attn: the attention module (from a layer); its output[0] is the output projection's result.
    o_proj: the attention output projection (from a layer); its input is [batch, pos, heads*d_head].
    attn_out: the module whose output is what attention adds to the residual (a post-norm, if any).
    mlp_out: the module whose output is what the MLP adds to the residual.
    mlp_down: the MLP's down projection (from a layer); its input holds the MLP neurons.
    mlp: the whole MLP (from a layer), called on the normed residual [batch, pos, d_model]; None
        where the layer calls the MLP's parts itself (OPT).
    post_final: modules applied after final_norm and before the unembedding (OPT's project_out).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    final_norm: str
    attn: str
    o_proj: str
    attn_out: str
    mlp_out: str
    mlp_down: str
    mlp: str | None = "mlp"
    post_final: tuple[str, ...] = ()


_LLAMA_LIKE: dict[str, Any] = dict(
    layers="model.layers",
    final_norm="model.norm",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    attn_out="self_attn",
    mlp_out="mlp",
    mlp_down="mlp.down_proj",
)

FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(
        name="GPT-2",
        model_types=("gpt2",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attn="attn",
        o_proj="attn.c_proj",
        attn_out="attn",
        mlp_out="mlp",
        mlp_down="mlp.c_proj",
    ),
    FamilySpec(
        name="GPT-NeoX (Pythia)",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        o_proj="attention.dense",
        attn_out="attention",
        mlp_out="mlp",
        mlp_down="mlp.dense_4h_to_h",
    ),
    FamilySpec(
        name="Llama/Mistral/Qwen2/Qwen3/SmolLM",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        **_LLAMA_LIKE,
    ),
    FamilySpec(name="Gemma", model_types=("gemma",), **_LLAMA_LIKE),
    FamilySpec(
        name="Gemma2/Gemma3",
        model_types=("gemma2", "gemma3_text", "gemma3"),
        layers="model.layers",
        final_norm="model.norm",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        mlp_down="mlp.down_proj",
    ),
    FamilySpec(
        name="OPT",
        model_types=("opt",),
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        attn="self_attn",
        o_proj="self_attn.out_proj",
        attn_out="self_attn",
        mlp_out="fc2",
        mlp_down="fc2",
        mlp=None,
        post_final=("model.decoder.project_out",),
    ),
    FamilySpec(
        name="Phi-3",
        model_types=("phi3",),
        layers="model.layers",
        final_norm="model.norm",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        attn_out="self_attn",
        mlp_out="mlp",
        mlp_down="mlp.down_proj",
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def supported_families_text() -> str:
    return ", ".join(f.name for f in FAMILIES)


def family_for(model_type: str) -> FamilySpec:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitecture(
        f"architecture {model_type!r} is not supported; supported: {supported_families_text()}"
    )


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module | None = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


class Adapter:
    """Resolved modules and shapes of one loaded model."""

    def __init__(self, model: nn.Module) -> None:
        config: Any = model.config  # a transformers PretrainedConfig
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.family = family_for(getattr(text_config, "model_type", config.model_type))
        self.model = model
        self.config = text_config
        layers = get_path(model, self.family.layers)
        final_norm = get_path(model, self.family.final_norm)
        if layers is None or final_norm is None:
            raise UnsupportedArchitecture(
                f"{type(model).__name__} does not have the expected layout for {self.family.name}"
            )
        self.layers: nn.ModuleList = layers  # type: ignore[assignment]
        self.final_norm: nn.Module = final_norm
        self.post_final = [m for p in self.family.post_final if (m := get_path(model, p)) is not None]
        self.unembed: nn.Module = cast(Any, model).get_output_embeddings()  # a PreTrainedModel method
        self.n_layers = len(self.layers)
        self.n_heads = int(text_config.num_attention_heads)
        self.n_kv_heads = int(getattr(text_config, "num_key_value_heads", None) or self.n_heads)
        d_model = int(text_config.hidden_size)
        self.d_model = d_model
        self.d_head = int(getattr(text_config, "head_dim", None) or d_model // self.n_heads)
        self.d_mlp = int(
            getattr(text_config, "intermediate_size", None)
            or getattr(text_config, "ffn_dim", None)
            or getattr(text_config, "n_inner", None)
            or 4 * d_model
        )
        self.vocab_size = int(self.unembed.weight.shape[0])
        self.max_context = int(
            getattr(text_config, "max_position_embeddings", None)
            or getattr(text_config, "n_positions", None)
            or 2048
        )
        self.final_softcap = getattr(text_config, "final_logit_softcapping", None)
        self.post_ln = getattr(text_config, "do_layer_norm_before", True) is False

    def layer_module(self, layer: int, which: str) -> nn.Module:
        path = getattr(self.family, which)
        module = get_path(self.layers[layer], path)
        if module is None:
            raise UnsupportedArchitecture(f"layer {layer} has no {which} at {path!r}")
        return module

    def o_proj(self, layer: int) -> nn.Module:
        return self.layer_module(layer, "o_proj")

    def o_weight(self, layer: int) -> torch.Tensor:
        """Output-projection weight as [d_model, heads*d_head] (nn.Linear layout)."""
        module = self.o_proj(layer)
        weight = loaded(module, "weight")
        assert weight is not None  # every supported output projection has a weight
        if type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            return weight.T
        return weight

    def o_bias(self, layer: int) -> torch.Tensor | None:
        return loaded(self.o_proj(layer), "bias")

    def attn_post_norm(self, layer: int) -> nn.Module | None:
        """The norm applied to the attention output before the residual add (Gemma2/3), if any."""
        if self.family.attn_out == self.family.attn:
            return None
        return self.layer_module(layer, "attn_out")
