"""Memory a model will need per device, from its config alone (weights on the meta device): `mechscope plan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from mechscope.engine.errors import LoadError
from mechscope.engine.placement import device_name, meta_model, resolve_map

# The engine keeps this many clean passes and patch sources (see core._CLEAN_CACHE_SIZE).
CLEAN_PASSES = 8
SOURCE_PASSES = 4


@dataclass
class DevicePlan:
    device: str
    layers: list[int] = field(default_factory=list)
    weights: int = 0  # bytes
    caches: int = 0
    sweep: int = 0
    budget: int | None = None  # bytes accelerate may use there; None: no limit known (disk)

    @property
    def total(self) -> int:
        return self.weights + self.caches + self.sweep

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget


@dataclass
class Plan:
    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    vocab_size: int
    parameters: int
    dtype: str
    prompt_tokens: int
    placement: str
    devices: list[DevicePlan]

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.devices)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size: float = n
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def model_config(source: str, trust_remote_code: bool = False) -> tuple[Any, str]:
    """The transformers config of `source` and a display name, reading no weights (a GGUF's header
    only)."""
    from mechscope.engine import model_cache

    if source == "demo":
        folder = model_cache.models_dir() / model_cache.DEMO_DIR_NAME
        if model_cache.converted_manifest(folder) is None:
            return _gguf_config(model_cache.demo_gguf_file()), model_cache.DEMO_NAME
        return _folder_config(folder, trust_remote_code), model_cache.DEMO_NAME
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_config(path, trust_remote_code), path.resolve().name
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LoadError(f"{path} is a file but not a .gguf; pass a model folder, a .gguf file or a hub id")
        return _gguf_config(path), path.stem
    if model_cache.looks_like_hub_id(source):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            config_path = Path(hf_hub_download(source, "config.json", local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise LoadError(f"{source!r} is not a local path and its config is not in the local "
                            "Hugging Face cache") from None
        return _folder_config(config_path.parent, trust_remote_code), source
    raise LoadError(f"no such file or folder: {source}")


def _folder_config(folder: Path, trust_remote_code: bool) -> Any:
    import transformers

    from mechscope.engine import loading

    config_dict = loading.read_folder_config(folder)
    loading.check_architecture(config_dict, str(folder), trust_remote_code)
    try:
        return transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                       local_files_only=True)
    except (ValueError, OSError) as error:
        raise LoadError(f"cannot read the config of {folder}: {str(error).splitlines()[0]}") from None


def _gguf_config(path: Path) -> Any:
    from mechscope.engine.adapters import family_for
    from mechscope.engine.gguf_check import check_gguf_model, gguf_config, read_gguf_header

    header = read_gguf_header(path)
    family_for(header.model_type)
    check_gguf_model(header)
    config = gguf_config(header)
    if config is None:
        raise LoadError(f"{path}: transformers cannot build a config for architecture {header.architecture!r}")
    return config


def plan(source: str, device_map: Any = None, max_memory: Any = None, dtype: str = "auto",
         device: str = "auto", prompt_tokens: int = 64, trust_remote_code: bool = False) -> Plan:
    """Per device: the weights, the engine's caches for `prompt_tokens`-token prompts and a head sweep."""
    from accelerate.utils import compute_module_sizes, get_max_memory

    from mechscope.engine.adapters import Adapter
    from mechscope.engine.loading import resolve_device, resolve_dtype
    from mechscope.engine.placement import (
        device_name,
        layer_placements,
        parse_device_map,
        parse_max_memory,
        placement_summary,
    )

    device_map = parse_device_map(device_map)
    max_memory = parse_max_memory(max_memory)
    if max_memory is not None and device_map is None:
        device_map = "auto"
    target = resolve_device(device) if device_map is None or device != "auto" else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    torch_dtype = resolve_dtype(dtype, target)
    config, name = model_config(source, trust_remote_code)
    model = meta_model(config, torch_dtype)
    adapter = Adapter(model)
    if device_map is None:
        index = target.index if target.index is not None else 0
        resolved: dict[str, Any] = {"": index if target.type == "cuda" else target.type}
    else:
        resolved = resolve_map(model, device_map, max_memory, torch_dtype)
    cast(Any, model).hf_device_map = resolved  # a plain attribute accelerate reads
    sizes = compute_module_sizes(model, dtype=torch_dtype)
    budgets = {device_name(k): v for k, v in (max_memory or get_max_memory()).items()}
    devices: dict[str, DevicePlan] = {}

    def entry(value: Any) -> DevicePlan:
        label = device_name(value)
        if label not in devices:
            devices[label] = DevicePlan(label, budget=None if label == "disk" else budgets.get(label))
        return devices[label]

    for module_name, value in resolved.items():
        entry(value).weights += sizes.get(module_name, 0)
    layer_places = placement_summary(model, adapter.family.layers, adapter.n_layers)
    places = layer_placements(model, adapter.family.layers, adapter.n_layers)
    width = torch.tensor([], dtype=torch_dtype).element_size()
    pos = prompt_tokens
    # A clean pass keeps every layer's input [1, pos, d_model] (the mask and rotary tables are shared
    # by all layers); a patch source adds z, attention, MLP and residual outputs per layer.
    per_layer_clean = pos * adapter.d_model * width
    per_layer_source = pos * (adapter.n_heads * adapter.d_head + 3 * adapter.d_model) * width
    shared = pos * pos * 4 + 2 * pos * adapter.d_head * width
    # A head sweep runs n_heads rows through a layer at once: the residual, q/k/v/o, the MLP's
    # hidden activations and (eager where patterns are read) the attention scores.
    rows = adapter.n_heads
    sweep_bytes = rows * pos * (6 * adapter.d_model + 3 * adapter.d_mlp + adapter.n_heads * pos) * width
    staged: dict[str, int] = {}
    for layer, place in enumerate(places):
        # an offloaded layer (disk, or CPU beside a GPU) runs on the main device: its activations live there
        offloaded = place == "disk" or (place == "cpu" and _execution_label(resolved) != "cpu")
        where = entry(_execution_label(resolved) if offloaded else place)
        where.layers.append(layer)
        where.caches += CLEAN_PASSES * per_layer_clean + SOURCE_PASSES * per_layer_source
        if offloaded:  # its weights are copied in for its forward, one layer at a time
            copy = sizes.get(f"{adapter.family.layers}.{layer}", 0)
            staged[where.device] = max(staged.get(where.device, 0), copy)
    for label, copy in staged.items():
        devices[label].weights += copy
    for plan_entry in devices.values():
        if plan_entry.layers:
            plan_entry.caches += (CLEAN_PASSES + SOURCE_PASSES) * shared
            plan_entry.sweep = sweep_bytes
    parameters = sum(p.numel() for p in model.parameters())
    ordered = sorted(devices.values(), key=lambda d: (d.device == "disk", d.device == "cpu", d.device))
    return Plan(name=name, n_layers=adapter.n_layers, n_heads=adapter.n_heads, d_model=adapter.d_model,
                d_mlp=adapter.d_mlp, vocab_size=adapter.vocab_size, parameters=parameters,
                dtype=str(torch_dtype).removeprefix("torch."), prompt_tokens=prompt_tokens,
                placement=layer_places, devices=ordered)


def _execution_label(resolved: dict[str, Any]) -> str:
    """Where offloaded layers compute: the first GPU of the map, else the CPU (accelerate's rule)."""
    gpus = [v for v in resolved.values() if device_name(v) not in ("cpu", "disk")]
    return device_name(gpus[0]) if gpus else "cpu"


def format_plan(result: Plan) -> str:
    lines = [
        f"model {result.name}: {result.n_layers} layers x {result.n_heads} heads, d_model {result.d_model}, "
        f"{result.parameters / 1e6:,.1f}M parameters, {result.dtype}",
        f"placement: {result.placement}",
        f"caches: {CLEAN_PASSES} clean passes + {SOURCE_PASSES} patch sources of {result.prompt_tokens} "
        f"tokens; head sweep: {result.n_heads} rows",
        "",
        f"{'device':<8} {'layers':>6} {'weights':>11} {'caches':>11} {'head sweep':>11} {'total':>11} "
        f"{'budget':>11}  fits",
    ]
    for d in result.devices:
        lines.append(f"{d.device:<8} {len(d.layers):>6} {_human(d.weights):>11} {_human(d.caches):>11} "
                     f"{_human(d.sweep):>11} {_human(d.total):>11} {_human(d.budget):>11}  "
                     f"{'yes' if d.fits else 'NO'}")
    absent = [d.device for d in result.devices if d.device.startswith("cuda") and
              int(d.device.partition(":")[2] or 0) >= torch.cuda.device_count()]
    if absent:
        lines.append(f"(planned for a machine with {', '.join(absent)}; not present on this one)")
    lines.append("")
    lines.append("fits" if result.fits else
                 "does not fit: give --max-memory, a device map that offloads (--device-map auto), "
                 "or a smaller --dtype")
    return "\n".join(lines)


__all__ = ["DevicePlan", "Plan", "format_plan", "model_config", "plan"]
