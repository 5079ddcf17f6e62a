"""Read a steering vector from a .safetensors or .npy file, never unpickling anything."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# The widest residual streams are 16k; a file naming more values than this is not a vector, and is
# refused from its header before anything is read (a model's weights picked by mistake).
MAX_VECTOR_VALUES = 1 << 20


def read_vector_file(path: str | Path, name: str | None = None) -> np.ndarray:
    """The 1-D float32 vector stored in `path`; ValueError with one line for the user otherwise.

    A .safetensors file may hold several tensors: the one called `name` is taken, or the only one.
    A [1, d_model] array is accepted as a vector. Only the chosen tensor is read, after its shape.
    """
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            mapped = np.load(file, mmap_mode="r", allow_pickle=False)
            _check_shape(file, mapped.shape)
            array = np.array(mapped)  # read once its shape is a vector's
        elif suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="numpy") as tensors:
                names = list(tensors.keys())
                if name is not None and name in names:
                    chosen = name
                elif len(names) == 1:
                    chosen = names[0]
                else:
                    listed = ", ".join(sorted(names)[:8]) + (", …" if len(names) > 8 else "") or "none"
                    raise ValueError(f"{file.name} holds {len(names)} tensors ({listed}); "
                                     "name the vector after one")
                _check_shape(file, tensors.get_slice(chosen).get_shape())
                array = tensors.get_tensor(chosen)
        else:
            raise ValueError(f"{file.name} is not a .safetensors or .npy file")
    except FileNotFoundError:
        raise ValueError(f"no such file: {file}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        if str(exc).startswith(file.name):
            raise
        raise ValueError(f"{file.name} is not a readable {suffix} array ({exc})") from None
    except Exception as exc:  # safetensors raises its own error type on a corrupt header
        raise ValueError(f"{file.name} is not a readable {suffix} file ({exc})") from None
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{file.name} holds {array.dtype} values, not numbers")
    return array.reshape(-1).astype(np.float32)


def _check_shape(file: Path, shape: list[int] | tuple[int, ...]) -> None:
    """A vector is [d] or [1, d] (or [d, 1]) with at most MAX_VECTOR_VALUES values."""
    shape = list(shape)
    if not (len(shape) == 1 or (len(shape) == 2 and 1 in shape)):
        raise ValueError(f"{file.name} holds an array of shape {shape}, not a vector")
    if (values := math.prod(shape)) > MAX_VECTOR_VALUES:
        raise ValueError(f"{file.name} holds {values} values; a steering vector has at most {MAX_VECTOR_VALUES}")
