"""Where a model's parts run when accelerate split it over devices or offloaded it to CPU or disk."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechscope.engine.errors import LoadError
from mechscope.engine.hooks import Hook

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _as_device(value: Any) -> torch.device:
    if isinstance(value, int):
        return torch.device("cuda", value)
    return torch.device(value)


def execution_device(module: nn.Module) -> torch.device:
    """The device `module` computes on: its accelerate hook's execution device when it has one
    (its weights may sit on `meta` under offload), else the device of its first real tensor."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in [hook, *getattr(hook, "hooks", ())]:
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return _as_device(device)
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def map_tensors(change: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """`value` with `change` applied to every tensor inside it (tuples, lists and dicts kept)."""
    if isinstance(value, torch.Tensor):
        return change(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(change, v) for v in value)
    if isinstance(value, list):
        return [map_tensors(change, v) for v in value]
    if isinstance(value, dict):
        return {k: map_tensors(change, v) for k, v in value.items()}
    return value


def to_device(tree: Any, device: torch.device) -> Any:
    """Tensors inside tuples, lists and dicts moved to `device`; everything else unchanged."""
    return map_tensors(lambda t: t.to(device, non_blocking=True) if t.device != device else t, tree)


def loaded(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """`module.<name>` as a real tensor on the module's execution device, loading it from the CPU or
    disk copy when accelerate offloaded it (the parameter itself stays offloaded)."""
    value = getattr(module, name, None)
    if value is None or value.device.type != "meta":
        return value
    from accelerate.utils import align_module_device

    with align_module_device(module):
        return getattr(module, name)


def layers_are_split(embedding: nn.Module, layers: Iterable[nn.Module]) -> bool:
    device = execution_device(embedding)
    return any(execution_device(layer) != device for layer in layers)


def align_hooks(embedding: nn.Module, layers: Iterable[nn.Module]) -> list[Hook]:
    """Pre-hooks moving every decoder layer's arguments onto that layer's device, registered before the
    engine's own hooks so edits and cached layer calls see tensors where the layer runs (accelerate's
    own hook moves them only after every pre-hook has run). Empty on a single device."""
    layers = list(layers)
    if not layers_are_split(embedding, layers):
        return []

    def mover(device: torch.device):
        def hook(module, args, kwargs):
            return to_device(args, device), to_device(kwargs, device)

        return hook

    return [Hook("pre", layer, mover(execution_device(layer))) for layer in layers]


def _device_label(value: Any) -> str:
    if isinstance(value, int):
        return f"cuda:{value}"
    return str(value)


def layer_placements(model: nn.Module, layers_path: str, n_layers: int) -> list[str]:
    """Where each decoder layer's weights live ("cuda:0", "cpu", "disk"), from `hf_device_map`."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
        return [str(device)] * n_layers
    out = []
    for index in range(n_layers):
        name = f"{layers_path}.{index}"
        best, best_len = "cpu", -1
        for key, value in device_map.items():
            if (key == "" or name == key or name.startswith(key + ".")) and len(key) > best_len:
                best, best_len = _device_label(value), len(key)
        out.append(best)
    return out


def placement_summary(model: nn.Module, layers_path: str, n_layers: int) -> str:
    """Runs of layers per device, e.g. "cuda:0 L0–15 · cuda:1 L16–31" or "cpu L0–1 · disk L2"."""
    places = layer_placements(model, layers_path, n_layers)
    if not places:
        return ""
    runs: list[tuple[str, int, int]] = []
    for index, place in enumerate(places):
        if runs and runs[-1][0] == place:
            runs[-1] = (place, runs[-1][1], index)
        else:
            runs.append((place, index, index))
    return " · ".join(f"{place} L{a}" if a == b else f"{place} L{a}–{b}" for place, a, b in runs)


# ---------------------------------------------------------------- arguments

def parse_device_map(value: Any) -> str | dict | None:
    """None, a strategy name, a dict, or a path to a JSON file holding a dict (module name -> device)."""
    if value is None or isinstance(value, dict):
        return _check_map(value, "the device map") if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise LoadError(f"device_map must be a strategy, a dict or a JSON file, not {type(value).__name__}")
    if value in DEVICE_MAP_STRATEGIES:
        return value
    path = Path(value).expanduser()
    if path.suffix.lower() == ".json" or path.is_file():
        try:
            data = json.loads(path.read_text())
        except OSError as error:
            raise LoadError(f"cannot read the device map {path}: {error.strerror or error}") from None
        except ValueError as error:
            raise LoadError(f"the device map {path} is not valid JSON: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise LoadError(f"the device map {path} must be a JSON object (module name -> device)")
        return _check_map(data, f"the device map {path}")
    raise LoadError(f"unknown device map {value!r}; use {', '.join(DEVICE_MAP_STRATEGIES)} or a .json file")


def _checkdevice_name(value: Any, where: str) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        if value in ("cpu", "disk", "mps", "cuda") or value.isdigit():
            return int(value) if value.isdigit() else value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
    raise LoadError(f"{where}: {value!r} is not a device (use a GPU index, cuda:N, cpu, mps or disk)")


def _check_map(data: dict, where: str) -> dict:
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise LoadError(f"{where}: module names must be strings")
        out[key] = _checkdevice_name(value, f"{where}, {key!r}")
    return out


def parse_max_memory(value: Any) -> dict | None:
    """None, a dict, or "0=20GiB,1=20GiB,cpu=64GiB" -> accelerate's max_memory (GPU keys as ints)."""
    if value is None:
        return None
    if isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, sep, amount = part.partition("=")
            if not sep or not amount.strip():
                raise LoadError(f"max memory {part!r} should look like 0=20GiB or cpu=64GiB")
            items.append((key.strip(), amount.strip()))
        value = dict(items)
    if not isinstance(value, dict) or not value:
        raise LoadError("max_memory must map devices to sizes, e.g. {0: '20GiB', 'cpu': '64GiB'}")
    from accelerate.utils import convert_file_size_to_int

    out: dict[int | str, int | str] = {}
    for key, amount in value.items():
        device = _checkdevice_name(key, "max_memory")
        if isinstance(device, str) and device.startswith("cuda:"):
            device = int(device[5:])
        try:
            size = amount if isinstance(amount, int) else convert_file_size_to_int(str(amount))
        except ValueError:
            raise LoadError(f"max_memory: {amount!r} is not a size (e.g. 20GiB, 500MB)") from None
        if size < 0:
            raise LoadError(f"max_memory: {amount!r} is negative")
        out[device] = size
    return out





def meta_model(config: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The model built on the meta device: shapes and module names, no memory."""
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # as from_pretrained does: a tied unembedding is no second copy
    return model


def resolve_map(model: torch.nn.Module, device_map: Any, max_memory: dict | None,
                dtype: torch.dtype) -> dict[str, Any]:
    """The device map accelerate would use: `device_map` as given, or inferred for a strategy."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if isinstance(device_map, dict):
        names = {name for name, _ in model.named_modules()}
        unknown = [key for key in device_map if key and key not in names]
        if unknown:
            raise LoadError(f"the device map names {unknown[0]!r}, which is not a module of the model")
        missing = [name for name, _ in model.named_parameters(remove_duplicate=False)
                   if _place_of(device_map, name) is None]
        if missing:
            raise LoadError(f"the device map does not fit the model: it gives no device to {len(missing)} "
                            f"parameters (the first is {missing[0]})")
        _check_tied(model, device_map)
        return device_map
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if device_map in ("auto", "balanced", "balanced_low_0"):
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                         dtype=dtype, low_zero=device_map == "balanced_low_0")
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)


def _place_of(device_map: dict[str, Any], name: str) -> Any:
    best = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len,
               default=None)
    return device_map.get(best) if best is not None else None


def _check_tied(model: torch.nn.Module, device_map: dict[str, Any]) -> None:
    """Tied weights (a shared embedding and unembedding) have one copy: accelerate cannot put them
    in two places, and fails only at the first forward if asked to."""
    from accelerate.utils import find_tied_parameters

    for group in find_tied_parameters(model):
        places = {device_name(_place_of(device_map, name)) for name in group}
        if len(places) > 1:
            raise LoadError(f"{' and '.join(sorted(group))} are one tied weight; the device map puts them on "
                            f"{' and '.join(sorted(places))}: give their modules the same device")


def device_name(value: Any) -> str:
    """A device map's value as a device name (accelerate writes CUDA devices as bare ints)."""
    return f"cuda:{value}" if isinstance(value, int) else str(value)


__all__ = ["align_hooks", "device_name", "execution_device", "layer_placements", "loaded", "map_tensors", "meta_model",
           "parse_device_map", "parse_max_memory", "placement_summary", "resolve_map", "to_device"]
