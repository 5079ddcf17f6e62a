"""SAE folders in each format: fabricated with random weights, read back and checked against numpy; bad ones refused."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from mechscope.engine.features.formats import load_sae, save_saelens
from mechscope.engine.features.sae import FeatureError

D_IN, D_SAE = 16, 48
TOL = 1e-6


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(0, 0.5, (D_IN, D_SAE)).astype(np.float32),
        "b_enc": rng.normal(0, 0.2, D_SAE).astype(np.float32),
        "W_dec": rng.normal(0, 0.5, (D_SAE, D_IN)).astype(np.float32),
        "b_dec": rng.normal(0, 0.2, D_IN).astype(np.float32),
        "threshold": rng.uniform(0.0, 0.5, D_SAE).astype(np.float32),
    }


def _numpy_encode(w: dict[str, np.ndarray], x: np.ndarray, activation: str, k: int = 0,
                  subtract_b_dec: bool = True) -> np.ndarray:
    """Independent float64 reference of the three activation functions."""
    xs = x.astype(np.float64) - (w["b_dec"] if subtract_b_dec else 0.0)
    pre = xs @ w["W_enc"].astype(np.float64) + w["b_enc"]
    if activation == "relu":
        return np.maximum(pre, 0.0)
    if activation == "jumprelu":
        return np.where(pre > w["threshold"], pre, 0.0)
    out = np.zeros_like(pre)
    for row in range(pre.shape[0]):
        top = np.argsort(-pre[row])[:k]
        out[row, top] = np.maximum(pre[row, top], 0.0)
    return out


def _numpy_decode(w: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
    return acts @ w["W_dec"].astype(np.float64) + w["b_dec"]


def saelens_folder(root: Path, w: dict[str, np.ndarray], architecture: str, k: int = 6,
                   hook: str = "blocks.2.hook_resid_post", **cfg_extra) -> Path:
    folder = root / f"saelens-{architecture}"
    folder.mkdir()
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if architecture == "jumprelu" else [])
    save_file({n: w[n] for n in names}, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "metadata": {"hook_name": hook},
           **({"k": k} if architecture == "topk" else {}), **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def sparsify_folder(root: Path, w: dict[str, np.ndarray], k: int = 6, name: str = "layers.1") -> Path:
    folder = root / name
    folder.mkdir()
    save_file({"encoder.weight": np.ascontiguousarray(w["W_enc"].T), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 3, "normalize_decoder": True,
                                                 "num_latents": D_SAE, "k": k, "multi_topk": False,
                                                 "skip_connection": False, "transcode": False, "d_in": D_IN}))
    return folder


def gemma_folder(root: Path, w: dict[str, np.ndarray]) -> Path:
    folder = root / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_20"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{n: w[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")})
    return folder


X = np.random.default_rng(7).normal(0, 1.0, (20, D_IN)).astype(np.float32)


@pytest.mark.parametrize("architecture,activation", [("standard", "relu"), ("topk", "topk"),
                                                     ("jumprelu", "jumprelu")])
def test_saelens_folders_encode_and_decode_as_numpy(tmp_path, architecture, activation):
    w = _weights(1)
    sae = load_sae(saelens_folder(tmp_path, w, architecture), d_model=D_IN)
    assert sae.site == "L2.resid_post" and sae.activation == activation and sae.format == "saelens"
    acts = sae.encode(torch.from_numpy(X))
    expected = _numpy_encode(w, X, activation, k=6)
    np.testing.assert_allclose(acts.numpy(), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(sae.decode(acts).numpy(), _numpy_decode(w, expected), atol=TOL * 10, rtol=0)
    if activation == "topk":
        assert ((acts > 0).sum(-1) <= 6).all()


def test_sparsify_folder_encodes_and_decodes_as_numpy(tmp_path):
    w = _weights(2)
    sae = load_sae(sparsify_folder(tmp_path, w), d_model=D_IN)
    assert sae.site == "L1.resid_post" and sae.activation == "topk" and sae.k == 6
    acts = sae.encode(torch.from_numpy(X))
    expected = _numpy_encode(w, X, "topk", k=6)
    np.testing.assert_allclose(acts.numpy(), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(sae.decode(acts).numpy(), _numpy_decode(w, expected), atol=TOL * 10, rtol=0)


def test_gemma_scope_folder_encodes_and_decodes_as_numpy(tmp_path):
    w = _weights(3)
    sae = load_sae(gemma_folder(tmp_path, w), d_model=D_IN)
    assert sae.site == "L3.resid_post" and sae.activation == "jumprelu" and not sae.subtract_b_dec
    acts = sae.encode(torch.from_numpy(X))
    expected = _numpy_encode(w, X, "jumprelu", subtract_b_dec=False)
    np.testing.assert_allclose(acts.numpy(), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(sae.decode(acts).numpy(), _numpy_decode(w, expected), atol=TOL * 10, rtol=0)


def test_bfloat16_and_float16_weights_are_read(tmp_path):
    w = _weights(4)
    folder = saelens_folder(tmp_path, w, "standard")
    halves = {n: torch.from_numpy(w[n]).to(torch.bfloat16 if n.startswith("W") else torch.float16)
              for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    from safetensors.torch import save_file as save_torch

    save_torch(halves, str(folder / "sae_weights.safetensors"))
    sae = load_sae(folder)
    assert torch.equal(sae.W_enc, halves["W_enc"].float()) and torch.equal(sae.b_enc, halves["b_enc"].float())


def test_saved_saelens_layout_reads_back_identically(tmp_path):
    w = _weights(5)
    sae = load_sae(saelens_folder(tmp_path, w, "topk"))
    back = load_sae(save_saelens(sae, tmp_path / "copy", {"model": "tiny"}))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(sae, name), getattr(back, name))
    assert (back.site, back.activation, back.k) == (sae.site, sae.activation, sae.k)
    assert json.loads((tmp_path / "copy" / "cfg.json").read_text())["metadata"]["model"] == "tiny"
    (tmp_path / "blocked" / "sae_weights.safetensors").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):  # an OSError the features CLI reports in one line
        save_saelens(sae, tmp_path / "blocked")


def test_site_given_must_agree_with_the_folder(tmp_path):
    folder = saelens_folder(tmp_path, _weights(6), "standard")
    assert load_sae(folder, site="L2.resid_post").site == "L2.resid_post"
    with pytest.raises(FeatureError, match="trained on L2.resid_post"):
        load_sae(folder, site="L3.mlp_out")
    plain = tmp_path / "plain"
    plain.mkdir()
    np.savez(plain / "params.npz", **{n: _weights(6)[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")})
    with pytest.raises(FeatureError, match="cannot tell the SAE's site"):
        load_sae(plain)
    assert load_sae(plain, site="L0.mlp_out").site == "L0.mlp_out"


# ---------------------------------------------------------------- refused, in one line, in bounded memory


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    for needle in needles:
        assert needle in text, text


def test_wrong_width_for_the_model_is_refused(tmp_path):
    with pytest.raises(FeatureError) as exc:
        load_sae(saelens_folder(tmp_path, _weights(1), "standard"), d_model=D_IN + 1)
    _one_line(exc, "width 16", "d_model is 17")


def test_wrong_shape_is_refused(tmp_path):
    w = _weights(1)
    w["W_dec"] = w["W_dec"][:, :-1].copy()
    with pytest.raises(FeatureError) as exc:
        load_sae(saelens_folder(tmp_path, w, "standard"))
    _one_line(exc, "sae_weights.safetensors", "'W_dec'", "[48, 15]")


@pytest.mark.parametrize("maker", ["saelens", "sparsify", "gemma"])
def test_nan_is_refused(tmp_path, maker):
    w = _weights(1)
    w["b_dec"][3] = np.nan
    folder = {"saelens": lambda: saelens_folder(tmp_path, w, "standard"),
              "sparsify": lambda: sparsify_folder(tmp_path, w),
              "gemma": lambda: gemma_folder(tmp_path, w)}[maker]()
    with pytest.raises(FeatureError) as exc:
        load_sae(folder)
    _one_line(exc, "non-finite", "b_dec")


@pytest.mark.parametrize("missing", ["W_enc", "b_dec", "threshold"])
def test_missing_key_is_refused(tmp_path, missing):
    w = _weights(1)
    folder = saelens_folder(tmp_path, w, "jumprelu")
    save_file({n: w[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold") if n != missing},
              str(folder / "sae_weights.safetensors"))
    with pytest.raises(FeatureError) as exc:
        load_sae(folder)
    _one_line(exc, f"missing tensor {missing!r}")


def test_pickle_inside_an_npz_is_refused(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_1"
    folder.mkdir(parents=True)
    w = _weights(1)
    arrays = {n: w[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    arrays["threshold"] = np.array([{"evil": 1}] * D_SAE, dtype=object)
    np.savez(folder / "params.npz", **arrays)  # np.savez pickles object arrays
    with pytest.raises(FeatureError) as exc:
        load_sae(folder)
    _one_line(exc, "params.npz", "pickle")


def test_huge_safetensors_header_is_refused_in_bounded_memory(tmp_path):
    folder = saelens_folder(tmp_path, _weights(1), "standard")
    path = folder / "sae_weights.safetensors"
    path.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    tracemalloc.start()
    with pytest.raises(FeatureError) as exc:
        load_sae(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _one_line(exc, "header", "too large")
    assert peak < 1 << 20


def test_tensor_sizes_past_the_file_are_refused_before_allocating(tmp_path):
    folder = saelens_folder(tmp_path, _weights(1), "standard")
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [1 << 20, 1 << 14],
                                   "data_offsets": [0, 4 << 34]}}).encode()
    (folder / "sae_weights.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    tracemalloc.start()
    with pytest.raises(FeatureError) as exc:
        load_sae(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _one_line(exc, "'W_enc'", "file size")
    assert peak < 1 << 20


def test_npz_member_promising_huge_array_is_refused_before_allocating(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 20, 1 << 14)})
    with zipfile.ZipFile(folder / "params.npz", "w") as archive:
        archive.writestr("W_enc.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64)
    tracemalloc.start()
    with pytest.raises(FeatureError) as exc:
        load_sae(folder, site="L0.resid_post")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _one_line(exc, "'W_enc'", "promises more data")
    assert peak < 1 << 20


@pytest.mark.parametrize("cfg_text,needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"architecture": "gated", "d_in": D_IN, "d_sae": D_SAE}), "architecture 'gated'"),
    (json.dumps({"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE,
                 "normalize_activations": "expected_average_only_in"}), "normalize_activations"),
    (json.dumps({"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": 0}), "integer k"),
    (json.dumps({"architecture": "standard", "d_in": "16", "d_sae": D_SAE}), "'d_in'"),
])
def test_bad_saelens_config_is_refused(tmp_path, cfg_text, needle):
    folder = saelens_folder(tmp_path, _weights(1), "standard")
    (folder / "cfg.json").write_text(cfg_text)
    with pytest.raises(FeatureError) as exc:
        load_sae(folder)
    _one_line(exc, "cfg.json", needle)


def test_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(FeatureError) as exc:
        load_sae(tmp_path)
    _one_line(exc, "no sae_weights.safetensors")
    with pytest.raises(FeatureError) as exc:
        load_sae(tmp_path / "nowhere")
    _one_line(exc, "not a folder")
