"""Interventions checked against the plain Hugging Face model with hand-written hooks, on every family."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from mechscope.engine import (
    INTERVENTION_TYPES,
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    Engine,
    HeadAblation,
    HeadInputPatch,
    HeadScale,
    Intervention,
    InterventionError,
    Metric,
    NeuronClamp,
    SteeringVector,
    Views,
    parse_address,
)
from mechscope.engine.hooks import count_hooks
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"  # 14 tiny tokens
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"  # 14 tiny tokens
OTHER = "Alice and Bob walked to the park"  # 10 tiny tokens
REFERENCE_SET = ("The quick brown fox jumps over the lazy dog.", "I love this movie")
OTHER_REFERENCE_SET = ("One two three four five six", "The capital of France is Paris.")
SITES = ("head", "attn", "mlp", "resid_pre", "resid_post", "embed")
TOL = 1e-5

# ---------------------------------------------------------------- independent reference
# The plain HF model with hooks written here from scratch (no mechscope code), so every engine
# result below is compared with a second implementation, not with itself.


@dataclass(frozen=True)
class Layout:
    """Module paths: decoder layers (from the CausalLM), then relative to one layer."""

    layers: str
    o_proj: str  # input [batch, pos, heads*d_head]
    attn_out: str  # output is what attention adds to the residual stream
    mlp_out: str  # output is what the MLP adds to the residual stream
    down: str  # input holds the MLP neurons
    ln_in: str  # first module reading the layer's input residual


_LLAMA = Layout("model.layers", "self_attn.o_proj", "self_attn", "mlp", "mlp.down_proj", "input_layernorm")
_GEMMA2 = Layout("model.layers", "self_attn.o_proj", "post_attention_layernorm", "post_feedforward_layernorm",
                 "mlp.down_proj", "input_layernorm")
LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout("transformer.h", "attn.c_proj", "attn", "mlp", "mlp.c_proj", "ln_1"),
    "gpt_neox": Layout("gpt_neox.layers", "attention.dense", "attention", "mlp", "mlp.dense_4h_to_h",
                       "input_layernorm"),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA, "phi3": _LLAMA,
    "gemma2": _GEMMA2, "gemma3": _GEMMA2,
    "opt": Layout("model.decoder.layers", "self_attn.out_proj", "self_attn", "fc2", "fc2",
                  "self_attn_layer_norm"),
}

REFERENCE_ATTN = "ivtest_reference"
_KNOCKOUTS: dict[int, list[tuple[int, int, int]]] = {}  # id(attention module) -> (head, query, key)
# id(attention module) -> ("q" | "k" | "v", head or KV head, positions, rows [n, d_head]) to write
_QKV_PATCHES: dict[int, list[tuple[str, int, list[int], torch.Tensor]]] = {}
_QKV_SEEN: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # id(module) -> last q, k, v


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                         **kwargs):
    """Textbook eager attention that sets knocked-out scores to -inf before the softmax."""
    # query [batch, head, q, d_head]; key/value [batch, kv_head, k, d_head]
    patches = _QKV_PATCHES.get(id(module), ())
    if patches:
        inputs = {"q": query.clone(), "k": key.clone(), "v": value.clone()}
        for which, head, dst, rows in patches:
            inputs[which][0, head, dst] = rows
        query, key, value = inputs["q"], inputs["k"], inputs["v"]
    _QKV_SEEN[id(module)] = (query[0].clone(), key[0].clone(), value[0].clone())
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = query @ key.transpose(-1, -2) * scale  # [batch, head, q, k]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    for head, q, k in _KNOCKOUTS.get(id(module), ()):
        scores[:, head, q, k] = float("-inf")
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(REFERENCE_ATTN, _reference_attention)
AttentionMaskInterface.register(REFERENCE_ATTN, eager_mask)


def _get(root: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _seq(x: torch.Tensor, n_pos: int) -> torch.Tensor:
    """[batch*pos, d] (OPT's MLP) -> [batch, pos, d]; 3-d unchanged."""
    return x.view(-1, n_pos, x.shape[-1]) if x.dim() == 2 else x


def _tensor_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_tensor(output, tensor: torch.Tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _layer_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_layer_input(args, kwargs, hidden: torch.Tensor):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def token_ids(text: str | torch.Tensor) -> torch.Tensor:
    """[1, pos] ids of a prompt (ids pass through, so generation can feed grown sequences)."""
    if isinstance(text, torch.Tensor):
        return text
    return torch.tensor([tiny_tokenizer()(text).input_ids])


class Plain:
    """A tiny model of `family` with the reference attention, driven by hand-written hooks."""

    def __init__(self, family: str, seed: int = 0) -> None:
        self.family = family
        self.model = tiny_model(family, seed)
        self.model.set_attn_implementation(REFERENCE_ATTN)
        self.layout = LAYOUTS[family]
        self.layers = _get(self.model, self.layout.layers)
        config = self.model.config
        self.n_layers = len(self.layers)
        self.n_heads = int(config.num_attention_heads)
        self.n_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.d_model = int(config.hidden_size)
        self.d_head = int(getattr(config, "head_dim", None) or self.d_model // self.n_heads)
        self._activations: dict[str, dict[str, list[torch.Tensor]]] = {}

    def module(self, layer: int, which: str) -> torch.nn.Module:
        return _get(self.layers[layer], getattr(self.layout, which))

    @property
    def d_mlp(self) -> int:
        down = self.module(0, "down")
        return down.weight.shape[0] if type(down).__name__ == "Conv1D" else down.weight.shape[1]

    def o_weight_head(self, layer: int, head: int) -> torch.Tensor:
        """Head `head`'s rows of the output projection as [d_head, d_model] (z_h @ W maps to the residual)."""
        module = self.module(layer, "o_proj")
        rows = slice(head * self.d_head, (head + 1) * self.d_head)
        if type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            return module.weight[rows, :]
        return module.weight[:, rows].T

    @contextlib.contextmanager
    def hooked(self, hooks: Sequence[tuple[torch.nn.Module, str, object]],
               knockouts: dict[int, list[tuple[int, int, int]]] | None = None) -> Iterator[None]:
        handles = []
        try:
            for module, where, fn in hooks:
                if where == "qkv":
                    _QKV_PATCHES.setdefault(id(module), []).append(fn)
                elif where == "pre":
                    handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(fn))
            for layer, edges in (knockouts or {}).items():
                _KNOCKOUTS[id(self._attn(layer))] = edges
            yield
        finally:
            for handle in handles:
                handle.remove()
            _KNOCKOUTS.clear()
            _QKV_PATCHES.clear()

    def _attn(self, layer: int) -> torch.nn.Module:
        # the module that calls the attention function: the parent of the output projection
        path = self.layout.o_proj.rsplit(".", 1)[0]
        return _get(self.layers[layer], path)

    @torch.no_grad()
    def logits(self, text: str | torch.Tensor, hooks=(), knockouts=None) -> torch.Tensor:
        """[pos, vocab] float logits of `text` with `hooks` installed."""
        with self.hooked(hooks, knockouts):
            return self.model(token_ids(text), use_cache=False).logits[0].float()

    @torch.no_grad()
    def attentions(self, text: str, interventions: Sequence[Intervention], corrupted: str | None,
                   vectors: dict[str, np.ndarray], reference: Sequence[str]) -> list[torch.Tensor]:
        """Per layer [head, query, key] attention weights of a run with `interventions`."""
        n_pos = token_ids(text).shape[1]
        hooks, knockouts = self._edits(interventions, n_pos, corrupted, vectors, reference)
        with self.hooked(hooks, knockouts):
            out = self.model(token_ids(text), use_cache=False, output_attentions=True)
        return [weights[0] for weights in out.attentions]

    @torch.no_grad()
    def activations(self, text: str) -> dict[str, list[torch.Tensor]]:
        """Every site of a clean run, per layer, as [pos, ...] tensors (memoised: the model never changes)."""
        if text not in self._activations:
            self._activations[text] = self._capture(text)
        return self._activations[text]

    def _capture(self, text: str) -> dict[str, list[torch.Tensor]]:
        n_pos = token_ids(text).shape[1]
        acts: dict[str, list] = {k: [None] * self.n_layers for k in
                                 ("z", "attn", "mlp", "resid_pre", "resid_post", "down_in")}
        hooks = []
        for layer in range(self.n_layers):
            def keep_pre(module, args, kwargs, layer=layer):
                acts["z"][layer] = _seq(args[0], n_pos)[0].clone()

            def keep_down(module, args, kwargs, layer=layer):
                acts["down_in"][layer] = _seq(args[0], n_pos)[0].clone()

            def keep_resid(module, args, kwargs, layer=layer):
                acts["resid_pre"][layer] = _layer_input(args, kwargs)[0].clone()

            def keep_out(site, layer=layer):
                def hook(module, args, output):
                    acts[site][layer] = _seq(_tensor_of(output), n_pos)[0].clone()
                return hook

            hooks += [(self.module(layer, "o_proj"), "pre", keep_pre),
                      (self.module(layer, "down"), "pre", keep_down),
                      (self.layers[layer], "pre", keep_resid),
                      (self.module(layer, "attn_out"), "fwd", keep_out("attn")),
                      (self.module(layer, "mlp_out"), "fwd", keep_out("mlp")),
                      (self.layers[layer], "fwd", keep_out("resid_post"))]
        self.logits(text, hooks)
        acts["qkv"] = [_QKV_SEEN[id(self._attn(layer))] for layer in range(self.n_layers)]
        return acts

    def means(self, prompts: Sequence[str]) -> dict[str, list[torch.Tensor]]:
        """Mean over every token of `prompts` of z [H*d_head], attn and mlp outputs [d_model], per layer."""
        runs = [self.activations(p) for p in prompts]
        return {site: [torch.cat([r[site][layer] for r in runs]).mean(0) for layer in range(self.n_layers)]
                for site in ("z", "attn", "mlp")}

    # -- interventions as hand-written hooks, in list order

    def intervention_logits(self, text: str | torch.Tensor, interventions: Sequence[Intervention],
                            corrupted: str | None, vectors: dict[str, np.ndarray],
                            reference: Sequence[str]) -> torch.Tensor:
        n_pos = token_ids(text).shape[1]
        hooks, knockouts = self._edits(interventions, n_pos, corrupted, vectors, reference)
        return self.logits(text, hooks, knockouts)

    def _edits(self, interventions, n_pos: int, corrupted, vectors, reference):
        hooks: list = []
        knockouts: dict[int, list] = {}
        for iv in interventions:
            if not iv.enabled:
                continue
            if isinstance(iv, AttentionKnockout):
                knockouts.setdefault(iv.layer, []).append((iv.head, iv.query_pos % n_pos, iv.key_pos % n_pos))
            else:
                hooks.append(self._hook(iv, n_pos, corrupted, vectors, reference))
        return hooks, knockouts

    def _hook(self, iv: Intervention, n_pos: int, corrupted, vectors, reference):
        dh = self.d_head
        every = list(range(n_pos))
        if isinstance(iv, (HeadAblation, HeadScale)):
            dst = list(iv.positions) if iv.positions is not None else every
            cols = slice(iv.head * dh, (iv.head + 1) * dh)
            if isinstance(iv, HeadAblation) and iv.mode == "mean":
                replacement = self.means(reference)["z"][iv.layer][cols]  # [d_head]
            elif isinstance(iv, HeadAblation) and iv.mode == "resample":
                replacement = self.activations(corrupted)["z"][iv.layer][dst, cols]  # [n, d_head]
            else:
                replacement = None

            def head_hook(module, args, kwargs):
                z = _seq(args[0], n_pos).clone()  # [1, pos, H*d_head]
                if isinstance(iv, HeadScale):
                    z[0, dst, cols] = z[0, dst, cols] * iv.factor
                elif iv.mode == "zero":
                    z[0, dst, cols] = 0.0
                else:
                    z[0, dst, cols] = replacement
                return (z.view(args[0].shape), *args[1:]), kwargs

            return self.module(iv.layer, "o_proj"), "pre", head_hook
        if isinstance(iv, ComponentAblation):
            dst = list(iv.positions) if iv.positions is not None else every
            if iv.mode == "mean":
                replacement = self.means(reference)[iv.component][iv.layer]
            elif iv.mode == "resample":
                replacement = self.activations(corrupted)[iv.component][iv.layer][dst]
            else:
                replacement = 0.0
            which = "attn_out" if iv.component == "attn" else "mlp_out"
            return self.module(iv.layer, which), "fwd", self._replace_output(dst, replacement, n_pos)
        if isinstance(iv, ActivationPatch):
            site, layer, head = _parse(iv.address)
            dst = list(iv.positions) if iv.positions is not None else every
            source = self.activations(iv.source_prompt)
            if site == "head":
                cols = slice(head * dh, (head + 1) * dh)
                patch = source["z"][layer][dst, cols]

                def patch_head(module, args, kwargs):
                    z = _seq(args[0], n_pos).clone()
                    z[0, dst, cols] = patch
                    return (z.view(args[0].shape), *args[1:]), kwargs

                return self.module(layer, "o_proj"), "pre", patch_head
            if site in ("attn", "mlp"):
                which = "attn_out" if site == "attn" else "mlp_out"
                patch_out = self._replace_output(dst, source[site][layer][dst], n_pos)
                return self.module(layer, which), "fwd", patch_out
            if site == "resid_post":
                patch_out = self._replace_output(dst, source["resid_post"][layer][dst], n_pos)
                return self.layers[layer], "fwd", patch_out
            patch = source["resid_pre"][layer][dst]

            def patch_resid(module, args, kwargs):
                hidden = _layer_input(args, kwargs).clone()
                hidden[0, dst] = patch
                return _with_layer_input(args, kwargs, hidden)

            return self.layers[layer], "pre", patch_resid
        if isinstance(iv, HeadInputPatch):
            dst = list(iv.positions) if iv.positions is not None else every
            index = "qkv".index(iv.which)
            group = self.n_heads // self.n_kv_heads
            head = iv.head if iv.which == "q" else iv.head // group
            src = [p % token_ids(iv.source_prompt).shape[1] for p in dst]
            rows = self.activations(iv.source_prompt)["qkv"][iv.layer][index][head, src]  # [n, d_head]
            return self._attn(iv.layer), "qkv", (iv.which, head, [p % n_pos for p in dst], rows)
        if isinstance(iv, SteeringVector):
            delta = torch.tensor(vectors[iv.vector_id]) * iv.coeff  # [d_model]
            dst = steered_positions(iv.positions, n_pos)

            def steer(module, args, kwargs):
                hidden = _layer_input(args, kwargs).clone()
                hidden[0, dst] = hidden[0, dst] + delta
                return _with_layer_input(args, kwargs, hidden)

            return self.layers[iv.layer], "pre", steer
        if isinstance(iv, NeuronClamp):
            dst = list(iv.positions) if iv.positions is not None else every

            def clamp(module, args, kwargs):
                x = _seq(args[0], n_pos).clone()  # [1, pos, d_mlp]
                x[0, dst, iv.neuron] = iv.value
                return (x.view(args[0].shape), *args[1:]), kwargs

            return self.module(iv.layer, "down"), "pre", clamp
        raise AssertionError(f"no reference for {iv!r}")

    @staticmethod
    def _replace_output(dst: list[int], replacement, n_pos: int):
        def hook(module, args, output):
            original = _tensor_of(output)
            out = _seq(original, n_pos).clone()  # [1, pos, d_model]
            out[0, dst] = replacement
            return _with_tensor(output, out.view(original.shape))
        return hook


def _parse(address: str) -> tuple[str, int, int | None]:
    """`L2.H1` -> ("head", 2, 1); `L0.mlp` -> ("mlp", 0, None); `embed` -> ("resid_pre", 0, None)."""
    if address == "embed":
        return "resid_pre", 0, None
    layer_text, site = address.split(".")
    layer = int(layer_text[1:])
    if site.startswith("H"):
        return "head", layer, int(site[1:])
    return site, layer, None


def address_of(site: str, layer: int, head: int = 0) -> str:
    if site == "embed":
        return "embed"
    return f"L{layer}.H{head}" if site == "head" else f"L{layer}.{site}"


def steered_positions(positions, n_pos: int) -> list[int]:
    if positions == "all":
        return list(range(n_pos))
    return [n_pos - 1] if positions == "last" else list(positions)


def random_stack(rng: random.Random, n_layers: int, n_heads: int, d_mlp: int,
                 n_pos: int) -> list[Intervention]:
    """1-4 random interventions of every kind, at random layers, heads and positions."""

    def positions(limit: int = n_pos):
        if rng.random() < 0.35:
            return None
        chosen = rng.sample(range(limit), rng.randint(1, 3))
        if rng.random() < 0.2:
            chosen[0] = chosen[0] - limit  # a negative position counts from the end
        return chosen

    stack: list[Intervention] = []
    for _ in range(rng.randint(1, 4)):
        layer, head = rng.randrange(n_layers), rng.randrange(n_heads)
        kind = rng.choice(INTERVENTION_TYPES)
        if kind is HeadAblation:
            stack.append(HeadAblation(layer, head, rng.choice(("zero", "mean", "resample")), positions()))
        elif kind is HeadScale:
            stack.append(HeadScale(layer, head, rng.uniform(-2, 3), positions()))
        elif kind is ComponentAblation:
            stack.append(ComponentAblation(layer, rng.choice(("attn", "mlp")),
                                           rng.choice(("zero", "mean", "resample")), positions()))
        elif kind is ActivationPatch:
            source = rng.choice((CORRUPT, CORRUPT, PROMPT, OTHER))
            if source == OTHER:  # another length: explicit positions inside both prompts
                where = rng.sample(range(token_ids(OTHER).shape[1]), rng.randint(1, 3))
            else:
                where = positions()
            stack.append(ActivationPatch(address_of(rng.choice(SITES), layer, head), source, where))
        elif kind is HeadInputPatch:
            source = rng.choice((CORRUPT, CORRUPT, PROMPT, OTHER))
            if source == OTHER:  # another length: explicit positions inside both prompts
                where = rng.sample(range(token_ids(OTHER).shape[1]), rng.randint(1, 3))
            else:
                where = positions()
            stack.append(HeadInputPatch(layer, head, rng.choice(("q", "k", "v")), source, where))
        elif kind is SteeringVector:
            where = rng.choice(("all", "last", tuple(rng.sample(range(n_pos), 2))))
            stack.append(SteeringVector(layer, rng.choice(("up", "down")), rng.uniform(-3, 3), where))
        elif kind is AttentionKnockout:
            query = rng.randrange(1, n_pos)
            stack.append(AttentionKnockout(layer, head, query, rng.randrange(0, query + 1)))
        else:
            stack.append(NeuronClamp(layer, rng.randrange(d_mlp), rng.uniform(-4, 4), positions()))
    if len(stack) > 1 and rng.random() < 0.3:  # a disabled intervention is ignored
        index = rng.randrange(len(stack))
        stack[index] = stack[index].with_enabled(False)
    return stack


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def plain(family) -> Plain:
    return Plain(family)


@pytest.fixture(scope="module")
def engine(family) -> Engine:
    engine = Engine(tiny_model(family), tiny_tokenizer(), source=f"tiny-{family}")
    engine.set_reference_prompts(list(REFERENCE_SET))
    rng = np.random.default_rng(7)
    for name in ("up", "down"):
        engine.add_vector(name, rng.normal(0, 0.5, engine.info.d_model))
    return engine


def assert_matches(result, expected: torch.Tensor, text: str = PROMPT) -> None:
    """The run's last-position logits and per-token log-probs equal `expected` [pos, vocab]."""
    np.testing.assert_allclose(result.logits, expected[-1].numpy(), atol=TOL, rtol=TOL)
    ids = token_ids(text)[0]
    log_probs = torch.log_softmax(expected, -1)[:-1].gather(-1, ids[1:, None])[:, 0]
    np.testing.assert_allclose(result.token_logprobs[1:], log_probs.numpy(), atol=TOL, rtol=TOL)


# ---------------------------------------------------------------- tests


def test_reference_equals_hugging_face(plain, family):
    """The hand-written reference attention reproduces the model's own attention implementation."""
    with torch.no_grad():
        expected = tiny_model(family)(token_ids(PROMPT)).logits[0].float()
    torch.testing.assert_close(plain.logits(PROMPT), expected, atol=TOL, rtol=TOL)


def test_random_stacks_equal_a_full_forward(engine, plain):
    rng = random.Random(f"stacks-{plain.family}")
    n_pos = token_ids(PROMPT).shape[1]
    engine.run(PROMPT)  # warm the clean cache: later runs recompute from the cached layer inputs
    modes = set()
    for _ in range(14):
        stack = random_stack(rng, plain.n_layers, plain.n_heads, plain.d_mlp, n_pos)
        result = engine.run(PROMPT, stack, views=Views(logprobs=True), corrupted=CORRUPT)
        expected = plain.intervention_logits(PROMPT, stack, CORRUPT, engine.vectors, REFERENCE_SET)
        try:
            assert_matches(result, expected)
        except AssertionError as exc:
            raise AssertionError(f"stack {[iv.label for iv in stack]}: {exc}") from None
        active = [iv for iv in stack if iv.enabled]
        start = min(0 if getattr(iv, "address", "") == "embed" else iv.start_layer for iv in active)
        assert result.compute.start_layer == start
        assert result.compute.mode == ("incremental" if start > 0 else "full")
        modes.add(result.compute.mode)
        assert count_hooks(engine.model) == 0
    assert modes == {"incremental", "full"}
    # the baseline of the same prompt is still the clean run
    np.testing.assert_allclose(engine.run(PROMPT).logits, plain.logits(PROMPT)[-1].numpy(), atol=TOL)


def test_random_stacks_read_at_one_position_equal_a_full_forward(engine, plain):
    """Without per-token log-probs the last layer's MLP runs at the readout position alone; the
    readout still equals a full forward, at the last position and at earlier ones."""
    rng = random.Random(f"readout-{plain.family}")
    n_pos = token_ids(PROMPT).shape[1]
    engine.run(PROMPT)
    for index in range(10):
        stack = random_stack(rng, plain.n_layers, plain.n_heads, plain.d_mlp, n_pos)
        position = -1 if index % 2 else rng.randrange(-9, -1)  # a patch source may be 10 tokens long
        result = engine.run(PROMPT, stack, metric=Metric("kl", position=position), corrupted=CORRUPT)
        expected = plain.intervention_logits(PROMPT, stack, CORRUPT, engine.vectors, REFERENCE_SET)
        np.testing.assert_allclose(result.logits, expected[position].numpy(), atol=TOL, rtol=TOL,
                                   err_msg=f"position {position}, stack {[iv.label for iv in stack]}")
        assert count_hooks(engine.model) == 0


def test_the_last_mlp_runs_at_every_position_only_when_something_reads_them(engine, plain):
    """A toggle read at one position runs the last MLP on that row; per-token log-probs, or an edit of
    that MLP, what it adds or the layer's output, keep every position (OPT calls its MLP's parts
    itself: always every one)."""
    layout = LAYOUTS[plain.family]
    last = plain.n_layers - 1
    mlp = _get(_get(engine.model, layout.layers)[last], "fc2" if plain.family == "opt" else "mlp")
    rows: list[int] = []
    handle = mlp.register_forward_hook(
        lambda module, args, output: rows.append(output.reshape(-1, output.shape[-1]).shape[0]))
    n_pos = token_ids(PROMPT).shape[1]
    try:
        engine.run(PROMPT)
        cases = [
            ([HeadAblation(1, 0)], Views(), 1),
            ([HeadAblation(1, 0)], Views(logprobs=True), n_pos),
            ([HeadAblation(1, 0), ComponentAblation(last, "mlp")], Views(), n_pos),
            ([HeadAblation(last, 0)], Views(), 1),  # attention still sees every position
            ([ActivationPatch(f"L{last}.resid_post", CORRUPT, positions=[0])], Views(), n_pos),
            ([NeuronClamp(last, 0, 1.0)], Views(), n_pos),
        ]
        for stack, views, expected in cases:
            rows.clear()
            engine.run(PROMPT, stack, views=views)
            wanted = n_pos if plain.family == "opt" else expected
            assert rows == [wanted], ([iv.label for iv in stack], views)
    finally:
        handle.remove()


def test_attention_views_under_random_stacks_equal_a_full_forward(engine, plain):
    """Patterns and sink scores read during an intervened run (eager path on every layer) are the
    intervened model's, including layers before the first intervention (served from the clean pass)."""
    rng = random.Random(f"views-{plain.family}")
    n_pos = token_ids(PROMPT).shape[1]
    heads = tuple(f"L{layer}.H{head}" for layer in range(plain.n_layers) for head in range(plain.n_heads))
    for _ in range(5):
        stack = random_stack(rng, plain.n_layers, plain.n_heads, plain.d_mlp, n_pos)
        result = engine.run(PROMPT, stack, views=Views(attention=heads, sinks=True, logprobs=True),
                            corrupted=CORRUPT)
        assert_matches(result, plain.intervention_logits(PROMPT, stack, CORRUPT, engine.vectors, REFERENCE_SET))
        expected = plain.attentions(PROMPT, stack, CORRUPT, engine.vectors, REFERENCE_SET)
        for layer in range(plain.n_layers):
            for head in range(plain.n_heads):
                np.testing.assert_allclose(result.attention[f"L{layer}.H{head}"], expected[layer][head].numpy(),
                                           atol=TOL, err_msg=f"L{layer}.H{head} {[iv.label for iv in stack]}")
            np.testing.assert_allclose(result.sink_scores[layer], expected[layer][:, 1:, 0].mean(-1).numpy(),
                                       atol=TOL)
        assert count_hooks(engine.model) == 0


def test_logit_lens_under_random_stacks_equals_decoding_each_layer(engine, plain):
    """Each lens row equals the model's own final norm and unembedding applied to that layer's output
    in the intervened run; rows below the first intervened layer are reused from the clean run."""
    rng = random.Random(f"lens-{plain.family}")
    n_pos = token_ids(PROMPT).shape[1]
    metric = Metric("logit_diff", target=" Mary", foil=" John")
    engine.run(PROMPT, metric=metric, views=Views(logit_lens=True, lens_k=4))  # the clean rows, memoised
    for _ in range(4):
        stack = random_stack(rng, plain.n_layers, plain.n_heads, plain.d_mlp, n_pos)
        lens = engine.run(PROMPT, stack, metric=metric, views=Views(logit_lens=True, lens_k=4),
                          corrupted=CORRUPT).logit_lens
        hooks, knockouts = plain._edits(stack, n_pos, CORRUPT, engine.vectors, REFERENCE_SET)
        outputs: list[torch.Tensor] = [None] * plain.n_layers

        def keep(layer: int, outputs=outputs):
            def hook(module, args, output):
                outputs[layer] = _tensor_of(output).clone()
            return hook

        plain.logits(PROMPT, hooks + [(plain.layers[layer], "fwd", keep(layer)) for layer in range(plain.n_layers)],
                     knockouts)
        target = tiny_tokenizer()(" Mary", add_special_tokens=False).input_ids[0]
        for layer in range(plain.n_layers):
            def swap(module, args, output, replacement=outputs[layer]):
                return _with_tensor(output, replacement)

            probs = torch.softmax(plain.logits(PROMPT, [(plain.layers[-1], "fwd", swap)])[-1], -1)
            label = f"L{layer} {[iv.label for iv in stack]}"
            np.testing.assert_allclose(lens.top_probs[layer], probs.topk(4).values.numpy(), atol=TOL, err_msg=label)
            np.testing.assert_allclose(probs[lens.top_ids[layer]].numpy(), lens.top_probs[layer], atol=TOL,
                                       err_msg=label)
            np.testing.assert_allclose(lens.target_prob[layer], float(probs[target]), atol=TOL, err_msg=label)
            assert lens.target_rank[layer] == int((probs > probs[target]).sum()), label


@pytest.mark.parametrize("site", SITES)
def test_patching_a_run_with_itself_changes_nothing(engine, plain, site):
    clean = engine.run(PROMPT, views=Views(logprobs=True))
    for positions in (None, [2, -1]):
        patched = engine.run(PROMPT, [ActivationPatch(address_of(site, 1, 2), PROMPT, positions)],
                             views=Views(logprobs=True))
        np.testing.assert_allclose(patched.logits, clean.logits, atol=TOL)
        np.testing.assert_allclose(patched.token_logprobs[1:], clean.token_logprobs[1:], atol=TOL)
    # and patching from the corrupted prompt does change the run (the check above is not vacuous)
    patched = engine.run(PROMPT, [ActivationPatch(address_of(site, 1, 2), CORRUPT)])
    assert np.abs(patched.logits - clean.logits).max() > 1e-3


def test_zero_ablation_subtracts_the_heads_share(engine, plain):
    layer, head = 1, 2
    n_pos = token_ids(PROMPT).shape[1]
    # By hand on the plain model: the clean output projection, the head's input slice, W_O's rows.
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        seen["z"] = _seq(args[0], n_pos)[0].clone()  # [pos, H*d_head]
        seen["out"] = _seq(output, n_pos)[0].clone()  # [pos, d_model]

    plain.logits(PROMPT, [(plain.module(layer, "o_proj"), "fwd", keep)])
    z_head = seen["z"][:, head * plain.d_head:(head + 1) * plain.d_head]  # [pos, d_head]
    with torch.no_grad():
        expected_out = seen["out"] - z_head @ plain.o_weight_head(layer, head)  # [pos, d_model]

    # The engine's ablated output projection, read with a hook of our own on its model.
    o_proj = _get(_get(engine.model, LAYOUTS[plain.family].layers)[layer], LAYOUTS[plain.family].o_proj)
    handle = o_proj.register_forward_hook(
        lambda m, a, out: seen.__setitem__("engine", _seq(out, n_pos)[0].clone()))
    try:
        result = engine.run(PROMPT, [HeadAblation(layer, head)], views=Views(logprobs=True))
    finally:
        handle.remove()
    torch.testing.assert_close(seen["engine"], expected_out, atol=TOL, rtol=TOL)

    # Logits equal the plain model with that slice zeroed by hand.
    def zero_slice(module, args, kwargs):
        z = _seq(args[0], n_pos).clone()
        z[..., head * plain.d_head:(head + 1) * plain.d_head] = 0
        return (z.view(args[0].shape),), kwargs

    assert_matches(result, plain.logits(PROMPT, [(plain.module(layer, "o_proj"), "pre", zero_slice)]))


def test_mean_ablation_uses_the_reference_set(engine, plain):
    layer, head = 2, 1
    cols = slice(head * plain.d_head, (head + 1) * plain.d_head)
    n_pos = token_ids(PROMPT).shape[1]
    results = {}
    try:
        for reference in (REFERENCE_SET, OTHER_REFERENCE_SET):
            engine.set_reference_prompts(list(reference))
            # per-head mean of the output projection's input over every token of both prompts
            tokens = torch.cat([plain.activations(text)["z"][layer][:, cols] for text in reference])
            assert tokens.shape[0] == sum(token_ids(text).shape[1] for text in reference)
            mean = tokens.mean(0)  # [d_head]

            def put_mean(module, args, kwargs, mean=mean):
                z = _seq(args[0], n_pos).clone()
                z[..., cols] = mean
                return (z.view(args[0].shape),), kwargs

            results[reference] = engine.run(PROMPT, [HeadAblation(layer, head, "mean")],
                                            views=Views(logprobs=True))
            by_hand = plain.logits(PROMPT, [(plain.module(layer, "o_proj"), "pre", put_mean)])
            assert_matches(results[reference], by_hand)
    finally:
        engine.set_reference_prompts(list(REFERENCE_SET))
    assert np.abs(results[REFERENCE_SET].logits - results[OTHER_REFERENCE_SET].logits).max() > 1e-4


def test_steering_with_coefficient_zero_changes_nothing(engine):
    clean = engine.run(PROMPT, views=Views(logprobs=True))
    for positions in ("all", "last", (3, 5)):
        steered = engine.run(PROMPT, [SteeringVector(1, "up", 0.0, positions)], views=Views(logprobs=True))
        np.testing.assert_allclose(steered.logits, clean.logits, atol=TOL)
        np.testing.assert_allclose(steered.token_logprobs[1:], clean.token_logprobs[1:], atol=TOL)


@pytest.mark.parametrize("positions", [(3, 5), "last", "all"])
def test_steering_changes_exactly_the_asked_positions(engine, plain, positions):
    layer, coeff = 1, 2.5
    n_pos = token_ids(PROMPT).shape[1]
    asked = steered_positions(positions, n_pos)
    # the residual entering the layer, as the first module of the layer reads it
    clean_input: dict[str, torch.Tensor] = {}
    plain.logits(PROMPT, [(plain.module(layer, "ln_in"), "pre",
                           lambda m, a, k: clean_input.__setitem__("x", a[0][0].clone()))])
    ln_in = _get(_get(engine.model, LAYOUTS[plain.family].layers)[layer], LAYOUTS[plain.family].ln_in)
    steered_input: dict[str, torch.Tensor] = {}
    handle = ln_in.register_forward_pre_hook(lambda m, a: steered_input.__setitem__("x", a[0][0].clone()))
    try:
        clean = engine.run(PROMPT, views=Views(logprobs=True))
        steered = engine.run(PROMPT, [SteeringVector(layer, "up", coeff, positions)],
                             views=Views(logprobs=True))
    finally:
        handle.remove()
    diff = steered_input["x"] - clean_input["x"]  # [pos, d_model]
    expected = torch.zeros_like(diff)
    expected[asked] = torch.tensor(engine.vectors["up"]) * coeff
    torch.testing.assert_close(diff, expected, atol=TOL, rtol=TOL)
    # logits before the first steered position are unchanged; from it on they change
    first = min(asked)
    # token_logprobs[i] is read from the logits at position i - 1
    np.testing.assert_allclose(steered.token_logprobs[1:first + 1], clean.token_logprobs[1:first + 1],
                               atol=TOL)
    if first + 1 < n_pos:
        assert abs(steered.token_logprobs[first + 1] - clean.token_logprobs[first + 1]) > 1e-4
    assert np.abs(steered.logits - clean.logits).max() > 1e-3


@pytest.mark.parametrize("edge", [(9, 1), (13, 13), (5, 0)])
def test_knocked_out_edge_has_weight_zero_and_the_row_sums_to_one(engine, edge):
    layer, head = 1, 2
    query, key = edge
    address = f"L{layer}.H{head}"
    clean = engine.run(PROMPT, views=Views(attention=(address, f"L{layer}.H{(head + 1) % 4}")))
    knocked = engine.run(PROMPT, [AttentionKnockout(layer, head, query, key)],
                         views=Views(attention=(address, f"L{layer}.H{(head + 1) % 4}")))
    before, after = clean.attention[address], knocked.attention[address]  # [query, key]
    assert after[query, key] == 0.0
    np.testing.assert_allclose(after.sum(-1), 1.0, atol=TOL)
    # the rest of the row is renormalised; other rows and other heads are untouched
    expected = before[query].copy()
    expected[key] = 0.0
    np.testing.assert_allclose(after[query], expected / expected.sum(), atol=TOL)
    np.testing.assert_allclose(np.delete(after, query, 0), np.delete(before, query, 0), atol=TOL)
    other = f"L{layer}.H{(head + 1) % 4}"
    np.testing.assert_allclose(knocked.attention[other], clean.attention[other], atol=TOL)


def test_knocking_out_every_key_of_a_row_never_attends_to_the_future(engine):
    """Query 1 sees keys 0 and 1; knocking out both must not spread its attention over future keys."""
    stack = [AttentionKnockout(1, 0, 1, 0), AttentionKnockout(1, 0, 1, 1)]
    try:
        result = engine.run(PROMPT, stack, views=Views(attention=("L1.H0",)))
    except InterventionError as exc:  # refusing is fine, if it names the knockout
        assert "knockout L1.H0 1->" in str(exc)
    else:
        pattern = result.attention["L1.H0"]  # [query, key]
        assert np.all(np.triu(pattern, 1) == 0), pattern[1]
    assert count_hooks(engine.model) == 0


def test_neuron_clamp_sets_the_down_projection_input(engine, plain):
    layer, neuron, value = 1, 5, 3.25
    n_pos = token_ids(PROMPT).shape[1]
    clean_in = plain.activations(PROMPT)["down_in"][layer]  # [pos, d_mlp]
    down = _get(_get(engine.model, LAYOUTS[plain.family].layers)[layer], LAYOUTS[plain.family].down)
    seen: dict[str, torch.Tensor] = {}
    # a forward hook sees the arguments as the pre-hooks left them
    handle = down.register_forward_hook(lambda m, a, out: seen.__setitem__("x", _seq(a[0], n_pos)[0].clone()))
    try:
        engine.run(PROMPT, [NeuronClamp(layer, neuron, value, positions=[2, 7])])
    finally:
        handle.remove()
    expected = clean_in.clone()
    expected[[2, 7], neuron] = value
    torch.testing.assert_close(seen["x"], expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("stack", [
    [SteeringVector(1, "up", 3.0)],
    [ActivationPatch("L1.resid_post", CORRUPT, positions=[-1])],
], ids=["steer", "patch-resid_post"])
def test_attribution_parts_still_add_up_under_residual_edits(engine, stack):
    """`Attribution` promises that its parts add up to `total` (here: the metric, no soft-capping involved);
    a residual-stream edit (steering, resid patch) must show up in some part, not vanish."""
    if engine.adapter.post_ln or engine.adapter.final_softcap:
        pytest.skip("attribution needs pre-norm; soft-capping makes total differ from the metric")
    metric = Metric("logit_diff", target=" Mary", foil=" John")
    result = engine.run(PROMPT, stack, metric=metric, views=Views(attribution=True), corrupted=CORRUPT)
    attribution = result.attribution
    assert abs(attribution.total - result.metric) < 1e-4
    assert abs(attribution.parts_sum() - attribution.total) < 1e-4, (attribution.parts_sum(), attribution.total)


@pytest.mark.parametrize("stack", [
    [ComponentAblation(1, "attn", "zero")],
    [ComponentAblation(2, "attn", "mean"), HeadAblation(2, 1)],
    [ActivationPatch("L1.attn", CORRUPT)],
    [ActivationPatch("L2.attn", CORRUPT, positions=[-1]), HeadScale(2, 0, 3.0)],
    [ComponentAblation(0, "attn", "resample", positions=[3, 5])],  # not at the readout: heads keep their share
    [ComponentAblation(1, "mlp", "zero")],
    [ActivationPatch("L2.mlp", CORRUPT), NeuronClamp(2, 3, 5.0)],
], ids=["zero-attn", "mean-attn+head", "patch-attn", "patch-attn-last+scale", "attn-elsewhere", "zero-mlp",
        "patch-mlp+clamp"])
def test_attribution_under_whole_layer_edits(engine, stack):
    """An attention output replaced as a whole: its heads get 0 and the layer's actual write is its
    non-head term, so the parts still add up to the metric."""
    if engine.adapter.post_ln:
        pytest.skip("attribution needs pre-norm")
    metric = Metric("logit_diff", target=" Mary", foil=" John")
    result = engine.run(PROMPT, stack, metric=metric, views=Views(attribution=True), corrupted=CORRUPT)
    attribution = result.attribution
    assert abs(attribution.parts_sum() - attribution.total) < 1e-4, (attribution.parts_sum(), attribution.total)
    if not engine.adapter.final_softcap:
        assert abs(attribution.total - result.metric) < 1e-4
    whole = stack[0]
    layer = whole.layer if isinstance(whole, ComponentAblation) else parse_address(whole.address).layer
    covers_readout = whole.positions is None or -1 in whole.positions
    if "attn" in whole.label and covers_readout:
        assert np.all(attribution.heads[layer] == 0.0)
    elif "attn" in whole.label:
        assert np.any(attribution.heads[layer] != 0.0)


def test_attribution_adds_up_under_random_stacks_of_every_kind(engine, plain):
    if engine.adapter.post_ln:
        pytest.skip("attribution needs pre-norm")
    rng = random.Random(f"attribution-{plain.family}")
    n_pos = token_ids(PROMPT).shape[1]
    metric = Metric("logit_diff", target=" Mary", foil=" John")
    kinds = set()
    for _ in range(32):
        stack = random_stack(rng, plain.n_layers, plain.n_heads, plain.d_mlp, n_pos)
        kinds.update(type(iv) for iv in stack if iv.enabled)
        result = engine.run(PROMPT, stack, metric=metric, views=Views(attribution=True), corrupted=CORRUPT)
        attribution = result.attribution
        labels = [iv.label for iv in stack]
        assert abs(attribution.parts_sum() - attribution.total) < 1e-4, (labels, attribution.parts_sum(),
                                                                         attribution.total)
        if not engine.adapter.final_softcap:  # soft-capping: parts add up to the logit diff before the cap
            assert abs(attribution.total - result.metric) < 1e-4, (labels, attribution.total, result.metric)
    assert kinds == set(INTERVENTION_TYPES)


# ---------------------------------------------------------------- bad input


def _bad_cases(engine: Engine) -> list[tuple[Intervention, str | None]]:
    n_layers, n_heads = engine.info.n_layers, engine.info.n_heads
    return [
        (HeadAblation(n_layers, 0), None),
        (HeadAblation(-1, 0), None),
        (HeadScale(0, n_heads, 2.0), None),
        (HeadAblation(1, 1, positions=[14]), None),
        (HeadAblation(1, 1, positions=[-15]), None),
        (ComponentAblation(n_layers + 4, "mlp"), None),
        (ActivationPatch(f"L{n_layers}.resid_pre", CORRUPT), None),
        (ActivationPatch("L0.H9", CORRUPT), None),
        (ActivationPatch("L1.attn", CORRUPT, positions=[20]), None),
        (ActivationPatch("L1.resid_pre", OTHER), None),  # 10 tokens vs 14, no positions
        (ActivationPatch("L1.H0", OTHER, positions=[12]), None),  # inside this prompt, outside the source
        (SteeringVector(1, "missing", 1.0), None),
        (SteeringVector(n_layers, "up", 1.0), None),
        (SteeringVector(1, "up", 1.0, positions=(30,)), None),
        (AttentionKnockout(1, 0, 3, 5), None),  # a future key
        (AttentionKnockout(1, 0, 20, 1), None),
        (AttentionKnockout(1, n_heads, 3, 1), None),
        (NeuronClamp(1, 10_000, 1.0), None),
        (NeuronClamp(n_layers, 0, 1.0), None),
        (HeadAblation(1, 1, "resample"), None),  # no corrupted prompt
        (ComponentAblation(1, "attn", "resample"), None),
        (HeadAblation(1, 1, "resample"), OTHER),  # corrupted prompt of another length
    ]


def test_bad_input_names_the_intervention_and_the_engine_stays_usable(engine, plain):
    good = [HeadAblation(1, 1), SteeringVector(2, "up", 1.5, "last")]
    before = engine.run(PROMPT, good, views=Views(logprobs=True))
    for bad, corrupted in _bad_cases(engine):
        for stack in ([bad], [good[0], bad]):
            with pytest.raises(InterventionError) as info:
                engine.run(PROMPT, stack, corrupted=corrupted)
            message = str(info.value)
            assert bad.label in message, message
            assert "\n" not in message
            assert count_hooks(engine.model) == 0
        after = engine.run(PROMPT, good, views=Views(logprobs=True))
        np.testing.assert_array_equal(after.logits, before.logits)
        np.testing.assert_array_equal(after.token_logprobs, before.token_logprobs)
    # a disabled bad intervention is not an error
    engine.run(PROMPT, [HeadAblation(99, 0).with_enabled(False)])
    assert_matches(before, plain.intervention_logits(PROMPT, good, None, engine.vectors, REFERENCE_SET))


def test_steering_vector_of_the_wrong_width_is_refused(engine):
    d_model = engine.info.d_model
    for width in (d_model - 1, d_model + 1, 1):
        with pytest.raises(InterventionError, match="width"):
            engine.add_vector(f"wide{width}", np.ones(width))
        assert f"wide{width}" not in engine.vectors
    with pytest.raises(InterventionError):
        engine.add_vector("nan", np.full(d_model, np.nan))
    assert "nan" not in engine.vectors
    # a vector that slipped into the table with the wrong width is caught by the run, by label
    engine.vectors["sneaky"] = np.ones(d_model + 3, dtype=np.float32)
    try:
        with pytest.raises(InterventionError, match="steer L1 sneaky"):
            engine.run(PROMPT, [SteeringVector(1, "sneaky", 1.0)])
    finally:
        del engine.vectors["sneaky"]
    assert count_hooks(engine.model) == 0


# ---------------------------------------------------------------- JSON


def _one_of_each() -> list[Intervention]:
    return [
        HeadAblation(3, 1), HeadAblation(2, 0, "mean", positions=[1, -1]),
        HeadAblation(0, 2, "resample", enabled=False),
        HeadScale(1, 3, 0.25), HeadScale(1, 3, -2, positions=4),
        ComponentAblation(2, "mlp", "mean"), ComponentAblation(0, "attn", "resample", positions=[0, 5]),
        ActivationPatch("L2.H3", CORRUPT), ActivationPatch("embed", "x", positions=[0]),
        ActivationPatch("L1.resid_post", OTHER, positions=(2, 3)),
        SteeringVector(1, "up", 4.5), SteeringVector(2, "down", -1, "last"),
        SteeringVector(0, "v", 1, (1, 2)),
        AttentionKnockout(1, 2, 9, 1), AttentionKnockout(0, 0, 3, 3, enabled=False),
        NeuronClamp(2, 17, -3.5), NeuronClamp(0, 1, 0, positions=[1]),
        HeadInputPatch(2, 1, "k", CORRUPT, group=2), HeadInputPatch(1, 0, "q", OTHER, positions=[1, -1]),
    ]


def test_every_intervention_type_has_one_compile_function():
    from mechscope.engine.edits import COMPILERS
    from mechscope.engine.interventions import FEATURE_INTERVENTION_TYPES

    assert set(COMPILERS) == set(INTERVENTION_TYPES) | set(FEATURE_INTERVENTION_TYPES)


def test_every_intervention_type_round_trips_through_json():
    interventions = _one_of_each()
    assert {type(iv) for iv in interventions} == set(INTERVENTION_TYPES)
    for iv in interventions:
        text = json.dumps(iv.to_dict())
        back = Intervention.from_dict(json.loads(text))
        assert back == iv and type(back) is type(iv)
        assert back.label == iv.label and back.enabled == iv.enabled
        assert back.with_enabled(not iv.enabled).enabled is (not iv.enabled)
        assert json.loads(text)["kind"] == iv.kind


@pytest.mark.parametrize("data", [
    None, [], "head_ablation", {"layer": 1, "head": 2},
    {"kind": "nope", "layer": 1},
    {"kind": "head_ablation", "layer": 1},  # missing head
    {"kind": "head_ablation", "layer": 1, "head": 2, "colour": "red"},
    {"kind": "head_ablation", "layer": "1", "head": 2},
    {"kind": "head_ablation", "layer": 1, "head": True},
    {"kind": "head_ablation", "layer": 1, "head": 2, "mode": "melt"},
    {"kind": "head_ablation", "layer": 1, "head": 2, "positions": ["a"]},
    {"kind": "head_scale", "layer": 1, "head": 2, "factor": "big"},
    {"kind": "component_ablation", "layer": 1, "component": "ffn"},
    {"kind": "activation_patch", "address": "L1.X9", "source_prompt": "a"},
    {"kind": "activation_patch", "address": "L1.H2", "source_prompt": 5},
    {"kind": "steering_vector", "layer": 1.5, "vector_id": "v"},
    {"kind": "attention_knockout", "layer": 1, "head": 1, "query_pos": 3},
    {"kind": "neuron_clamp", "layer": 1, "neuron": 2, "value": "x"},
])
def test_from_dict_rejects_malformed_input(data):
    with pytest.raises(ValueError):
        Intervention.from_dict(data)


def test_sae_labels_name_the_folder_and_elide_the_middle_of_long_names():
    from mechscope.engine.interventions import FeatureAblation, sae_label

    trained = "/root/.cache/mechscope/features/b179c9523d0e-L15.resid_post-w4096-k32-006718e4-600000-s0/"
    assert sae_label(trained) == "b179c9523d0e-…18e4-600000-s0" and len(sae_label(trained)) == 28
    assert sae_label("C:\\saes\\res-jb") == "res-jb" and sae_label("gpt2-small-res-jb") == "gpt2-small-res-jb"
    assert FeatureAblation("L15.resid_post", trained, 1759, positions=(9,)).label == (
        "ablate L15.resid_post b179c9523d0e-…18e4-600000-s0#1759")
