"""`mechscope features` end to end on a tiny model saved as a folder: train, eval, index, card."""

from __future__ import annotations

import json

import pytest

from mechscope.cli import main
from mechscope.engine.testing import _CORPUS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", seed=1).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_train_eval_index_and_card(model_folder, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in _CORPUS.split(". ") * 10))
    out = tmp_path / "sae"
    common = ["--model", str(model_folder), "--device", "cpu", "--corpus", str(corpus), "--seq-len", "16"]
    assert main(["features", "train", *common, "--site", "L1.resid_post", "--width", "64", "--k", "4",
                 "--tokens", "300", "--batch-tokens", "100", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "tok/s" in captured.err and "FVE" in captured.err
    assert (out / "sae_weights.safetensors").is_file() and (out / "manifest.json").is_file()
    assert main(["features", "eval", str(out), *common, "--tokens", "100"]) == 0
    text = capsys.readouterr().out
    for figure in ("FVE", "L0", "dead fraction", "CE recovered", "KL"):
        assert figure in text
    assert main(["features", "index", str(out), *common, "--tokens", "100", "--top", "3"]) == 0
    assert "features fire" in capsys.readouterr().out and (out / "index.json").is_file()
    assert main(["features", "card", str(out), "2", "--model", str(model_folder), "--device", "cpu"]) == 0
    card = capsys.readouterr().out
    assert "density" in card and "promotes:" in card and "suppresses:" in card


def test_mistakes_are_one_line_with_exit_2(model_folder, tmp_path, capsys):
    base = ["--model", str(model_folder), "--device", "cpu"]
    assert main(["features", "eval", str(tmp_path / "nowhere"), *base]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["features", "train", *base, "--site", "L1.resid_post", "--corpus", str(tmp_path / "x.txt")]) == 2
    assert "no such corpus file" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("hello world\n")
    assert main(["features", "train", *base, "--site", "L1.bogus", "--corpus", str(tmp_path / "c.txt")]) == 2
    err = capsys.readouterr().err
    assert err == "error: site 'L1.bogus' is not L<layer>.{resid_pre,resid_post,attn_out,mlp_out}\n"


def test_an_out_folder_that_cannot_be_made_is_refused_before_the_model_loads(model_folder, tmp_path, monkeypatch,
                                                                              capsys):
    from mechscope.cli import features as features_cli

    def load(args):
        raise AssertionError("the model loaded for an --out that cannot be made")

    monkeypatch.setattr(features_cli, "_engine", load)
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "sae"
    assert main(["features", "train", "--model", str(model_folder), "--device", "cpu", "--site", "L1.resid_post",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: --out: cannot make the folder ({out}: Not a directory)\n"


def test_a_layer_the_model_lacks_or_a_bad_learning_rate_is_refused_before_the_corpus_is_read(model_folder, monkeypatch, capsys):
    from mechscope.engine.features import corpus

    def sampled(*args, **kwargs):
        raise AssertionError("the corpus was sampled for a site the model does not have")

    monkeypatch.setattr(corpus, "sampled_corpus", sampled)
    base = ["features", "train", "--model", str(model_folder), "--device", "cpu"]
    assert main([*base, "--site", "L9.resid_post"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("error: site L9.resid_post: the model has layers 0..2"), err
    for lr in ("nan", "inf", "-1", "0"):
        assert main([*base, "--site", "L1.resid_post", "--lr", lr]) == 2
        err = capsys.readouterr().err
        assert "error: the learning rate must be a finite number above 0" in err, err
