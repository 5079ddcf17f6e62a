"""Views read off a pass's captures: logit lens, direct logit attribution, activation statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from mechscope.engine.errors import MechscopeError
from mechscope.engine.norms import FrozenNorm
from mechscope.engine.placement import execution_device, loaded
from mechscope.engine.results import ActivationStats, Attribution, LogitLens, MetricInfo

if TYPE_CHECKING:
    from mechscope.engine.adapters import Adapter
    from mechscope.engine.captures import Captures
    from mechscope.engine.edits import Edits
    from mechscope.engine.passes import CleanPass, Passes


class TokenModel(Protocol):
    """What attribution and statistics read besides captures: the model's adapter and its tokens
    (`Passes`, or another backend running the same model)."""

    adapter: Adapter

    def decode_token(self, token_id: int) -> str: ...


def logit_lens(passes: Passes, captures: Captures, readout: int, info: MetricInfo | None, k: int,
               clean_rows: LogitLens | None = None, first_layer: int = 0) -> LogitLens:
    """Decode every layer's residual at `readout`; rows below `first_layer` are taken from
    `clean_rows` (the same prompt's lens without interventions), whose residuals are unchanged."""
    first_layer = first_layer if clean_rows is not None else 0
    resid = torch.stack([captures.resid_post[layer].to(passes.device)
                         for layer in range(first_layer, passes.adapter.n_layers)])  # [layer, d_model]
    logits = passes.logits(resid)  # [layer, vocab]
    probs = torch.softmax(logits, dim=-1)
    top_probs, top_ids = probs.topk(k, dim=-1)
    target_rank = target_prob = None
    if info is not None and info.target_ids:
        target_logit = logits[:, info.target_id : info.target_id + 1]
        target_rank = (logits > target_logit).sum(-1).cpu().numpy()
        target_prob = probs[:, info.target_id].cpu().numpy()
    lens = LogitLens(
        position=readout,
        top_ids=top_ids.cpu().numpy(),
        top_tokens=[[passes.decode_token(int(i)) for i in row] for row in top_ids],
        top_probs=top_probs.cpu().numpy(),
        target_rank=target_rank,
        target_prob=target_prob,
    )
    if clean_rows is None or first_layer == 0:
        return lens

    def splice(below, above):
        return None if above is None else np.concatenate([below[:first_layer], above])

    return LogitLens(
        position=readout,
        top_ids=splice(clean_rows.top_ids, lens.top_ids),
        top_tokens=clean_rows.top_tokens[:first_layer] + lens.top_tokens,
        top_probs=splice(clean_rows.top_probs, lens.top_probs),
        target_rank=splice(clean_rows.target_rank, lens.target_rank),
        target_prob=splice(clean_rows.target_prob, lens.target_prob),
    )


def metric_direction(passes: TokenModel, info: MetricInfo | None, readout_logits: torch.Tensor) -> tuple[torch.Tensor, float, str]:
    """Metric direction in the unembedding's input space, the unembedding bias term, and a label."""
    w_u_loaded = loaded(passes.adapter.unembed, "weight")
    assert w_u_loaded is not None  # an unembedding always has a weight
    w_u = w_u_loaded.float()  # [vocab, d]
    bias = loaded(passes.adapter.unembed, "bias")
    if info is None or not info.target_ids:  # no target (or a kl metric without one): the top prediction
        target = int(readout_logits.argmax())
        foil = None
        label = f"logit({passes.decode_token(target)!r}) (top prediction)"
    else:
        target, foil = info.target_id, (info.foil_id if info.kind == "logit_diff" else None)
        label = (f"logit({info.target_pieces[0]!r}) - logit({info.foil_pieces[0]!r})" if foil is not None
                 else f"logit({info.target_pieces[0]!r})")
    direction = w_u[target] - (w_u[foil] if foil is not None else 0)
    bias_term = 0.0
    if bias is not None:
        bias_term = float(bias[target] - (bias[foil] if foil is not None else 0))
    return direction, bias_term, label


def read_through_final_norm(passes: TokenModel, direction: torch.Tensor, resid: torch.Tensor,
                            ) -> tuple[torch.Tensor, torch.Tensor, FrozenNorm, torch.Tensor]:
    """A direction in the unembedding's input space [d_model] read before the final norm, whose scale
    is frozen at the residual `resid` [d_model]: returns `resid` as float on the norm's device, the
    direction at the norm's output (through the modules after it: OPT's project_out is linear
    without bias), the frozen norm, and `read` [d_model], with c @ read the direct effect of a
    residual component c. Every part is read along this one vector: dla(c) = linear(c) @ direction
    = c @ read, so each head costs a dot product instead of a [head, d_model] image."""
    a = passes.adapter
    resid = resid.float().to(execution_device(a.final_norm))  # [d_model]
    for module in reversed(a.post_final):
        module_weight = loaded(module, "weight")
        assert module_weight is not None  # post-final modules are linear
        weight = module_weight.float()
        direction = weight.T @ direction.to(weight.device)
    direction = direction.to(resid.device)
    final_norm = FrozenNorm(a.final_norm, resid)
    return resid, direction, final_norm, final_norm.adjoint(direction)


def attribution(passes: Passes, captures: Captures, clean: CleanPass, final: torch.Tensor, readout: int,
                info: MetricInfo | None, edits: Edits | None, logits: torch.Tensor) -> Attribution:
    """Direct logit attribution of a pass: `final` [batch, pos, d_model] is its last residual,
    `clean` the prompt's clean pass (for the embeddings); see `direct_attribution`."""
    return direct_attribution(passes, captures, clean.calls[0].hidden[0, readout], final[0, readout],
                              readout, info, edits, logits)


def direct_attribution(passes: TokenModel, captures: Captures, embed: torch.Tensor, resid: torch.Tensor,
                       readout: int, info: MetricInfo | None, edits: Edits | None,
                       logits: torch.Tensor) -> Attribution:
    """Direct logit attribution of every head, attention bias, MLP, the embeddings and residual edits
    (see `Attribution` for the frozen-norm convention), from readout-position records: `embed`
    [d_model] the residual entering layer 0, `resid` [d_model] the last layer's output, `logits`
    [vocab] the run's, `captures` z / attn_raw / attn_out / mlp_out at `readout`.

    A layer whose attention output an edit replaced as a whole at `readout` wrote something no head
    computed: its heads get 0 and its actual write is the layer's non-head term (`attn_bias`)."""
    a = passes.adapter
    if a.post_ln:
        raise MechscopeError("direct logit attribution needs a pre-norm model (this one is post-LN)")
    direction, bias_term, label = metric_direction(passes, info, logits)
    resid, direction, final_norm, read = read_through_final_norm(passes, direction, resid)

    def dla(vectors: torch.Tensor) -> torch.Tensor:
        return vectors.float().to(read.device) @ read

    n_heads, d_head = a.n_heads, a.d_head
    heads = torch.zeros(a.n_layers, n_heads)
    attn_bias = torch.zeros(a.n_layers)
    mlp = torch.zeros(a.n_layers)
    for layer in range(a.n_layers):
        read_here = read.to(captures.mlp_out[layer].device)  # layers may sit on other devices
        mlp[layer] = captures.mlp_out[layer].float() @ read_here  # the MLP's actual write, edited or not
        if edits is not None and edits.whole_layer_replaced(layer, "attn", readout):
            attn_bias[layer] = float(captures.attn_out[layer].float() @ read_here)
            continue
        z = captures.z[layer].float().view(n_heads, d_head)  # [head, d_head]
        o_bias = a.o_bias(layer)
        post = a.attn_post_norm(layer)
        layer_read, bias_part = read_here, 0.0  # [d_model]
        if post is not None:  # Gemma2/3 norm the attention output before the residual add
            post_norm = FrozenNorm(post, captures.attn_raw[layer].float())
            layer_read = post_norm.adjoint(read_here)
            bias_part = float(post_norm.bias_vector() @ read_here)
        if o_bias is not None:
            bias_part += float(o_bias.float() @ layer_read)
        head_read = (a.o_weight(layer).float().T @ layer_read).view(n_heads, d_head)  # [head, d_head]
        heads[layer] = (z * head_read).sum(-1).cpu()
        attn_bias[layer] = bias_part
    embed_part = float(dla(embed))
    # Steering vectors and residual patches write the stream directly: one part per layer.
    resid_edits = torch.zeros(a.n_layers)
    for layer, deltas in (edits.resid_deltas if edits is not None else {}).items():
        for delta in deltas:
            resid_edits[layer] += float(dla(delta[0, readout]))
    final_bias = float(final_norm.bias_vector() @ direction) + bias_term
    total = float(final_norm(resid) @ direction) + bias_term
    return Attribution(position=readout, direction=label, heads=heads.numpy(),
                       attn_bias=attn_bias.numpy(), mlp=mlp.numpy(), embed=embed_part,
                       final_bias=final_bias, total=total, resid_edits=resid_edits.numpy())


def activation_stats(passes: TokenModel, captures: Captures) -> ActivationStats:
    n_layers = passes.adapter.n_layers
    norms = torch.stack([captures.norms[layer].cpu() for layer in range(n_layers)]).numpy()
    d_model = passes.adapter.d_model
    candidates = []
    for layer in range(n_layers):
        values, index = captures.top_acts[layer]
        for value, flat in zip(values.tolist(), index.tolist()):
            candidates.append((layer, flat // d_model, flat % d_model, float(value)))
    candidates.sort(key=lambda row: -abs(row[3]))
    median = float(np.median([captures.abs_median[layer] for layer in range(n_layers)]))
    return ActivationStats(resid_norm=norms, top=candidates[:20], median_abs=median)

