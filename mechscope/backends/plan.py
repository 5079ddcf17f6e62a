"""Interventions compiled into a trace plan: plain tuples per layer that `traces.run_trace` applies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast, overload

import torch

from mechscope.engine.addresses import parse_address
from mechscope.engine.edits import Edits
from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    Intervention,
    NeuronClamp,
    SteeringVector,
)

if TYPE_CHECKING:
    from mechscope.backends.nnsight_engine import NNsightEngine


@overload
def resolve_positions(positions: None, n_pos: int, what: str) -> None: ...


@overload
def resolve_positions(positions: Iterable[int], n_pos: int, what: str) -> list[int]: ...


def resolve_positions(positions: Iterable[int] | None, n_pos: int, what: str) -> list[int] | None:
    """Positions as non-negative ints (None stays None = every position); InterventionError if outside."""
    if positions is None:
        return None
    out = []
    for p in positions:
        if not -n_pos <= p < n_pos:
            raise InterventionError(f"{what}: position {p} is outside the prompt ({n_pos} tokens)")
        out.append(p % n_pos)
    return out


def check_head(engine: NNsightEngine, layer: int, head: int | None, what: str) -> None:
    a = engine.adapter
    if not 0 <= layer < a.n_layers:
        raise InterventionError(f"{what}: layer {layer} is out of range 0..{a.n_layers - 1}")
    if head is not None and not 0 <= head < a.n_heads:
        raise InterventionError(f"{what}: head {head} is out of range 0..{a.n_heads - 1}")


class Plan:
    """Edits per layer (see `traces`), built from interventions against one prompt's length."""

    def __init__(self) -> None:
        self.layers: dict[int, dict[str, list]] = {}
        # Which attention / MLP outputs an edit replaced as a whole, as the native engine records them
        # for attribution (`Edits.whole_layer_replaced`).
        self.whole = Edits(start=0)

    def add(self, layer: int, site: str, edit: tuple) -> None:
        self.layers.setdefault(layer, {}).setdefault(site, []).append(edit)

    @property
    def empty(self) -> bool:
        return not self.layers

    @property
    def knockouts(self) -> bool:
        return any("knock" in sites for sites in self.layers.values())

    def for_row(self, row: int) -> dict:
        return {"row": row, "layers": self.layers}


def compile_plan(engine: NNsightEngine, interventions: list[Intervention], n_pos: int,
                 corrupted: str | None, dry_run: bool = False) -> Plan:
    """The plan applying `interventions` to a prompt of `n_pos` tokens; InterventionError naming the
    first that does not fit. A dry run checks without running the model for sources or means."""
    plan = Plan()
    for iv in interventions:
        what = iv.label
        try:
            _add(engine, plan, iv, n_pos, corrupted, what, dry_run)
        except (PromptError, ValueError) as exc:
            raise InterventionError(f"{what}: {exc}") from None
    return plan


def _source(engine: NNsightEngine, prompt: str, n_pos: int, positions, what: str,
            dry_run: bool) -> tuple[dict[str, Any] | None, list[int]]:
    """Source activations (None in a dry run) and the source positions to read."""
    ids, _ = engine._prompt_ids(prompt)
    if positions is None and ids.shape[1] != n_pos:
        raise InterventionError(
            f"{what}: the source prompt has {ids.shape[1]} tokens and this prompt {n_pos}; "
            "give explicit positions to patch prompts of different lengths")
    if positions is None:
        positions = range(n_pos)
    src_positions = resolve_positions(positions, ids.shape[1], what + " (source)")
    return (None if dry_run else engine._acts(ids)), src_positions


def _add(engine: NNsightEngine, plan: Plan, iv: Intervention, n_pos: int, corrupted: str | None,  # noqa: C901  (30) one branch per intervention type; split it into one function per type
         what: str, dry_run: bool) -> None:
    a = engine.adapter
    n_heads, d_head = a.n_heads, a.d_head
    if isinstance(iv, (HeadAblation, HeadScale)):
        check_head(engine, iv.layer, iv.head, what)
        positions = resolve_positions(iv.positions, n_pos, what)
        if isinstance(iv, HeadScale):
            if not dry_run:
                plan.add(iv.layer, "head", ("scale", iv.head, positions, iv.factor))
            return
        if iv.mode == "resample":
            if not corrupted:
                raise InterventionError(f"{what}: resample ablation needs a corrupted prompt")
            acts, src_pos = _source(engine, corrupted, n_pos, iv.positions, what, dry_run)
            if dry_run:
                return
            assert acts is not None  # not a dry run
            positions = positions if positions is not None else list(range(n_pos))
            z = acts["z"][iv.layer][0, src_pos]  # [n, head*d_head]
            plan.add(iv.layer, "head", ("set", iv.head, positions, z.view(-1, n_heads, d_head)[:, iv.head]))
        elif not dry_run:
            value = (engine._means()["z"][iv.layer].view(n_heads, d_head)[iv.head] if iv.mode == "mean"
                     else 0.0)
            plan.add(iv.layer, "head", ("set", iv.head, positions, value))
    elif isinstance(iv, ComponentAblation):
        check_head(engine, iv.layer, None, what)
        positions = resolve_positions(iv.positions, n_pos, what)
        site = "attn_out" if iv.component == "attn" else "mlp_out"
        key = "attn" if iv.component == "attn" else "mlp"
        if iv.mode == "resample":
            if not corrupted:
                raise InterventionError(f"{what}: resample ablation needs a corrupted prompt")
            acts, src_pos = _source(engine, corrupted, n_pos, iv.positions, what, dry_run)
            if dry_run:
                return
            assert acts is not None  # not a dry run
            positions = positions if positions is not None else list(range(n_pos))
            plan.add(iv.layer, key, (positions, acts[site][iv.layer][0, src_pos]))
            plan.whole.replace_whole(iv.layer, key, positions)
        elif not dry_run:
            value = engine._means()[site][iv.layer] if iv.mode == "mean" else 0.0
            plan.add(iv.layer, key, (positions, value))
            plan.whole.replace_whole(iv.layer, key, positions)
    elif isinstance(iv, ActivationPatch):
        addr = parse_address(iv.address)
        check_head(engine, addr.layer, addr.head, what)
        positions = resolve_positions(iv.positions, n_pos, what)
        acts, src_pos = _source(engine, iv.source_prompt, n_pos, iv.positions, what, dry_run)
        if dry_run:
            return
        assert acts is not None  # not a dry run
        positions = positions if positions is not None else list(range(n_pos))
        if addr.site == "head":
            z = acts["z"][addr.layer][0, src_pos].view(-1, n_heads, d_head)[:, addr.head]
            plan.add(addr.layer, "head", ("set", addr.head, positions, z))
        elif addr.site in ("attn", "mlp"):
            site = "attn_out" if addr.site == "attn" else "mlp_out"
            plan.add(addr.layer, addr.site, (positions, acts[site][addr.layer][0, src_pos]))
            plan.whole.replace_whole(addr.layer, addr.site, positions)
        elif addr.site in ("resid_pre", "embed"):
            plan.add(addr.layer, "pre", ("set", positions, acts["resid_pre"][addr.layer][0, src_pos]))
        else:
            plan.add(addr.layer, "post", ("set", positions, acts["resid_post"][addr.layer][0, src_pos]))
    elif isinstance(iv, SteeringVector):
        check_head(engine, iv.layer, None, what)
        if iv.vector_id not in engine.vectors:
            known = ", ".join(sorted(engine.vectors)) or "none"
            raise InterventionError(f"{what}: no steering vector named {iv.vector_id!r} (known: {known})")
        vector = engine.vectors[iv.vector_id]
        if vector.shape[0] != a.d_model:
            raise InterventionError(f"{what}: vector width {vector.shape[0]} != d_model {a.d_model}")
        # "all" / "last" are the only strings SteeringVector.__post_init__ keeps
        steer_at = iv.positions if isinstance(iv.positions, str) else resolve_positions(iv.positions, n_pos, what)
        if not dry_run:
            delta = torch.as_tensor(vector, dtype=engine.dtype) * iv.coeff  # [d_model], moved by the trace
            plan.add(iv.layer, "pre", ("add", steer_at, delta))
    elif isinstance(iv, AttentionKnockout):
        check_head(engine, iv.layer, iv.head, what)
        q, k = resolve_positions((iv.query_pos, iv.key_pos), n_pos, what)
        if k > q:
            raise InterventionError(f"{what}: key position {k} is after query position {q} (causal)")
        if q == 0:
            raise InterventionError(f"{what}: the first token attends only to itself; it cannot be knocked out")
        row = {edge[2] for edge in plan.layers.get(iv.layer, {}).get("knock", []) if edge[:2] == (iv.head, q)}
        if len(row | {k}) == q + 1:
            raise InterventionError(
                f"{what}: this would knock out every key query {q} can attend to; keep at least one")
        plan.add(iv.layer, "knock", (iv.head, q, k))
    elif isinstance(iv, NeuronClamp):
        check_head(engine, iv.layer, None, what)
        down = a.layer_module(iv.layer, "mlp_down")
        down_weight = cast(torch.Tensor, down.weight)
        width = down_weight.shape[0] if type(down).__name__ == "Conv1D" else down_weight.shape[1]
        if not 0 <= iv.neuron < width:
            raise InterventionError(f"{what}: neuron {iv.neuron} is out of range 0..{width - 1}")
        positions = resolve_positions(iv.positions, n_pos, what)
        if not dry_run:
            plan.add(iv.layer, "down", (iv.neuron, positions, iv.value))
    else:
        raise InterventionError(f"{what}: unsupported intervention type {type(iv).__name__}")
