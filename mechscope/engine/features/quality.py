"""SAE quality as papers report it: FVE, L0, dead fraction, CE-loss recovered and KL on held-out text.

Position 0 of each chunk is left out everywhere (as in training): the SAE's reconstruction is
spliced in at positions 1.., and losses and KL are taken over the next-token predictions made at
positions 1..n-2. CE-loss recovered = (L_zero - L_sae) / (L_zero - L_clean), where L_zero has the
site's value set to zero at the same positions. A few tokens past position 0 still carry massive
activations (norms hundreds of times the median, e.g. 26,000 against 169 on the demo at L15); they
dominate the variance, so FVE is also given without them (`fve_typical`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from mechscope.engine.features.reading import logits_with_site, site_values
from mechscope.engine.features.results import MASSIVE_NORM, SaeQuality
from mechscope.engine.features.sae import FeatureError, SparseAutoencoder

QUALITY_FILE = "quality.json"  # `mechscope features eval` writes its figures beside the SAE
MAX_QUALITY_BYTES = 1 << 16


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-prediction losses [batch, pos-2] of positions 1..n-2 predicting tokens 2..n-1."""
    logprobs = torch.log_softmax(logits[:, 1:-1].float(), dim=-1)  # [batch, pos-2, vocab]
    return -logprobs.gather(-1, ids[:, 2:, None])[..., 0]


def evaluate(engine, sae: SparseAutoencoder, chunks: Iterator[list[int]], tokens: int,
             seqs_per_forward: int = 8, corpus: str = "") -> SaeQuality:
    """Quality of `sae` on chunks of token ids until about `tokens` site values have been measured."""
    passes = engine.passes
    sums = {"sse": 0.0, "sq": 0.0, "l0": 0.0, "ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl": 0.0,
            "sse_typical": 0.0, "sq_typical": 0.0}
    total = torch.zeros(sae.d_in, dtype=torch.float64)  # [d_in]
    total_typical = torch.zeros(sae.d_in, dtype=torch.float64)  # [d_in], over tokens without massive norms
    threshold: float | None = None
    n_typical = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)  # [d_sae]
    n_values = n_predictions = 0
    while n_values < tokens:
        group = list(itertools.islice(chunks, seqs_per_forward))
        if not group:
            break
        ids = torch.tensor(group, device=engine.device)
        if ids.shape[1] < 3:
            raise FeatureError("evaluation chunks need at least 3 tokens")
        with engine.lock, torch.no_grad():
            x = site_values(passes, ids, sae.site)[:, 1:].float()  # [batch, pos-1, d_in]
            acts = sae.encode(x)  # [batch, pos-1, d_sae]
            recon = sae.decode(acts).to(x.device)
            sums["sse"] += float((x - recon).double().pow(2).sum())
            sums["sq"] += float(x.double().pow(2).sum())
            total += x.double().sum((0, 1)).cpu()
            norms = x.norm(dim=-1)  # [batch, pos-1]
            if threshold is None:
                threshold = MASSIVE_NORM * float(norms.median())
            typical = norms <= threshold  # [batch, pos-1]
            kept = x[typical].double()  # [n, d_in]
            sums["sse_typical"] += float((kept - recon[typical].double()).pow(2).sum())
            sums["sq_typical"] += float(kept.pow(2).sum())
            total_typical += kept.sum(0).cpu()
            n_typical += kept.shape[0]
            sums["l0"] += float((acts > 0).sum())
            fired |= (acts > 0).any(0).any(0).cpu()
            n_values += x.shape[0] * x.shape[1]

            def splice(zero: bool):
                def edit(site_x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
                    rows = site_x[:, 1:]
                    site_x[:, 1:] = 0.0 if zero else sae.decode(sae.encode(rows)).to(site_x.dtype)
                    return site_x

                return edit

            clean = logits_with_site(passes, ids, sae.site, None)
            spliced = logits_with_site(passes, ids, sae.site, splice(zero=False))
            zeroed = logits_with_site(passes, ids, sae.site, splice(zero=True))
            sums["ce_clean"] += float(_next_token_loss(clean, ids).sum())
            sums["ce_sae"] += float(_next_token_loss(spliced, ids).sum())
            sums["ce_zero"] += float(_next_token_loss(zeroed, ids).sum())
            log_p = torch.log_softmax(clean[:, 1:-1], -1)
            log_q = torch.log_softmax(spliced[:, 1:-1], -1)
            sums["kl"] += float((log_p.exp() * (log_p - log_q)).sum())
            n_predictions += ids.shape[0] * (ids.shape[1] - 2)
    if not n_values:
        raise FeatureError("no text to evaluate on")
    mean = total / n_values
    variance = sums["sq"] - n_values * float(mean.pow(2).sum())
    mean_typical = total_typical / max(n_typical, 1)
    variance_typical = sums["sq_typical"] - n_typical * float(mean_typical.pow(2).sum())
    ce_clean, ce_sae, ce_zero = (sums[k] / n_predictions for k in ("ce_clean", "ce_sae", "ce_zero"))
    recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan")
    return SaeQuality(tokens=n_values, fve=1.0 - sums["sse"] / variance, l0=sums["l0"] / n_values,
                      dead_fraction=1.0 - float(fired.float().mean()), ce_clean=ce_clean, ce_sae=ce_sae,
                      ce_zero=ce_zero, ce_recovered=recovered, kl=sums["kl"] / n_predictions, corpus=corpus,
                      fve_typical=1.0 - sums["sse_typical"] / variance_typical if variance_typical > 0 else float("nan"),
                      massive_tokens=n_values - n_typical)


def save_quality(quality: SaeQuality, folder: str | Path, sae_digest: str) -> Path:
    """Write the figures beside the SAE, with the digest of the SAE they were measured on."""
    path = Path(folder) / QUALITY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sae_digest": sae_digest, **quality.to_json()}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_quality(folder: str | Path, sae_digest: str) -> SaeQuality | None:
    """The figures stored beside the SAE when they were measured on this very SAE (same digest);
    None when there are none, they are for another file, or the file is not what `save_quality` writes."""
    path = Path(folder).expanduser() / QUALITY_FILE
    try:
        if not path.is_file() or path.stat().st_size > MAX_QUALITY_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("sae_digest") != sae_digest:
            return None
        return SaeQuality.from_json(data)
    except (OSError, ValueError):
        return None
