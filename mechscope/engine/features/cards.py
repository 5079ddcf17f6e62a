"""Feature cards as plain data: top-activating contexts (an index built over a corpus), density, logit lens."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mechscope.engine.features.reading import site_values
from mechscope.engine.features.results import MAX_CARD_ROWS, FeatureCardResult
from mechscope.engine.features.sae import FeatureError, SparseAutoencoder

INDEX_FILE = "index.json"
MAX_INDEX_BYTES = 1 << 28


@dataclass(frozen=True)
class Context:
    """A stretch of tokens around a token where a feature fired; `at` indexes the firing token."""

    activation: float
    tokens: list[str]
    at: int


@dataclass(frozen=True)
class FeatureIndex:
    """Per feature: the fraction of tokens it fires on and its top contexts (strongest first)."""

    tokens: int
    density: list[float]  # [d_sae]
    top: list[list[Context]]  # [d_sae][<= top_n]


@dataclass(frozen=True)
class FeatureCard:
    feature: int
    density: float | None
    contexts: list[Context]
    promoted: list[tuple[str, float]]  # tokens whose logits the decoder direction raises most
    suppressed: list[tuple[str, float]]


def build_index(engine, sae: SparseAutoencoder, chunks: Iterator[list[int]], tokens: int, top_n: int = 20,
                before: int = 12, after: int = 4, seqs_per_forward: int = 8) -> FeatureIndex:
    """Scan chunks of token ids (position 0 of each left out, as in training) until about `tokens` values."""
    top_values = torch.full((sae.d_sae, top_n), -torch.inf)  # [d_sae, top_n]
    top_where = torch.zeros((sae.d_sae, top_n), dtype=torch.long)  # flat index into `seen`
    fired = torch.zeros(sae.d_sae, dtype=torch.long)
    seen: list[list[int]] = []
    n = 0
    while n < tokens:
        group = list(itertools.islice(chunks, seqs_per_forward))
        if not group:
            break
        ids = torch.tensor(group, device=engine.device)
        with engine.lock, torch.no_grad():
            acts = sae.encode(site_values(engine.passes, ids, sae.site)[:, 1:]).cpu()  # [seqs, pos-1, d_sae]
        seq_len = ids.shape[1]
        # Flat location of (sequence s, position p): (len(seen) + s) * seq_len + p.
        where = ((torch.arange(len(group))[:, None] + len(seen)) * seq_len
                 + torch.arange(1, seq_len)[None, :]).reshape(-1)
        flat = acts.reshape(-1, sae.d_sae)  # [tokens, d_sae]
        fired += (flat > 0).sum(0)
        values = torch.cat([top_values, flat.T], dim=1)  # [d_sae, top_n + tokens]
        places = torch.cat([top_where, where[None, :].expand(sae.d_sae, -1)], dim=1)
        top_values, order = values.topk(top_n, dim=1)
        top_where = places.gather(1, order)
        seen += group
        n += flat.shape[0]
    if not n:
        raise FeatureError("no text to index")
    seq_len = len(seen[0])
    decode = engine.decode_token
    top: list[list[Context]] = []
    for feature in range(sae.d_sae):
        contexts = []
        for value, place in zip(top_values[feature].tolist(), top_where[feature].tolist(), strict=True):
            if not value > 0:
                break
            row, pos = divmod(place, seq_len)
            start = max(pos - before, 0)
            window = seen[row][start:pos + after + 1]
            contexts.append(Context(float(value), [decode(t) for t in window], pos - start))
        top.append(contexts)
    return FeatureIndex(tokens=n, density=(fired.double() / n).tolist(), top=top)


def save_index(index: FeatureIndex, folder: str | Path) -> Path:
    path = Path(folder) / INDEX_FILE
    path.write_text(json.dumps(asdict(index)), encoding="utf-8")
    return path


def load_index(folder: str | Path) -> FeatureIndex | None:
    """The index stored beside an SAE, None when there is none; FeatureError when it is malformed."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise FeatureError(f"{path}: larger than {MAX_INDEX_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return FeatureIndex(tokens=int(data["tokens"]), density=[float(d) for d in data["density"]],
                            top=[[Context(float(c["activation"]), [str(t) for t in c["tokens"]], int(c["at"]))
                                  for c in row] for row in data["top"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise FeatureError(f"{path}: malformed feature index ({exc})") from None


def logit_lens(engine, sae: SparseAutoencoder, feature: int, k: int = 10
               ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Tokens a feature's decoder direction promotes and suppresses: the direction through the final
    norm (as a residual vector: RMSNorm only rescales it, so the ranking is that of direction x weight)
    and the unembedding."""
    if not 0 <= feature < sae.d_sae:
        raise FeatureError(f"feature {feature} is out of range 0..{sae.d_sae - 1}")
    with engine.lock, torch.no_grad():
        direction = sae.W_dec[feature].to(engine.dtype)[None]  # [1, d_model]
        logits = engine.passes.logits(direction.to(sae.device))[0]  # [vocab]
    up, down = logits.topk(k), (-logits).topk(k)
    decode = engine.decode_token
    return ([(decode(int(i)), float(v)) for v, i in zip(up.values, up.indices, strict=True)],
            [(decode(int(i)), -float(v)) for v, i in zip(down.values, down.indices, strict=True)])


def feature_card(engine, sae: SparseAutoencoder, feature: int, index: FeatureIndex | None = None,
                 k: int = 10) -> FeatureCard:
    promoted, suppressed = logit_lens(engine, sae, feature, k)
    if index is not None and len(index.density) != sae.d_sae:
        raise FeatureError(f"the feature index has {len(index.density)} features, the SAE {sae.d_sae}")
    return FeatureCard(feature=feature, density=None if index is None else index.density[feature],
                       contexts=[] if index is None else index.top[feature][:k], promoted=promoted,
                       suppressed=suppressed)


def card_of_folder(engine, sae: SparseAutoencoder, folder: str | Path, feature: int, k: int) -> FeatureCardResult:
    """The card of `feature` of the SAE read from `folder`, from the index beside it when there is one
    (`k` contexts and `k` tokens each way at most). Callers hold the engine's lock."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CARD_ROWS:
        raise FeatureError(f"k must be in 1..{MAX_CARD_ROWS}, got {k!r}")
    index = load_index(Path(folder).expanduser())
    card = feature_card(engine, sae, feature, index, k)
    return FeatureCardResult(
        site=sae.site, sae_digest=sae.digest, d_sae=sae.d_sae, feature=card.feature, indexed=index is not None,
        index_tokens=0 if index is None else index.tokens, density=card.density,
        context_values=np.asarray([c.activation for c in card.contexts], dtype=np.float32),
        context_tokens=[list(c.tokens) for c in card.contexts], context_at=[c.at for c in card.contexts],
        promoted=[t for t, _ in card.promoted],
        promoted_logits=np.asarray([v for _, v in card.promoted], dtype=np.float32),
        suppressed=[t for t, _ in card.suppressed],
        suppressed_logits=np.asarray([v for _, v in card.suppressed], dtype=np.float32))
