"""Mutated session files (byte flips, truncations, junk lines) give SessionError or a valid session, nothing else."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechscope.engine import HeadAblation, HeadScale, Metric, SteeringVector
from mechscope.sessions import Session, SessionError

FILES = ("events.jsonl", "session.json", "tensors/vector-000003.safetensors")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid session covering every event kind that needs no engine to record."""
    root = tmp_path_factory.mktemp("fuzz-root")
    session = Session.create("fuzz", root=root)
    session.record_prompt("When Mary and John", "When John and Mary")
    session.record_metric(Metric("logit_diff", " Mary", " John"))
    session.save_vector("happy", np.linspace(-1, 1, 8, dtype=np.float32))
    session.record_intervention("added", 1, HeadAblation(1, 2, positions=[0, 2]))
    session.record_intervention("added", 2, SteeringVector(0, "happy", 2.0, positions="last"))
    session.record_intervention("toggled", 1, enabled=False)
    session.record_intervention("changed", 2, HeadScale(0, 1, 0.5))
    session.record_reference_prompts(["The cat sat", "One two three"])
    session.record_note("ünïcödé note ✓")
    session.close()
    return session.path


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from([
        b"\n", b"junk\n", b"{}\n", b"[]\n", b"null\n", b'{"seq": 1}\n', b"\xff\xfe\n", b"[" * 5000 + b"\n",
        b'{"seq": 99, "time": 1e999, "kind": "note", "text": "x"}\n',
        b'{"seq": 99, "time": 1, "kind": "run"}\n', b'{"seq": 99, "time": 1, "kind": "vector", '
        b'"name": "v", "file": "tensors/vector-000003.safetensors", "shape": [9]}\n',
    ])),
    st.tuples(st.just("delete_line"), st.integers(0, 100), st.just(0)),
)


def _mutate(data: bytes, op: str, where: int, arg) -> bytes:
    if not data:
        return arg if isinstance(arg, bytes) else data
    pos = where % (len(data) + 1)
    if op == "flip":
        pos = min(pos, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ arg]) + data[pos + 1:]
    if op == "truncate":
        return data[:pos]
    if op == "insert":
        return data[:pos] + arg + data[pos:]
    lines = data.split(b"\n")
    del lines[where % len(lines)]
    return b"\n".join(lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(FILES), mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_sessions_raise_only_session_error(pristine: Path, target: str, mutations) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "fuzz"
        shutil.copytree(pristine, copy)
        path = copy / target
        data = path.read_bytes()
        for op, where, arg in mutations:
            data = _mutate(data, op, where, arg)
        path.write_bytes(data)
        Session.list(Path(tmp))  # listing never raises, whatever is on disk
        try:
            session = Session.open(copy)
        except SessionError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        state = session.state()  # whatever loaded must fold into a usable state
        assert all(isinstance(ident, int) for ident, _ in state.interventions)
        for vector in state.vectors.values():
            assert vector.dtype == np.float32
