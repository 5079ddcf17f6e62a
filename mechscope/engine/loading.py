"""Load a causal LM (the demo, a local folder, a .gguf file or a cached hub id) safely and quietly."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechscope.engine.adapters import SUPPORTED_MODEL_TYPES, family_for, supported_families_text
from mechscope.engine.errors import LoadError
from mechscope.engine.model_cache import (
    DEMO_NAME,
    Progress,
    cache_dir,
    converted_manifest,
    demo_model_dir,
    first_line,
    gguf_model_dir,
    hub_model_dir,
    looks_like_hub_id,
    quiet_transformers,
    read_json,
    report,
    sha256_file,
    write_json_atomic,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclass
class LoadedModel:
    """A model ready for the engine: eval mode, no grads, on its device and dtype."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    name: str
    weights_digest: str


# ---------------------------------------------------------------- device and dtype

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` is cuda if available, else mps if available, else cpu; anything else must exist here."""
    if isinstance(device, torch.device):
        requested = device
    elif device in ("auto", "", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            requested = torch.device(device)
        except (RuntimeError, TypeError):
            raise LoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadError(f"device {str(requested)!r} is not available: no CUDA GPU found")
        if requested.index is not None and requested.index >= torch.cuda.device_count():
            raise LoadError(
                f"device {str(requested)!r} is not available: {torch.cuda.device_count()} GPU(s) found"
            )
    elif requested.type == "mps" and not _mps_available():
        raise LoadError("device 'mps' is not available on this machine")
    elif requested.type not in ("cpu", "cuda", "mps"):
        raise LoadError(f"unsupported device {str(requested)!r}; use auto, cpu, cuda, cuda:N or mps")
    return requested


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """`"auto"` is bf16 on a GPU (fp16 where bf16 is unsupported) and fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").lower().removeprefix("torch.")
    if name == "auto":
        device_type = torch.device(device).type
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device_type == "mps":
            return torch.float16  # bf16 on mps needs a recent macOS; fp16 works everywhere
        return torch.float32
    if name not in _DTYPE_NAMES:
        raise LoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPE_NAMES[name]


# ---------------------------------------------------------------- weights digest

def _file_fingerprint(paths: list[Path], root: Path) -> list[list]:
    """Names, sizes and mtimes: enough to notice a changed file without reading it."""
    return [[p.relative_to(root).as_posix(), (s := p.stat()).st_size, s.st_mtime_ns] for p in paths]


def folder_weights_digest(folder: Path) -> str:
    """sha256 (16 hex) of a folder's safetensors files, cached in the mechscope cache by fingerprint."""
    folder = folder.resolve()
    files = sorted(folder.glob("*.safetensors"))
    fingerprint = _file_fingerprint(files, folder)
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
    record_path = cache_dir() / "digests" / f"{key}.json"
    record = read_json(record_path)
    if record and record.get("fingerprint") == fingerprint and isinstance(record.get("digest"), str):
        return record["digest"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        sha256_file(path, digest)
    value = digest.hexdigest()[:16]
    with contextlib.suppress(OSError):  # a read-only cache only costs a recompute next time
        write_json_atomic(record_path, {"folder": str(folder), "fingerprint": fingerprint, "digest": value})
    return value


# ---------------------------------------------------------------- checks before any weight is read

def read_folder_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LoadError(f"{folder} has no config.json, so it is not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise LoadError(f"{config_path} is not valid JSON: {first_line(error)}") from None
    if not isinstance(config, dict):
        raise LoadError(f"{config_path} is not a JSON object")
    return config


def check_architecture(config: dict, where: str, trust_remote_code: bool = False) -> str:
    """Refuse non-causal and unsupported models from their config alone; returns the model type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise LoadError(f"the config of {where} has no model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        if config.get("auto_map") and not trust_remote_code:
            raise LoadError(
                f"{where} needs its own Python code to load (model type {model_type!r}); "
                "pass trust_remote_code only if you trust it"
            )
        family_for(model_type)  # raises UnsupportedArchitecture listing the supported families
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    declared_causal = any(a in causal_classes or a.endswith(CAUSAL_CLASS_SUFFIXES) for a in architectures)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (architectures and not declared_causal):
        kind = architectures[0] if architectures else model_type
        raise LoadError(
            f"{where} is a {kind} model, not a causal language model; mechscope needs a decoder-only LM "
            f"({supported_families_text()})"
        )
    text_type = (config.get("text_config") or {}).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES and text_type in SUPPORTED_MODEL_TYPES:
        return text_type
    family_for(model_type)  # raises UnsupportedArchitecture listing the supported families
    return model_type


def _safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickled:
        raise LoadError(
            f"{folder} has only pickle weights ({', '.join(pickled[:3])}); mechscope loads safetensors only "
            "because unpickling can run code. Convert it with save_pretrained(..., safe_serialization=True)"
        )
    raise LoadError(f"{folder} has no weights (*.safetensors)")


# ---------------------------------------------------------------- loading a folder

def _offload_dir(folder: Path) -> Path:
    """Where accelerate may write the weights it offloads to disk: one folder per model folder."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "offload" / key


def _load_folder(folder: Path, *, source: str, name: str, weights_digest: str | None, device: str,
                 dtype: str, device_map: Any, trust_remote_code: bool,
                 progress: Progress | None, max_memory: Any = None,
                 offload_folder: str | Path | None = None) -> LoadedModel:
    import transformers

    if not folder.is_dir():
        raise LoadError(f"no such file or folder: {folder}")
    config_dict = read_folder_config(folder)
    check_architecture(config_dict, str(folder), trust_remote_code)
    _safetensors_files(folder)
    from mechscope.engine.placement import parse_device_map, parse_max_memory

    device_map = parse_device_map(device_map)
    max_memory = parse_max_memory(max_memory)
    if max_memory is not None and device_map is None:
        device_map = "auto"  # a memory budget means accelerate places the layers
    if device_map is not None and device == "auto":
        # accelerate places the layers; "auto" only decides the dtype.
        target = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if weights_digest is None:
        report(progress, f"checking {name}", None)
        weights_digest = folder_weights_digest(folder)
    report(progress, f"loading {name} on {target} ({str(torch_dtype).removeprefix('torch.')})", 0.9)
    with quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except ValueError as error:
            if "trust_remote_code" in str(error):
                raise LoadError(
                    f"{name} needs its own Python code to load; pass trust_remote_code only if you trust it"
                ) from None
            raise LoadError(f"cannot read the config of {name}: {first_line(error)}") from None
        placement = device_map if device_map is not None else (
            None if target.type == "cpu" else {"": str(target)}
        )
        kwargs = dict(config=config, dtype=torch_dtype, use_safetensors=True, local_files_only=True,
                      trust_remote_code=trust_remote_code, device_map=placement)
        if isinstance(device_map, dict):  # a hand-written map: every module named must exist, all covered
            from mechscope.engine.placement import meta_model, resolve_map

            resolve_map(meta_model(config, torch_dtype), device_map, max_memory, torch_dtype)
        if device_map is not None:
            if max_memory is not None:
                kwargs["max_memory"] = max_memory
            offload = Path(offload_folder) if offload_folder is not None else _offload_dir(folder)
            offload.mkdir(parents=True, exist_ok=True)
            kwargs["offload_folder"] = str(offload)
        try:
            try:
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, attn_implementation="sdpa", **kwargs
                )
            except (ValueError, ImportError) as error:
                if not any(word in str(error) for word in ("sdpa", "scaled_dot_product_attention")):
                    raise
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, attn_implementation="eager", **kwargs
                )
        except torch.cuda.OutOfMemoryError:
            raise LoadError(f"{name} does not fit in the memory of {target}; try a smaller dtype or "
                            "device_map='auto'") from None
        except Exception as error:  # safetensors, OSError, torch: a corrupt or inconsistent checkpoint
            raise LoadError(f"cannot load the weights of {name}: {first_line(error)}") from None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except Exception as error:
            raise LoadError(f"cannot load the tokenizer of {name}: {first_line(error)}") from None
    model.eval()
    model.requires_grad_(False)
    report(progress, f"loaded {name}", 1.0)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, name=name,
                       weights_digest=weights_digest)


# ---------------------------------------------------------------- entry point

def load_model(source: str = "demo", device: str = "auto", dtype: str = "auto", device_map: Any = None,
               trust_remote_code: bool = False, progress: Progress | None = None,
               max_memory: Any = None, offload_folder: str | Path | None = None) -> LoadedModel:
    """Load `source`: "demo", a Hugging Face folder, a .gguf file, or a hub id (local cache first).

    `device_map` (None, "auto", "balanced", "sequential", a dict or a path to a JSON file) and
    `max_memory` ({0: "20GiB", "cpu": "64GiB"} or "0=20GiB,cpu=64GiB") go to accelerate; layers it
    puts on "disk" are read from `offload_folder` (default: a folder in the mechscope cache).
    Raises LoadError (UnsupportedArchitecture for unknown families) with a one-line message.
    """
    common = dict(device=device, dtype=dtype, device_map=device_map,
                  trust_remote_code=trust_remote_code, progress=progress, max_memory=max_memory,
                  offload_folder=offload_folder)
    if source == "demo":
        folder = demo_model_dir(progress)
        manifest = converted_manifest(folder) or {}
        return _load_folder(folder, source="demo", name=DEMO_NAME,
                            weights_digest=manifest.get("weights_digest"), **common)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, source=str(path.resolve()), name=path.resolve().name,
                            weights_digest=None, **common)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LoadError(f"{path} is a file but not a .gguf; pass a model folder, a .gguf file or a hub id")
        folder, manifest = gguf_model_dir(path, progress)
        return _load_folder(folder, source=str(path.resolve()), name=path.stem,
                            weights_digest=manifest.get("weights_digest"), **common)
    if looks_like_hub_id(source) and not source.startswith((".", "~")):
        folder = hub_model_dir(source, progress)
        return _load_folder(folder, source=source, name=source, weights_digest=None, **common)
    raise LoadError(f"no such file or folder: {source}")


__all__ = [
    "CAUSAL_CLASS_SUFFIXES", "LoadedModel", "PICKLE_WEIGHT_SUFFIXES", "check_architecture",
    "folder_weights_digest", "load_model", "read_folder_config", "resolve_device", "resolve_dtype",
]
