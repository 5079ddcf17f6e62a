"""Steering vectors from files: the vector is read, anything else is refused with one line, and a file
too big to be a vector is refused from its header without reading its values."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors
from safetensors.numpy import save_file

from mechscope.tui import vector_files
from mechscope.tui.vector_files import MAX_VECTOR_VALUES, read_vector_file


def test_a_vector_is_read_from_npy_and_from_a_named_safetensors_tensor(tmp_path):
    vector = np.linspace(-1, 1, 32, dtype=np.float64)
    np.save(tmp_path / "row.npy", vector[None, :])
    save_file({"honest": (2 * vector).astype(np.float32), "other": np.zeros((4, 32), np.float32)},
              str(tmp_path / "two.safetensors"))
    got = read_vector_file(tmp_path / "row.npy")
    assert got.dtype == np.float32 and got.shape == (32,)
    np.testing.assert_allclose(got, vector, rtol=1e-6)
    np.testing.assert_allclose(read_vector_file(tmp_path / "two.safetensors", "honest"), 2 * vector, rtol=1e-6)


@pytest.mark.parametrize(("file", "message"), [
    ("matrix.npy", "matrix.npy holds an array of shape [4, 32], not a vector"),
    ("two.safetensors", "two.safetensors holds 2 tensors (honest, other); name the vector after one"),
    ("text.npy", "text.npy holds <U3 values, not numbers"),
    ("notes.txt", "notes.txt is not a .safetensors or .npy file"),
])
def test_what_is_not_one_vector_is_refused_in_one_line(tmp_path, file, message):
    np.save(tmp_path / "matrix.npy", np.zeros((4, 32), np.float32))
    np.save(tmp_path / "text.npy", np.array(["abc", "def"]))
    save_file({"honest": np.zeros(32, np.float32), "other": np.zeros(32, np.float32)},
              str(tmp_path / "two.safetensors"))
    (tmp_path / "notes.txt").write_text("0.1 0.2")
    with pytest.raises(ValueError) as caught:
        read_vector_file(tmp_path / file)
    assert str(caught.value) == message


def test_a_file_too_big_for_a_vector_is_refused_before_its_values_are_read(tmp_path, monkeypatch):
    big = MAX_VECTOR_VALUES + 1
    np.save(tmp_path / "big.npy", np.zeros(big, np.float32))
    save_file({"embed": np.zeros(big, np.float32)}, str(tmp_path / "weights.safetensors"))
    monkeypatch.setattr(vector_files.np, "array", lambda *a, **k: pytest.fail("npy values read"))
    real_open = safetensors.safe_open

    class HeaderOnly:
        """safe_open that fails the test if a tensor's values are read."""

        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            return self.inner.get_slice(name)

        def get_tensor(self, name):
            pytest.fail("safetensors values read")

    monkeypatch.setattr(safetensors, "safe_open", HeaderOnly)
    for file in ("big.npy", "weights.safetensors"):
        with pytest.raises(ValueError, match=f"{file} holds {big} values; a steering vector has at most"):
            read_vector_file(tmp_path / file)
