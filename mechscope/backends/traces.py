"""nnsight trace bodies: plain torch over a plan of edits, shipped by value to NDIF (no mechscope imports)."""

from __future__ import annotations

from typing import Any

import nnsight
import torch

# A plan is plain data (ints, strings, lists, tensors) so a remote request carries it as is:
#   {"row": the batch row edits apply to (the others run clean),
#    "layers": {layer: {"pre": [...], "knock": [...], "head": [...], "attn": [...], "down": [...],
#                       "mlp": [...], "post": [...]}}}
# Each site edit is a tuple (op, index, positions, value) (see `_apply`); a knockout is (head, query,
# key). `mechscope.backends.plan` turns the compiled interventions into these tuples.


def at(root: Any, path: str) -> Any:
    """The envoy at a dotted attribute path ("model.layers", "self_attn.o_proj")."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _seq(x: torch.Tensor, n_pos: int) -> torch.Tensor:
    """[batch*pos, d] -> [batch, pos, d] (OPT's MLP sees flattened tokens); 3-d input unchanged."""
    return x.view(-1, n_pos, x.shape[-1]) if x.dim() == 2 else x


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _on(value: Any, ref: torch.Tensor) -> Any:
    """A plan's tensor on `ref`'s device and dtype (plans are built on the client, often the CPU)."""
    return value.to(ref.device, ref.dtype) if isinstance(value, torch.Tensor) else value


def _apply(x: torch.Tensor, row: int, edit: tuple) -> None:
    """One site edit (op, index, positions, value) on batch row `row` of `x` [batch, pos, ...], in place:
    op set / scale / add; index a head or neuron (None: the whole vector); positions a list of ints,
    "last" or None (every position); value a number or a tensor broadcast to [1, positions, ...]."""
    op, index, positions, value = edit
    dst = slice(None) if positions is None else -1 if positions == "last" else positions
    at = (slice(row, row + 1), dst) if index is None else (slice(row, row + 1), dst, index)
    value = _on(value, x)
    if op == "set":
        x[at] = value
    elif op == "scale":
        x[at] = x[at] * value
    else:
        x[at] = x[at] + value


def _head_edits(x: torch.Tensor, edits: list, row: int, n_heads: int, n_pos: int) -> None:
    z = _seq(x, n_pos)
    z = z.view(*z.shape[:-1], n_heads, -1)  # [batch, pos, head, d_head]
    for edit in edits:
        _apply(z, row, edit)


def _resid_edit(hidden: torch.Tensor, edits: list, row: int) -> torch.Tensor:
    """A copy of `hidden` [batch, pos, d_model] with steering and residual patches applied to `row`."""
    new = hidden.clone()
    for edit in edits:
        _apply(new, row, edit)
    return new


def _decode(lm: Any, paths: dict, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, anything after it, unembedding and soft-capping: [..., d_model] -> float [..., vocab]."""
    out = at(lm, paths["final_norm"])(hidden)
    for path in paths["post_final"]:
        out = at(lm, path)(out)
    logits = at(lm, paths["unembed"])(out).float()
    cap = paths["softcap"]
    return torch.tanh(logits / cap) * cap if cap else logits


def _capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = logits.float()
    return torch.tanh(logits / cap) * cap if cap else logits


def run_trace(lm: Any, paths: dict, ids: torch.Tensor, plan: dict, want: dict, remote: Any) -> dict:  # noqa: C901  (37) one nnsight trace must hold every step; split it into per-step helpers
    """One forward of `ids` [batch, pos] applying `plan` to row plan["row"]; returns what `want` asks.

    want: readout (position), lens_k (0 = no lens), lens_target (id or -1), dla, stats, logprobs,
    heads ({layer: [head, ...]} patterns), sinks.
    """
    n_layers, n_heads, n_pos = paths["n_layers"], paths["n_heads"], ids.shape[1]
    row, p = plan["row"], want["readout"] % n_pos
    edits_by_layer = plan["layers"]
    out: dict = {}  # filled inside the trace, then saved
    # Unembed only from the readout on (every position for per-token log-probs): the vocabulary
    # projection of every row and position is most of a wide-vocabulary model's cost.
    keep = 0 if want["logprobs"] else n_pos - p
    with lm.trace(ids, remote=remote, logits_to_keep=keep):
        layers = at(lm, paths["layers"])
        resid: list = []
        z_read: list = []
        attn_raw: list = []
        attn_read: list = []
        mlp_read: list = []
        deltas: dict = {}
        patterns: dict = {}
        sinks: list = []
        norms: list = []
        tops: list = []
        medians: list = []
        for layer in range(n_layers):
            edits = edits_by_layer.get(layer, {})
            block = layers[layer]
            if layer == 0 and want["dla"]:
                embed = block.input[row, p].clone()
            if edits.get("pre"):
                hidden = block.input
                new = _resid_edit(hidden, edits["pre"], row)
                deltas.setdefault(layer, []).append((new - hidden)[row, p])
                block.input = new
            heads = want["heads"].get(layer, [])
            if heads or want["sinks"] or edits.get("knock"):
                call = getattr(at(block, paths["attn"]).source, paths["attn_call"])
                if edits.get("knock"):
                    args, kwargs = call.inputs
                    mask = args[4]  # [batch, 1, query, key]
                    mask = mask.expand(mask.shape[0], n_heads, mask.shape[2], mask.shape[3]).clone()
                    low = torch.finfo(mask.dtype).min
                    for head, q_pos, k_pos in edits["knock"]:
                        mask[row, head, q_pos, k_pos] = low
                    call.inputs = ((*args[:4], mask, *args[5:]), kwargs)
                if heads or want["sinks"]:
                    weights = call.output[1]  # [batch, head, query, key]
                    for head in heads:
                        patterns[(layer, head)] = weights[row, head].float().clone()
                    if want["sinks"]:
                        if n_pos > 1:
                            sinks.append(weights[row, :, 1:, 0].float().mean(dim=-1))
                        else:
                            sinks.append(torch.zeros(n_heads))
            if edits.get("head") or want["dla"]:
                o_proj = at(block, paths["o_proj"])
                x = o_proj.input  # [batch, pos, head*d_head]
                if edits.get("head"):
                    _head_edits(x, edits["head"], row, n_heads, n_pos)
                if want["dla"]:
                    z_read.append(_seq(x, n_pos)[row, p].clone())
            if edits.get("attn") or want["dla"]:
                attn = at(block, paths["attn"])
                if paths["attn_out"] == paths["attn"]:
                    value = _seq(_first(attn.output), n_pos)
                    for edit in edits.get("attn", []):
                        _apply(value, row, edit)
                    if want["dla"]:
                        attn_raw.append(value[row, p].clone())
                        attn_read.append(value[row, p].clone())
                else:
                    if want["dla"]:
                        attn_raw.append(_seq(_first(attn.output), n_pos)[row, p].clone())
                    value = _seq(_first(at(block, paths["attn_out"]).output), n_pos)
                    for edit in edits.get("attn", []):
                        _apply(value, row, edit)
                    if want["dla"]:
                        attn_read.append(value[row, p].clone())
            if edits.get("down"):
                x = _seq(at(block, paths["mlp_down"]).input, n_pos)  # [batch, pos, d_mlp]
                for edit in edits["down"]:
                    _apply(x, row, edit)
            if edits.get("mlp") or want["dla"]:
                value = _seq(_first(at(block, paths["mlp_out"]).output), n_pos)
                for edit in edits.get("mlp", []):
                    _apply(value, row, edit)
                if want["dla"]:
                    mlp_read.append(value[row, p].clone())
            if edits.get("post") or want["lens_k"] or want["stats"] or want["dla"]:
                output = block.output
                hidden = _first(output)
                if edits.get("post"):
                    new = _resid_edit(hidden, edits["post"], row)
                    deltas.setdefault(layer, []).append((new - hidden)[row, p])
                    block.output = (new, *output[1:]) if isinstance(output, tuple) else new
                    hidden = new
                if want["lens_k"] or (want["dla"] and layer == n_layers - 1):
                    resid.append(hidden[row, p].clone())
                if want["stats"]:
                    flat = hidden[row].float()  # [pos, d_model]
                    norms.append(flat.norm(dim=-1))
                    values, index = flat.abs().flatten().topk(min(8, flat.numel()))
                    tops.append((flat.flatten()[index], index))
                    medians.append(flat.abs().median())
        logits = at(lm, paths["unembed"]).output  # [batch, kept pos, vocab]
        out["logits"] = _capped(logits[:, p - n_pos], paths["softcap"])
        if want["logprobs"]:
            log_probs = torch.log_softmax(_capped(logits[row], paths["softcap"]), dim=-1)
            out["logprobs"] = log_probs[:-1].gather(-1, ids[row, 1:, None].to(log_probs.device))[:, 0]
        if want["lens_k"]:
            lens = _decode(lm, paths, torch.stack(resid[:n_layers]))  # [layer, vocab]
            probs = torch.softmax(lens, dim=-1)
            top_probs, top_ids = probs.topk(want["lens_k"], dim=-1)
            out["lens_ids"] = top_ids
            out["lens_probs"] = top_probs
            target = want["lens_target"]
            if target >= 0:
                out["lens_rank"] = (lens > lens[:, target : target + 1]).sum(-1)
                out["lens_target_prob"] = probs[:, target]
        if want["dla"]:
            out["dla"] = {"z": z_read, "attn_raw": attn_raw, "attn_out": attn_read,
                          "mlp_out": mlp_read, "final": resid[-1], "embed": embed, "deltas": deltas}
        if want["stats"]:
            out["stats"] = {"norms": norms, "tops": tops, "medians": medians}
        if patterns:
            out["patterns"] = patterns
        if want["sinks"]:
            out["sinks"] = sinks
        # Only variables bound to saved values come back from a remote run (the server fills its
        # own copy of `out`), so the filled dict is saved and rebound.
        out = nnsight.save(dict(out))
    return out


def acts_trace(lm: Any, paths: dict, ids: torch.Tensor, remote: Any) -> dict:
    """Every layer's head outputs, attention and MLP writes and residuals over the whole sequence
    of `ids` [1, pos] (patch and resample sources, reference means, steering vectors)."""
    n_layers, n_pos = paths["n_layers"], ids.shape[1]
    with lm.trace(ids, remote=remote, logits_to_keep=1):
        layers = at(lm, paths["layers"])
        acts: dict = {"z": [], "attn_out": [], "mlp_out": [], "resid_pre": [], "resid_post": []}
        for layer in range(n_layers):
            block = layers[layer]
            acts["resid_pre"].append(block.input.clone())
            acts["z"].append(_seq(at(block, paths["o_proj"]).input, n_pos).clone())
            acts["attn_out"].append(_seq(_first(at(block, paths["attn_out"]).output), n_pos).clone())
            acts["mlp_out"].append(_seq(_first(at(block, paths["mlp_out"]).output), n_pos).clone())
            acts["resid_post"].append(_first(block.output).clone())
        acts = nnsight.save(acts)
    return acts


def _metric(logits: torch.Tensor, metric: tuple) -> torch.Tensor:
    """[row, vocab] float logits -> [row] metric values; metric is (kind, target id, foil id)."""
    kind, target, foil = metric
    if kind == "logit_diff":
        return logits[:, target] - logits[:, foil]
    log_p = logits[:, target] - torch.logsumexp(logits, dim=-1)
    return log_p.exp() if kind == "prob" else -log_p


def sweep_trace(lm: Any, paths: dict, ids: torch.Tensor, kind: str, layers_: list[int],
                readout: int, metric: tuple, remote: Any) -> torch.Tensor:
    """One batched forward: row 0 the base prompt, row 1 the source, then one row per variant, each
    patching one head (kind "head": layer-major, every head of each of `layers_`) or one residual
    position (kind "resid": the residual entering the layer). Returns metric per row [row]."""
    n_heads, n_pos = paths["n_heads"], ids.shape[1]
    width = n_heads if kind == "head" else n_pos
    with lm.trace(ids, remote=remote, logits_to_keep=n_pos - readout):
        blocks = at(lm, paths["layers"])
        for index, layer in enumerate(layers_):
            first = 2 + index * width
            variants = torch.arange(width)
            rows = variants + first
            if kind == "head":
                x = _seq(at(blocks[layer], paths["o_proj"]).input, n_pos)
                z = x.view(*x.shape[:-1], n_heads, -1)  # [row, pos, head, d_head]
                z[rows, :, variants] = z[1][:, variants].transpose(0, 1)  # row r patches head r
            else:
                hidden = blocks[layer].input.clone()  # [row, pos, d_model]
                hidden[rows, variants] = hidden[1, variants]  # row r patches position r
                blocks[layer].input = hidden
        logits = _capped(at(lm, paths["unembed"]).output[:, 0], paths["softcap"])  # the readout
        values = nnsight.save(_metric(logits, metric))
    return values


def atp_trace(lm: Any, paths: dict, ids: torch.Tensor, readout: int, metric: tuple,
              remote: Any) -> dict:
    """Attribution patching on rows [base, source]: (z_source - z_base) . d metric(base) / d z_base,
    summed over positions and each head's dimensions, per layer and head; and both rows' metrics."""
    n_layers, n_heads, n_pos = paths["n_layers"], paths["n_heads"], ids.shape[1]
    with lm.trace(ids, remote=remote, logits_to_keep=n_pos - readout):
        blocks = at(lm, paths["layers"])
        leaves = []
        for layer in range(n_layers):
            o_proj = at(blocks[layer], paths["o_proj"])
            leaf = o_proj.input.detach().requires_grad_(True)  # [row, pos, head*d_head]
            leaves.append(leaf)
            o_proj.input = leaf
        logits = _capped(at(lm, paths["unembed"]).output[:, 0], paths["softcap"])  # the readout
        metrics = _metric(logits, metric)  # [row]
        grads = torch.autograd.grad(metrics[0], leaves)
        scores = []
        for leaf, grad in zip(leaves, grads):
            z = _seq(leaf.detach(), n_pos)
            delta = (z[1] - z[0]) * _seq(grad, n_pos)[0]  # [pos, head*d_head]
            scores.append(delta.view(n_pos, n_heads, -1).sum(dim=(0, 2)))
        result = nnsight.save({"scores": torch.stack(scores), "metrics": metrics.detach()})
    return result
