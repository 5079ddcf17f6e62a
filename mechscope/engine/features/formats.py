"""Reading SAEs from local folders (SAELens, EleutherAI sparsify, Gemma Scope) and writing the SAELens layout.

Nothing is unpickled: weights come from safetensors (header read and checked before any tensor is
allocated) or from npz members whose .npy headers are checked first (object arrays refused). Every
problem is a FeatureError naming the file.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechscope.engine.features.sae import FeatureError, SparseAutoencoder
from mechscope.engine.interventions import parse_feature_site

MAX_HEADER_BYTES = 1 << 20  # an SAE file names a handful of tensors
MAX_CONFIG_BYTES = 1 << 20
DEFAULT_MAX_BYTES = 8 << 30
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
                       "BF16": np.dtype("<u2")}  # bfloat16 read as raw 16-bit words
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMA_SCOPE_WEIGHTS = "params.npz"
CONFIG = "cfg.json"


def _fail(path: Path, message: str) -> FeatureError:
    return FeatureError(f"{path}: {message}")


def _float32(path: Path, name: str, array: np.ndarray, bfloat16: bool = False) -> torch.Tensor:
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.view(torch.bfloat16) if bfloat16 else tensor
    tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise _fail(path, f"tensor {name!r} has non-finite values")
    return tensor


def read_safetensors(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as float32, after checking the header against the file size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _fail(path, "too short to be a safetensors file")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _fail(path, f"safetensors header of {n} bytes is too large or past the end of the file")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise _fail(path, "safetensors header is not JSON") from None
            if not isinstance(header, dict):
                raise _fail(path, "safetensors header is not a JSON object")
            entries: list[tuple[str, np.dtype, tuple[int, ...], int, int, bool]] = []
            total = 0
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                try:
                    dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
                    shape = tuple(int(d) for d in shape)
                    begin, end = int(begin), int(end)
                except (KeyError, TypeError, ValueError):
                    raise _fail(path, f"tensor {name!r} has a malformed header entry") from None
                if dtype_name not in _SAFETENSORS_DTYPES:
                    raise _fail(path, f"tensor {name!r} has dtype {dtype_name}; expected F32, F16, BF16 or F64")
                dtype = _SAFETENSORS_DTYPES[dtype_name]
                if any(d < 0 for d in shape) or len(shape) > 2:
                    raise _fail(path, f"tensor {name!r} has shape {list(shape)}; expected a vector or matrix")
                nbytes = math.prod(shape) * dtype.itemsize
                if end - begin != nbytes or begin < 0 or 8 + n + end > size:
                    raise _fail(path, f"tensor {name!r}: its offsets do not match its shape or the file size")
                total += nbytes
                if total > max_bytes:
                    raise _fail(path, f"tensors larger than the {max_bytes} byte limit")
                entries.append((name, dtype, shape, begin, nbytes, dtype_name == "BF16"))
            tensors = {}
            for name, dtype, shape, begin, nbytes, bf16 in entries:
                f.seek(8 + n + begin)
                array = np.frombuffer(f.read(nbytes), dtype=dtype).reshape(shape)
                tensors[name] = _float32(path, name, array, bf16)
            return tensors
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None


def read_npz(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, torch.Tensor]:
    """Every array of an .npz as float32; each member's .npy header is checked before reading its data,
    and arrays of Python objects (which only pickle can hold) are refused."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"not a readable npz archive ({exc})") from None
    tensors = {}
    total = 0
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            total += info.file_size
            if total > max_bytes:
                raise _fail(path, f"arrays larger than the {max_bytes} byte limit")
            try:
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    if dtype.hasobject:
                        raise _fail(path, f"array {name!r} holds Python objects (pickle); refused")
                    if dtype.kind != "f" or len(shape) > 2:
                        raise _fail(path, f"array {name!r} is {dtype} {list(shape)}; expected a float vector "
                                    "or matrix")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise _fail(path, f"array {name!r}: its header promises more data than the archive holds")
                    data = member.read(nbytes)
            except (ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise _fail(path, f"array {name!r} is malformed ({exc})") from None
            if len(data) != nbytes:
                raise _fail(path, f"array {name!r} is truncated")
            array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
            tensors[name] = _float32(path, name, np.ascontiguousarray(array.astype(np.float32)))
    return tensors


def _read_config(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise _fail(path, f"larger than {MAX_CONFIG_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object")
    return data


def _take(path: Path, tensors: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if name not in tensors:
        raise _fail(path, f"missing tensor {name!r} (has: {', '.join(sorted(tensors)) or 'none'})")
    tensor = tensors[name]
    if tuple(tensor.shape) != shape:
        raise _fail(path, f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(shape)}")
    return tensor


def _int_field(path: Path, cfg: Mapping[str, Any], name: str) -> int:
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, f"field {name!r} must be a positive integer, got {value!r}")
    return value


_HOOK = re.compile(r"^blocks\.(\d{1,5})\.hook_(resid_pre|resid_post|mlp_out|attn_out)$")


def _site(path: Path, given: str | None, found: str | None, how: str) -> str:
    if given is not None:
        parse_feature_site(given)
        if found is not None and found != given:
            raise _fail(path, f"the SAE was trained on {found} ({how}), not {given}")
        return given
    if found is None:
        raise _fail(path, f"cannot tell the SAE's site ({how}); name it, e.g. L12.resid_post")
    return found


def load_saelens(folder: Path, site: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> SparseAutoencoder:
    cfg_path, weights_path = folder / CONFIG, folder / SAELENS_WEIGHTS
    cfg = _read_config(cfg_path)
    d_in, d_sae = _int_field(cfg_path, cfg, "d_in"), _int_field(cfg_path, cfg, "d_sae")
    metadata: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    kwargs: dict[str, Any] = (cfg["activation_fn_kwargs"] if isinstance(cfg.get("activation_fn_kwargs"), dict)
                              else {})
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"
    unsupported = {
        "normalize_activations": cfg.get("normalize_activations") not in (None, False, "none"),
        "finetuning_scaling_factor": bool(cfg.get("finetuning_scaling_factor")),
        "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm")),
        "hook_head_index": cfg.get("hook_head_index", metadata.get("hook_head_index")) is not None,
    }
    for field, present in unsupported.items():
        if present:
            raise _fail(cfg_path, f"{field}={cfg.get(field, metadata.get(field))!r} is not supported")
    if architecture not in ("standard", "topk", "jumprelu"):
        raise _fail(cfg_path, f"architecture {architecture!r} is not supported (standard, topk, jumprelu)")
    hook = cfg.get("hook_name", cfg.get("hook_point", metadata.get("hook_name")))
    match = _HOOK.match(hook) if isinstance(hook, str) else None
    found = f"L{int(match.group(1))}.{match.group(2)}" if match else None
    tensors = read_safetensors(weights_path, max_bytes)
    threshold = None
    if architecture == "jumprelu":
        if "threshold" not in tensors and "log_threshold" in tensors:
            tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
        threshold = _take(weights_path, tensors, "threshold", (d_sae,))
    k = 0
    if architecture == "topk":
        given = cfg.get("k", kwargs.get("k"))
        if isinstance(given, bool) or not isinstance(given, int) or not 0 < given <= d_sae:
            raise _fail(cfg_path, f"topk needs an integer k in 1..d_sae, got {given!r}")
        k = given
    return _build(weights_path, dict(
        site=_site(cfg_path, site, found, f"hook_name {hook!r}"),
        W_enc=_take(weights_path, tensors, "W_enc", (d_in, d_sae)),
        b_enc=_take(weights_path, tensors, "b_enc", (d_sae,)),
        W_dec=_take(weights_path, tensors, "W_dec", (d_sae, d_in)),
        b_dec=_take(weights_path, tensors, "b_dec", (d_in,)),
        activation={"standard": "relu"}.get(architecture, architecture), k=k, threshold=threshold,
        subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)), source=str(folder), format="saelens"))


_SPARSIFY_HOOK = re.compile(r"^layers\.(\d{1,5})(\.mlp|\.self_attn|\.attention|\.attn)?$")


def load_sparsify(folder: Path, site: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> SparseAutoencoder:
    cfg_path, weights_path = folder / CONFIG, folder / SPARSIFY_WEIGHTS
    cfg = _read_config(cfg_path)
    d_in = _int_field(cfg_path, cfg, "d_in")
    for field in ("transcode", "skip_connection"):
        if cfg.get(field):
            raise _fail(cfg_path, f"{field}=true is not supported")
    if cfg.get("activation", "topk") != "topk":
        raise _fail(cfg_path, f"activation {cfg.get('activation')!r} is not supported (topk)")
    k = _int_field(cfg_path, cfg, "k")
    tensors = read_safetensors(weights_path, max_bytes)
    encoder = tensors.get("encoder.weight")
    if encoder is None or encoder.dim() != 2:
        raise _fail(weights_path, "missing 2-d tensor 'encoder.weight'")
    d_sae = int(encoder.shape[0])
    wanted = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32))
    if d_sae != wanted:
        raise _fail(weights_path, f"encoder has {d_sae} latents, the config says {wanted}")
    match = _SPARSIFY_HOOK.match(folder.name)
    found = None
    if match:
        kind = {None: "resid_post", ".mlp": "mlp_out"}.get(match.group(2), "attn_out")
        found = f"L{int(match.group(1))}.{kind}"
    return _build(weights_path, dict(
        site=_site(cfg_path, site, found, f"folder name {folder.name!r}"),
        W_enc=_take(weights_path, tensors, "encoder.weight", (d_sae, d_in)).T.contiguous(),
        b_enc=_take(weights_path, tensors, "encoder.bias", (d_sae,)),
        W_dec=_take(weights_path, tensors, "W_dec", (d_sae, d_in)),
        b_dec=_take(weights_path, tensors, "b_dec", (d_in,)),
        activation="topk", k=k, subtract_b_dec=True, source=str(folder), format="sparsify"))


_GEMMA_LAYER = re.compile(r"layer_(\d{1,5})")
_GEMMA_KIND = re.compile(r"gemma-scope-[^/]*-(res|mlp)\b")


def load_gemma_scope(folder: Path, site: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> SparseAutoencoder:
    weights_path = folder / GEMMA_SCOPE_WEIGHTS
    tensors = read_npz(weights_path, max_bytes)
    W_enc = tensors.get("W_enc")
    if W_enc is None or W_enc.dim() != 2:
        raise _fail(weights_path, "missing 2-d array 'W_enc'")
    d_in, d_sae = (int(d) for d in W_enc.shape)
    text = str(folder.resolve())
    layer, kind = _GEMMA_LAYER.search(text), _GEMMA_KIND.search(text)
    found = None
    if layer and kind:
        site_kind = "resid_post" if kind.group(1) == "res" else "mlp_out"
        found = f"L{int(layer.group(1))}.{site_kind}"
    return _build(weights_path, dict(
        site=_site(weights_path, site, found, "from the folder path"),
        W_enc=W_enc,
        b_enc=_take(weights_path, tensors, "b_enc", (d_sae,)),
        W_dec=_take(weights_path, tensors, "W_dec", (d_sae, d_in)),
        b_dec=_take(weights_path, tensors, "b_dec", (d_in,)),
        threshold=_take(weights_path, tensors, "threshold", (d_sae,)),
        activation="jumprelu", subtract_b_dec=False, source=str(folder), format="gemma-scope"))


def _build(path: Path, fields: dict[str, Any]) -> SparseAutoencoder:
    try:
        return SparseAutoencoder(**fields)
    except ValueError as exc:
        raise _fail(path, str(exc)) from None


def load_sae(folder: str | Path, site: str | None = None, d_model: int | None = None,
             max_bytes: int = DEFAULT_MAX_BYTES) -> SparseAutoencoder:
    """The SAE in `folder`, its format told by its files; `site` names where it reads when the folder
    does not say (and must agree when it does); `d_model` is checked against d_in."""
    folder = Path(folder).expanduser()
    if site is not None:
        try:
            parse_feature_site(site)
        except ValueError as exc:
            raise FeatureError(str(exc)) from None
    if not folder.is_dir():
        raise FeatureError(f"{folder}: not a folder")
    if (folder / SAELENS_WEIGHTS).is_file():
        sae = load_saelens(folder, site, max_bytes)
    elif (folder / SPARSIFY_WEIGHTS).is_file():
        sae = load_sparsify(folder, site, max_bytes)
    elif (folder / GEMMA_SCOPE_WEIGHTS).is_file():
        sae = load_gemma_scope(folder, site, max_bytes)
    else:
        raise FeatureError(f"{folder}: no {SAELENS_WEIGHTS} (SAELens), {SPARSIFY_WEIGHTS} (sparsify) or "
                           f"{GEMMA_SCOPE_WEIGHTS} (Gemma Scope)")
    if d_model is not None and sae.d_in != d_model:
        raise FeatureError(f"{folder}: the SAE reads vectors of width {sae.d_in}, the model's d_model is {d_model}")
    return sae


def save_saelens(sae: SparseAutoencoder, folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `sae` as SAELens reads it (cfg.json + sae_weights.safetensors, float32); returns the folder."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layer, kind = parse_feature_site(sae.site)
    architecture = {"relu": "standard"}.get(sae.activation, sae.activation)
    cfg: dict[str, Any] = {
        "architecture": architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
        "apply_b_dec_to_input": sae.subtract_b_dec, "normalize_activations": "none",
        "hook_name": f"blocks.{layer}.hook_{kind}", "hook_head_index": None,
        "activation_fn": "topk" if sae.activation == "topk" else "relu",
        "activation_fn_kwargs": {"k": sae.k} if sae.activation == "topk" else {},
    }
    if sae.activation == "topk":
        cfg["k"] = sae.k
    cfg["metadata"] = {"hook_name": cfg["hook_name"], **(metadata or {})}
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    weights = save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()})
    (folder / SAELENS_WEIGHTS).write_bytes(weights)  # a failed write is an OSError
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return folder
