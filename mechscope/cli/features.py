"""`mechscope features`: train, evaluate, index and show sparse autoencoders (SAEs) on a model's sites."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from mechscope.cli.common import add_model_args, load_engine_or_exit, positive_int

DEFAULT_TOKENS = 600_000
DEFAULT_CORPUS_TOKENS = 32_768  # the self-sampled part of the default corpus; training passes over it more than once
HELD_OUT_SEED = 1_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("features", help="train, evaluate, index and show SAEs (sparse features)",
                                   description="Sparse autoencoders on a site L<k>.resid_pre|resid_post|"
                                   "attn_out|mlp_out. Without --corpus, text the model samples itself "
                                   "(cached) is used, so nothing is downloaded.")
    sub = parser.add_subparsers(dest="features_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, corpus_help: str) -> None:
        add_model_args(p)
        p.add_argument("--corpus", metavar="FILE", help=corpus_help)
        p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per chunk (default 128)")
        p.set_defaults(uses_model=True)

    train = sub.add_parser(
        "train", help="train a TopK SAE on a site; resumable; writes the SAELens layout",
        description="Train a TopK sparse autoencoder on a site's values over a corpus (default: text the "
        "model samples, cached, interleaved with Python's documentation). It checkpoints as it goes: run "
        "the same command again to resume. Writes the SAELens layout and manifest.json and prints the folder.")
    common(train, ".txt (paragraphs) or .jsonl ({\"text\": ...} per line); default: model-sampled text")
    train.add_argument("--site", required=True, help="e.g. L15.resid_post")
    train.add_argument("--width", type=positive_int, default=4096, help="latents (default 4096)")
    train.add_argument("--k", type=positive_int, default=32, help="active latents per token (default 32)")
    train.add_argument("--tokens", type=positive_int, default=DEFAULT_TOKENS,
                       help=f"training tokens (default {DEFAULT_TOKENS})")
    train.add_argument("--out", metavar="DIR", help="output folder (default: in the cache, named by the settings)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lr", type=float, default=None, help="default 1e-3 / sqrt(width / 4096)")
    train.add_argument("--batch-tokens", type=positive_int, default=1024,
                       help="site values per optimiser step (default 1024)")
    train.set_defaults(run=run_train)

    evaluate = sub.add_parser(
        "eval", help="FVE, L0, dead fraction, CE-loss recovered and KL on held-out text",
        description="Measure an SAE on held-out text: fraction of variance explained, L0, dead fraction, "
        "and the CE loss recovered and KL when its reconstruction replaces the site.")
    common(evaluate, "held-out text; default: model-sampled text from another seed than training's")
    evaluate.add_argument("sae", metavar="SAE_DIR")
    evaluate.add_argument("--site", help="where the SAE reads, when its folder does not say")
    evaluate.add_argument("--tokens", type=positive_int, default=16_384, help="tokens to measure (default 16384)")
    evaluate.set_defaults(run=run_eval)

    index = sub.add_parser(
        "index", help="top-activating contexts and density per feature, stored beside the SAE",
        description="Scan text for each feature's top-activating contexts and density and store them "
        "beside the SAE (index.json), where cards in the workbench and `features card` read them.")
    common(index, "text to scan; default: the model-sampled training corpus")
    index.add_argument("sae", metavar="SAE_DIR")
    index.add_argument("--site")
    index.add_argument("--tokens", type=positive_int, default=50_000)
    index.add_argument("--top", type=positive_int, default=20, help="contexts kept per feature (default 20)")
    index.set_defaults(run=run_index)

    card = sub.add_parser(
        "card", help="a feature's card: density, top contexts, tokens it promotes/suppresses",
        description="Print a feature's card: its density and top contexts (from `features index`) and the "
        "tokens its decoder direction promotes and suppresses.")
    add_model_args(card)
    card.add_argument("sae", metavar="SAE_DIR")
    card.add_argument("feature", type=int)
    card.add_argument("--site")
    card.add_argument("--k", type=positive_int, default=10)
    card.set_defaults(run=run_card, uses_model=True, corpus=None)


def _engine(args: argparse.Namespace):
    if getattr(args, "attach", None) or getattr(args, "backend", None) not in (None, "native"):
        print("error: `mechscope features` runs on the native engine; --attach and --backend do not apply",
              file=sys.stderr)
        return None
    return load_engine_or_exit(args)


def _stream(engine, args: argparse.Namespace, seed: int, tokens: int, with_docs: bool = True):
    """The corpus the options name, or the default: `tokens` of model-sampled text (sampled now on first
    use, then cached), interleaved with Python's documentation unless `with_docs` is False."""
    import hashlib

    from mechscope.engine.features.corpus import (
        file_digest,
        interleaved,
        python_docs,
        read_texts,
        sampled_corpus,
    )
    from mechscope.engine.features.pipeline import Stream

    if args.corpus:
        path = Path(args.corpus).expanduser()
        if not path.is_file():
            raise _Fail(f"no such corpus file: {path}")
        return Stream(lambda: read_texts(path), file_digest(path), str(path))
    started = time.perf_counter()

    def progress(message: str, fraction: float | None) -> None:
        print(f"\r{message} ({time.perf_counter() - started:.0f} s)", end="", file=sys.stderr, flush=True)

    path = sampled_corpus(engine, tokens, seed=seed, progress=progress)
    print(file=sys.stderr)
    sampled = f"model-sampled text ({path.name}, seed {seed})"
    docs = python_docs() if with_docs else []
    if not docs:
        return Stream(lambda: read_texts(path), file_digest(path), sampled)
    digest = hashlib.sha256("\0".join([file_digest(path), *docs]).encode()).hexdigest()
    return Stream(lambda: interleaved(list(read_texts(path)), docs), digest,
                  f"{sampled} + Python's documentation ({len(docs)} pydoc topics)")


class _Fail(Exception):
    """A one-line error for the user."""


def _run(args: argparse.Namespace, body) -> int:
    from mechscope.engine.errors import MechscopeError
    from mechscope.engine.features.pipeline import site_layer
    from mechscope.engine.interventions import parse_feature_site

    if getattr(args, "site", None) is not None:
        try:
            parse_feature_site(args.site)  # before the model loads
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "out", None):  # a folder that cannot be made fails in a second, not after training
        try:
            Path(args.out).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: --out: cannot make the folder ({_os_error(exc)})", file=sys.stderr)
            return 2
    engine = _engine(args)
    if engine is None:
        return 2
    try:
        if getattr(args, "site", None) is not None:
            site_layer(engine, args.site)  # before the corpus is sampled
        return int(body(engine))
    except (MechscopeError, _Fail, ValueError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command writes (the SAE, a checkpoint, an index)
        print(f"\nerror: {_os_error(exc)}", file=sys.stderr)
        return 2


def _os_error(exc: OSError) -> str:
    """`/path: No space left on device`, or the error as Python words it when it names no file."""
    if exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def run_train(args: argparse.Namespace) -> int:
    def body(engine) -> int:
        from mechscope.engine.features.cache import trained_folder
        from mechscope.engine.features.pipeline import train
        from mechscope.engine.features.training import TrainConfig

        config = TrainConfig(width=args.width, k=args.k, lr=args.lr, seed=args.seed)
        stream = _stream(engine, args, args.seed, min(DEFAULT_CORPUS_TOKENS, args.tokens))
        out = Path(args.out).expanduser() if args.out else trained_folder(
            engine.weights_digest, args.site, args.width, args.k, stream.digest, args.tokens, args.seed)
        print(f"training {args.site} width {args.width} k {args.k} on {stream.description} -> {out}",
              file=sys.stderr)
        last = [0.0]

        def progress(p) -> None:
            now = time.perf_counter()
            if now - last[0] >= 2.0 or p.tokens >= p.total:
                last[0] = now
                print(p.line(), file=sys.stderr, flush=True)

        started = time.perf_counter()
        train(engine, args.site, config, stream, args.tokens, out, batch_tokens=args.batch_tokens,
              seq_len=args.seq_len, on_progress=progress)
        print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        print(out)
        return 0

    return _run(args, body)


def _load(engine, args: argparse.Namespace):
    from mechscope.engine.features.formats import load_sae

    return engine.attach_sae("cli", load_sae(args.sae, args.site, engine.adapter.d_model))


def run_eval(args: argparse.Namespace) -> int:
    def body(engine) -> int:
        from mechscope.engine.features.corpus import token_chunks
        from mechscope.engine.features.quality import evaluate, save_quality

        sae = _load(engine, args)
        stream = _stream(engine, args, HELD_OUT_SEED, args.tokens + args.tokens // 4, with_docs=False)
        chunks = token_chunks(engine.tokenizer, stream.texts(), args.seq_len)
        quality = evaluate(engine, sae, chunks, args.tokens, corpus=stream.description)
        print(f"SAE {args.sae} at {sae.site} ({sae.format}, {sae.activation}, {sae.d_sae} features) "
              f"on {stream.description}")
        for line in quality.lines():
            print(f"  {line}")
        try:
            path = save_quality(quality, args.sae, sae.digest)
        except OSError as exc:
            print(f"the figures were not saved beside the SAE: {exc.strerror or exc}", file=sys.stderr)
        else:
            print(f"saved to {path} (the features tab shows them)", file=sys.stderr)
        return 0

    return _run(args, body)


def run_index(args: argparse.Namespace) -> int:
    def body(engine) -> int:
        from mechscope.engine.features.cards import build_index, save_index
        from mechscope.engine.features.corpus import token_chunks

        sae = _load(engine, args)
        stream = _stream(engine, args, 0, DEFAULT_CORPUS_TOKENS)
        chunks = token_chunks(engine.tokenizer, stream.texts(), args.seq_len)
        index = build_index(engine, sae, chunks, args.tokens, top_n=args.top)
        path = save_index(index, args.sae)
        alive = sum(1 for d in index.density if d > 0)
        print(f"indexed {index.tokens} tokens: {alive}/{len(index.density)} features fire; wrote {path}")
        return 0

    return _run(args, body)


def run_card(args: argparse.Namespace) -> int:
    def body(engine) -> int:
        from mechscope.engine.features.cards import feature_card, load_index

        sae = _load(engine, args)
        card = feature_card(engine, sae, args.feature, load_index(args.sae), args.k)
        density = "unknown (run `mechscope features index`)" if card.density is None else f"{card.density:.5f}"
        print(f"feature {card.feature} of {args.sae} at {sae.site}: density {density}")
        for context in card.contexts:
            text = "".join(f"[[{t}]]" if i == context.at else t for i, t in enumerate(context.tokens))
            print(f"  {context.activation:8.3f}  {text!r}")
        print("  promotes:   " + "  ".join(f"{t!r} {v:+.2f}" for t, v in card.promoted))
        print("  suppresses: " + "  ".join(f"{t!r} {v:+.2f}" for t, v in card.suppressed))
        return 0

    return _run(args, body)
