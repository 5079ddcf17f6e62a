"""Read a steering vector from a .safetensors or .npy file, never unpickling anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_vector_file(path: str | Path, name: str | None = None) -> np.ndarray:
    """The 1-D float32 vector stored in `path`; ValueError with one line for the user otherwise.

    A .safetensors file may hold several tensors: the one called `name` is taken, or the only one.
    A [1, d_model] array is accepted as a vector.
    """
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(file, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(file))
            if name is not None and name in tensors:
                array = tensors[name]
            elif len(tensors) == 1:
                array = next(iter(tensors.values()))
            else:
                names = ", ".join(sorted(tensors)) or "none"
                raise ValueError(f"{file.name} holds several tensors ({names}); name the vector after one")
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
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"{file.name} holds an array of shape {list(array.shape)}, not a vector")
    return array.astype(np.float32)
