"""Training on a tiny model's site: layout written, manifest, resume from a checkpoint, the sampled corpus."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.engine.core import Engine
from mechscope.engine.errors import Cancelled
from mechscope.engine.features import pipeline
from mechscope.engine.features.corpus import read_texts, sampled_corpus
from mechscope.engine.features.formats import load_sae
from mechscope.engine.features.reading import site_values
from mechscope.engine.features.sae import FeatureError
from mechscope.engine.features.training import TrainConfig
from mechscope.engine.testing import _CORPUS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_model("llama", seed=2), tiny_tokenizer(), source="tiny", weights_digest="tinydigest")


def _stream() -> pipeline.Stream:
    texts = _CORPUS.split(". ") * 20
    return pipeline.Stream(lambda: iter(texts), "corpus-digest", "test sentences")


def test_training_writes_the_saelens_layout_and_a_manifest(engine, tmp_path):
    config = TrainConfig(width=64, k=4, lr=1e-3)
    lines = []
    sae = pipeline.train(engine, "L1.resid_post", config, _stream(), tokens=600, out=tmp_path, batch_tokens=150,
                         seq_len=16, seqs_per_forward=4, on_progress=lambda p: lines.append(p.line()))
    assert lines and "tok/s" in lines[-1] and "FVE" in lines[-1] and "dead" in lines[-1]
    back = load_sae(tmp_path, d_model=32)
    assert back.site == "L1.resid_post" and back.activation == "topk" and back.k == 4
    assert (back.W_dec == sae.W_dec).all()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model_digest"] == "tinydigest" and manifest["corpus_digest"] == "corpus-digest"
    assert manifest["site"] == "L1.resid_post" and manifest["tokens_trained"] >= 600 and manifest["seed"] == 0
    assert not (tmp_path / pipeline.CHECKPOINT).exists()


def test_a_stopped_run_resumes_where_it_was(engine, tmp_path):
    config = TrainConfig(width=64, k=4, lr=1e-3)
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    options = dict(tokens=900, batch_tokens=150, seq_len=16, seqs_per_forward=4)
    with pytest.raises(Cancelled, match="checkpoint saved"):
        pipeline.train(engine, "L0.mlp_out", config, _stream(), out=tmp_path / "a", should_stop=stop_after_three,
                       **options)
    state = json.loads((tmp_path / "a" / pipeline.CHECKPOINT_STATE).read_text())
    assert state["trainer"]["steps"] == 3
    resumed = pipeline.train(engine, "L0.mlp_out", config, _stream(), out=tmp_path / "a", **options)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["steps"] == 6 and resumed.site == "L0.mlp_out"
    with pytest.raises(FeatureError, match="other settings"):
        pipeline._checkpoint(pipeline.TopKTrainer(32, config), tmp_path / "a", {"x": 1}, 0)
        pipeline.train(engine, "L0.mlp_out", config, _stream(), out=tmp_path / "a", **options)


def test_too_little_text_is_one_line(engine, tmp_path):
    stream = pipeline.Stream(lambda: iter(["a b c"]), "d", "three words")
    with pytest.raises(FeatureError, match="too little text"):
        pipeline.train(engine, "L0.resid_pre", TrainConfig(width=8, k=2), stream, tokens=100, out=tmp_path,
                       batch_tokens=64, seq_len=16)


def test_sampled_corpus_is_cached_and_readable(engine, tmp_path):
    path = sampled_corpus(engine, n_tokens=64, seed=1, batch=4, length=8, folder=tmp_path)
    texts = list(read_texts(path))
    assert len(texts) == 8 and all(isinstance(t, str) and t for t in texts)
    mtime = path.stat().st_mtime_ns
    assert sampled_corpus(engine, n_tokens=64, seed=1, batch=4, length=8, folder=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name,content,needle", [
    ("a.csv", "x", "a .txt or .jsonl"),
    ("b.jsonl", '{"text": "ok"}\n{"text": 5}\n', "b.jsonl:2: expected a string"),
    ("c.jsonl", "{oops\n", "c.jsonl:1: not JSON"),
])
def test_bad_corpus_files_are_one_line(tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    with pytest.raises(FeatureError, match=needle):
        list(read_texts(tmp_path / name))


def test_txt_paragraphs_and_jsonl_strings_are_documents(tmp_path):
    (tmp_path / "t.txt").write_text("one\ntwo\n\n\nthree\n")
    (tmp_path / "j.jsonl").write_text('"alpha"\n\n{"text": "beta", "id": 3}\n')
    assert list(read_texts(tmp_path / "t.txt")) == ["one\ntwo", "three"]
    assert list(read_texts(tmp_path / "j.jsonl")) == ["alpha", "beta"]


def test_a_run_longer_than_its_corpus_goes_over_it_again_without_forwards(engine, tmp_path, monkeypatch):
    texts = _CORPUS.split(". ")[:6]
    stream = pipeline.Stream(lambda: iter(texts), "small", "six sentences")
    forwarded = []
    real = pipeline.site_values

    def counting(passes, ids, site):
        forwarded.append(ids.shape[0])
        return real(passes, ids, site)

    monkeypatch.setattr(pipeline, "site_values", counting)
    lines = []
    pipeline.train(engine, "L1.resid_post", TrainConfig(width=32, k=4, lr=1e-3), stream, tokens=1500,
                   out=tmp_path, batch_tokens=60, seq_len=16, seqs_per_forward=2,
                   on_progress=lambda p: lines.append(p.line()))
    chunks = sum(1 for _ in pipeline.token_chunks(engine.tokenizer, iter(texts), 16))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tokens_trained"] >= 1500 > 3 * chunks * 15  # more than three passes over the corpus
    assert sum(forwarded) == chunks  # each chunk forwarded once; later passes read held values
    assert "corpus pass 2" in "\n".join(lines)


def test_held_values_equal_a_fresh_forward(engine):
    chunks = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]]
    schedule = pipeline.ChunkSchedule(iter(chunks), seed=0, memory_bytes=1 << 20)
    order = schedule.order()
    first = schedule.site_values(engine, "L1.mlp_out", [next(order), next(order)])
    again = schedule.site_values(engine, "L1.mlp_out", [next(order), next(order)])
    with torch.no_grad():
        expected = site_values(engine.passes, torch.tensor(chunks), "L1.mlp_out")[:, 1:].float()
    assert schedule.passes == 2 and sorted(id(v) for v in again) == sorted(id(v) for v in first)
    assert torch.equal(torch.stack(first), expected)


def test_finished_runs_in_the_cache_are_offered_by_the_models_info(engine):
    from mechscope.engine.features.cache import trained_folder, trained_saes

    assert trained_saes("tinydigest") == ()
    out = trained_folder("tinydigest", "L1.resid_post", 32, 4, "corpus-digest", 300, 0)
    unfinished = trained_folder("tinydigest", "L0.resid_post", 32, 4, "corpus-digest", 300, 0)
    unfinished.mkdir(parents=True)
    (unfinished / pipeline.CHECKPOINT_STATE).write_text("{}")
    pipeline.train(engine, "L1.resid_post", TrainConfig(width=32, k=4, lr=1e-3), _stream(), tokens=300, out=out,
                   batch_tokens=150, seq_len=16, seqs_per_forward=4)
    assert trained_saes("tinydigest") == (str(out),) and trained_saes("otherdigest") == ()
    again = Engine(tiny_model("llama", seed=2), tiny_tokenizer(), source="tiny", weights_digest="tinydigest")
    assert again.info.trained_saes == (str(out),)


def test_the_default_corpus_interleaves_samples_with_pythons_documentation():
    from mechscope.engine.features.corpus import interleaved, python_docs

    docs = python_docs()
    assert len(docs) > 50 and sum(map(len, docs)) > 300_000  # pydoc_data ships with the interpreter
    samples = ["s" * 10] * 30
    mixed = list(interleaved(samples, ["d" * 100] * 3))
    assert sorted(mixed) == sorted(samples + ["d" * 100] * 3)
    assert [i for i, text in enumerate(mixed) if text[0] == "d"] == [1, 12, 23]  # in proportion to characters
