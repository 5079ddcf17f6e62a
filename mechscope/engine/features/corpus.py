"""Text to train and evaluate SAEs on: a user's .txt / .jsonl file, or a default that needs no download.

The default corpus is text the model samples itself, interleaved with the Python documentation that
ships inside the interpreter (`pydoc_data`, ~110k tokens of English prose and code, free). To sample,
the model continues SEEDS (varied openings: prose, dialogue, code, lists, facts) at temperature 1,
64 sequences at a time; that costs one generation step per token (with the KV cache) and is cached
by model digest, size and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from mechscope.engine.features.sae import FeatureError

MAX_LINE_BYTES = 1 << 24
SEEDS: tuple[str, ...] = (
    "The", "In 1887,", "Once upon a time", "Dear Sir or Madam,", "def main():", "import numpy as np\n",
    "Q: What is the capital of", "The recipe calls for", "Breaking news:", "Chapter 1\n\n",
    "The mitochondria", "She said,", "1. Preheat the oven", "User: Can you help me", "According to the report,",
    "The stock market", "In mathematics, a group is", "The following is a list of", "Abstract. We study",
    "My favourite", "<html>\n<head>", "SELECT name FROM", "The river", "He opened the door and",
    "Photosynthesis is", "Here is a poem about", "The court ruled that", "When Mary and John went to the store,",
    "Step 2:", "The history of Rome", "To install the package,", "It was a dark and stormy night",
    "The patient presented with", "for i in range(", "Le petit prince", "The World Cup", "Once the data is loaded,",
    "Thank you for your email.", "The theory of relativity", "In the beginning", "Ingredients:\n-",
    "The best way to learn", "Error: could not", "The election results", "Dogs are", "The year was 2049.",
    "According to Wikipedia,", "Let x be a real number", "The meeting is scheduled for",
)


def read_texts(path: str | Path) -> Iterator[str]:
    """Documents of a .txt (paragraphs separated by blank lines) or .jsonl file (a string, or an object
    with a "text" string, per line); FeatureError naming the file and line for anything else."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise FeatureError(f"{path}: a corpus is a .txt or .jsonl file")
    try:
        with path.open("rb") as f:
            paragraph: list[str] = []
            for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES), b""), 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise FeatureError(f"{path}:{number}: not UTF-8 text") from None
                if suffix == ".txt":
                    if line.strip():
                        paragraph.append(line)
                    elif paragraph:
                        yield "".join(paragraph).strip()
                        paragraph = []
                    continue
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FeatureError(f"{path}:{number}: not JSON ({exc.msg})") from None
                text = item.get("text") if isinstance(item, dict) else item
                if not isinstance(text, str):
                    raise FeatureError(f"{path}:{number}: expected a string or an object with a \"text\" string")
                if text.strip():
                    yield text
            if paragraph:
                yield "".join(paragraph).strip()
    except OSError as exc:
        raise FeatureError(f"{path}: cannot read ({exc.strerror or exc})") from None


def python_docs() -> list[str]:
    """The interpreter's own documentation topics (`pydoc_data`), by name; empty where it was left out."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [str(topics[name]) for name in sorted(topics)]


def interleaved(first: list[str], second: list[str]) -> Iterator[str]:
    """The documents of both lists, taking next from the one that has given the smaller share of its
    characters, so every stretch of the stream mixes them in proportion."""
    totals = [max(sum(len(d) for d in docs), 1) for docs in (first, second)]
    given, at = [0, 0], [0, 0]
    lists = (first, second)
    while at[0] < len(first) or at[1] < len(second):
        side = 0 if at[1] >= len(second) or (at[0] < len(first) and given[0] / totals[0] <= given[1] / totals[1]) else 1
        document = lists[side][at[side]]
        at[side] += 1
        given[side] += len(document)
        yield document


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def token_chunks(tokenizer, texts: Iterable[str], seq_len: int) -> Iterator[list[int]]:
    """The texts' tokens, documents joined by the end-of-text token, cut into chunks of `seq_len`."""
    eos = tokenizer.eos_token_id
    buffer: list[int] = []
    for text in texts:
        buffer += tokenizer(text, add_special_tokens=False).input_ids
        if eos is not None:
            buffer.append(int(eos))
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            buffer = buffer[seq_len:]


def sampled_corpus(engine, n_tokens: int, seed: int = 0, batch: int = 64, length: int = 128,
                   folder: Path | None = None, progress=None) -> Path:
    """A .jsonl of about `n_tokens` tokens the model sampled from SEEDS, cached by model digest."""
    from mechscope.engine.model_cache import cache_dir

    folder = folder or cache_dir() / "features"
    key = hashlib.sha256(f"{engine.weights_digest or engine.source}|{n_tokens}|{seed}|{length}|{batch}".encode()).hexdigest()
    path = folder / f"sampled-{key[:16]}.jsonl"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, model = engine.tokenizer, engine.model
    generator = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    done, round_ = 0, 0
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as out, engine.lock, torch.no_grad():
        while done < n_tokens:
            prompts = [SEEDS[(round_ * batch + i) % len(SEEDS)] for i in range(batch)]
            round_ += 1
            encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
            width = max(len(e) for e in encoded)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=engine.device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=engine.device)
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
            output = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                    max_new_tokens=length, pad_token_id=pad)
            for prompt, row in zip(prompts, output[:, width:].tolist(), strict=True):
                text = prompt + tokenizer.decode(row, skip_special_tokens=True)
                out.write(json.dumps({"text": text}) + "\n")
            done += batch * length
            if progress is not None:
                progress(f"sampling the corpus: {done}/{n_tokens} tokens", min(done / n_tokens, 1.0))
    tmp.replace(path)
    return path
