"""Fuzz `sessions show`, `replay --check` and `export` with mutated real sessions; prints a JSON report.

Run as a module (the test does, in a subprocess under a memory limit):
    python -m tests.sessions.fuzz_sessions --examples 200 --scripts 3
A session is recorded on a tiny random Llama saved as a folder; each case copies it, applies one to
three mutations (a JSON field replaced by an extreme value of any type, bit flips, truncations,
junk lines, lone surrogates, wrong tensor ranks and dtypes, huge or nested tensor headers, symlinks
out of the folder, FIFOs) and runs the three commands in-process. A case fails on an exception
escaping the command, an exit code other than 0/1/2, an error message longer than 1,000 characters,
a command running past its alarm (a hang), or an exported script that uses a name the template does
not. Some exported scripts are also run in subprocesses. Only the CLI and `Session` are used, so the
same runner measures any version of mechscope.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]
ALARM_SECONDS = 15
SENTINEL = "@@MUTATED@@"
_NAMES = itertools.count()

HOSTILE = '"""; import os; os.system("touch PWNED"); """'
EXTREMES = [
    "null", "true", "false", "0", "-1", "1", "1e999", "-1e999", "1e308", "5e-324", "-0.0",
    "9" * 5000, "123456789012345678901234567890", "NaN", "Infinity", "[]", "{}", "[0]", "[-1]",
    "[1000000000]", "[1, 2, 3]", "[[1, 2], [3, 4]]", "[" * 3000 + "]" * 3000, '{"a": ' * 200 + "1" + "}" * 200,
    json.dumps("x" * 2_000_000), '"\\ud800"', '"a\\udfffb"', json.dumps(HOSTILE),
    json.dumps("\n# injected\nimport os\n"), json.dumps("x\u2028y\rz\x0c"), '"\\u0000"', '""',
    json.dumps("L0.H0"), json.dumps("tensors/../../../etc/passwd.safetensors"),
    json.dumps("tensors/vector-000999.safetensors"), json.dumps("prompt"), json.dumps("sweep"),
    json.dumps({"kind": "head_ablation", "layer": 0, "head": 0}), "2147483648", "9223372036854775808",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                      max_size=4),
    max_leaves=8,
)
raw_values = st.sampled_from(EXTREMES) | json_values.map(json.dumps)

mutation = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(["events", "manifest"]), st.integers(0, 10**6),
              st.integers(0, 10**6), raw_values),
    st.tuples(st.just("flip"), st.sampled_from(["events", "manifest", "tensor"]),
              st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.sampled_from(["events", "manifest", "tensor"]),
              st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from([
        b"\n", b"junk\n", b"{}\n", b"null\n", b"\xff\xfe\n", b"[" * 5000 + b"\n",
        b'{"seq": 9999, "time": 1e999, "kind": "note", "text": "x"}\n',
        b'{"seq": 9999, "time": 1, "kind": "note", "text": "\\ud800"}\n',
        b'{"seq": 9999, "time": 1, "kind": "generate", "prompt": "hi", "corrupted": null, '
        b'"interventions": [], "params": {"max_new_tokens": 1000000000, "temperature": 0.0, '
        b'"seed": 0}, "token_ids": [1], "tokens": ["x"]}\n',
        b'{"seq": 99999999999999999999999, "time": 1, "kind": "note", "text": "x"}\n',
    ])),
    st.tuples(st.just("tensor"), st.sampled_from(["vector", "sweep"]), st.sampled_from([
        "rank0", "rank1", "rank3", "i32", "bf16", "f64", "huge_header", "header_past_end",
        "nested_header", "huge_shape", "two_tensors", "nan"])),
    st.tuples(st.just("reshape"), st.sampled_from(["vector", "sweep"]), st.sampled_from([0, 1, 2, 3])),
    st.tuples(st.just("link"), st.sampled_from(["events", "manifest", "tensor", "tensors_dir"]),
              st.sampled_from(["/etc/passwd", "/dev/zero", "outside", "fifo"])),
    st.tuples(st.just("directory"), st.sampled_from(["events", "manifest", "tensor"]),
              st.integers(0, 10**6)),
)


def _safetensors(header: dict[str, Any], payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def _tensor_variant(path: Path, key: str, variant: str) -> None:
    import numpy as np

    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    shape = header[key]["shape"]
    count = int(np.prod(shape))
    values = np.arange(count, dtype=np.float32)
    def write(dtype: str, new_shape: list[int], raw: bytes) -> None:
        path.write_bytes(_safetensors({key: {"dtype": dtype, "shape": new_shape,
                                             "data_offsets": [0, len(raw)]}}, raw))
    if variant == "rank0":
        write("F32", [], values[:1].tobytes())
    elif variant == "rank1":
        write("F32", [count], values.tobytes())
    elif variant == "rank3":
        write("F32", [*shape, 1], values.tobytes())
    elif variant == "i32":
        write("I32", shape, values.astype(np.int32).tobytes())
    elif variant == "bf16":
        write("BF16", shape, values.astype(np.float32).view(np.uint32).astype(np.uint16).tobytes()
              if count else b"")
    elif variant == "f64":
        write("F64", shape, values.astype(np.float64).tobytes())
    elif variant == "huge_header":
        path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    elif variant == "header_past_end":
        path.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    elif variant == "nested_header":
        nested = b"[" * 5000 + b"]" * 5000
        path.write_bytes(struct.pack("<Q", len(nested)) + nested)
    elif variant == "huge_shape":
        path.write_bytes(_safetensors({key: {"dtype": "F32", "shape": [2**31, 2**31],
                                             "data_offsets": [0, 2**64 - 1]}}, b""))
    elif variant == "two_tensors":
        raw = values.tobytes()
        path.write_bytes(_safetensors({key: {"dtype": "F32", "shape": shape, "data_offsets": [0, len(raw)]},
                                       "other": {"dtype": "F32", "shape": shape,
                                                 "data_offsets": [len(raw), 2 * len(raw)]}}, raw + raw))
    elif variant == "nan":
        write("F32", shape, np.full(count, np.nan, dtype=np.float32).tobytes())


def _reshape(folder: Path, prefix: str, rank: int) -> None:
    """Give a vector or sweep tensor another rank, and its event the matching shape."""
    import numpy as np

    events = folder / "events.jsonl"
    if events.is_symlink() or not events.is_file():
        return
    key = "vector" if prefix == "vector" else "values"
    shape = [[], [6], [2, 3], [1, 2, 3]][rank]
    raw = np.arange(int(np.prod(shape)), dtype=np.float32).tobytes()
    lines = events.read_text(errors="surrogateescape").split("\n")
    for index, line in enumerate(lines):
        compact = line.replace(" ", "")
        if f'"kind":"{prefix}"' not in compact:
            continue
        data = json.loads(line)
        # a sweep is a request event naming its matrix under arrays.values; a vector names its file
        entry = data.get("arrays", {}).get("values") if data.get("kind") == "request" else data
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        tensor = folder / entry["file"]
        if tensor.is_symlink() or not tensor.is_file():
            return
        tensor.write_bytes(_safetensors({key: {"dtype": "F32", "shape": shape,
                                               "data_offsets": [0, len(raw)]}}, raw))
        entry["shape"] = shape
        data.pop("row_labels", None)
        data.pop("col_labels", None)
        lines[index] = json.dumps(data)
    events.write_text("\n".join(lines), errors="surrogateescape")


def _replace_field(line: str, path_seed: int, raw: str) -> str:
    data = json.loads(line)
    rng = random.Random(path_seed)
    node, steps = data, rng.randint(1, 4)
    for _ in range(steps):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
            if isinstance(node, list) else []
        if not children:
            break
        key, child = rng.choice(children)
        if not isinstance(child, (dict, list)) or not child or rng.random() < 0.4:
            node[key] = SENTINEL
            break
        node = child
    else:
        return line
    return json.dumps(data).replace(json.dumps(SENTINEL), raw, 1)


def apply(folder: Path, mutation: tuple, outside: Path) -> None:
    files = {"events": folder / "events.jsonl", "manifest": folder / "session.json"}
    tensors = sorted((folder / "tensors").glob("*.safetensors")) if (folder / "tensors").is_dir() else []
    op = mutation[0]
    if op == "field":
        _, which, line_seed, path_seed, raw = mutation
        path = files[which]
        if path.is_symlink() or not path.is_file():
            return
        text = path.read_text(errors="surrogateescape")
        if which == "manifest":
            try:
                path.write_text(_replace_field(text, path_seed, raw), errors="surrogateescape")
            except ValueError:
                return
            return
        lines = text.split("\n")
        index = line_seed % max(1, len(lines) - 1)
        try:
            lines[index] = _replace_field(lines[index], path_seed, raw)
        except ValueError:
            return
        path.write_text("\n".join(lines), errors="surrogateescape")
        return
    if op in ("flip", "truncate"):
        which = mutation[1]
        path = files.get(which) or (tensors[mutation[2] % len(tensors)] if tensors else None)
        if path is None or path.is_symlink() or not path.is_file():
            return
        data = path.read_bytes()
        if not data:
            return
        pos = mutation[2] % len(data)
        data = data[:pos] + bytes([data[pos] ^ mutation[3]]) + data[pos + 1:] if op == "flip" else data[:pos]
        path.write_bytes(data)
        return
    if op == "insert":
        path = files["events"]
        if path.is_symlink() or not path.is_file():
            return
        data = path.read_bytes()
        cut = data.rfind(b"\n", 0, mutation[1] % (len(data) + 1)) + 1
        path.write_bytes(data[:cut] + mutation[2] + data[cut:])
        return
    if op == "tensor":
        prefix, variant = mutation[1], mutation[2]
        key = "vector" if prefix == "vector" else "values"
        for path in tensors:
            if path.name.startswith(prefix) and path.is_file() and not path.is_symlink():
                _tensor_variant(path, key, variant)
        return
    if op == "reshape":
        _reshape(folder, mutation[1], mutation[2])
        return
    if op == "directory":  # a file replaced by a directory of the same name
        which = mutation[1]
        path = files.get(which) or (tensors[mutation[2] % len(tensors)] if tensors else None)
        if path is None or path.is_symlink() or not path.is_file():
            return
        path.unlink()
        path.mkdir()
        return
    if op == "link":
        which, target = mutation[1], mutation[2]
        if which == "tensors_dir":
            path = folder / "tensors"
        elif which == "tensor":
            if not tensors:
                return
            path = tensors[0]
        else:
            path = files[which]
        if path.is_dir() and not path.is_symlink():
            outside_dir = outside / f"tensors-{next(_NAMES)}"
            shutil.copytree(path, outside_dir, symlinks=True)
            shutil.rmtree(path)
            os.symlink(outside_dir, path)
            return
        copy = outside / f"{path.name}-{next(_NAMES)}"
        if path.is_file() and not path.is_symlink():  # never read through a link (/dev/zero) or a FIFO
            shutil.copy(path, copy)
        path.unlink(missing_ok=True)
        if target == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(copy if target == "outside" else target, path)


class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def run_command(argv: list[str]) -> tuple[int | str, str]:
    """Run the CLI in-process; (exit code or a failure description, stderr)."""
    from mechscope.cli import main

    # Strict UTF-8 text streams, as a terminal has: printing a lone surrogate fails as it would there.
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    signal.alarm(ALARM_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: int | str = main(argv)
    except Hang:
        code = "hang"
    except SystemExit as exc:
        code = f"SystemExit({exc.code})"
    except BaseException as exc:  # what the fuzz looks for: anything escaping the command
        code = f"traceback: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.alarm(0)
    with contextlib.suppress(Exception):
        err.flush()
    return code, err.buffer.getvalue().decode("utf-8", errors="replace")  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=int(os.environ.get("MECHSCOPE_FUZZ_EXAMPLES", 150)))
    parser.add_argument("--scripts", type=int, default=3, help="exported scripts to run")
    parser.add_argument("--output", help="write the JSON report here (default stdout)")
    options = parser.parse_args()

    # No file this process writes may grow past 256 MiB (a mutation gone wrong must not fill the disk).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _alarm)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
    work = Path(tempfile.mkdtemp(prefix="mechscope-fuzz-"))
    os.environ["MECHSCOPE_DATA_DIR"] = str(work / "data")
    os.environ["MECHSCOPE_QUIET"] = "1"
    import logging

    logging.disable(logging.WARNING)
    from mechscope.engine import Engine
    from mechscope.engine.testing import tiny_model, tiny_tokenizer
    from tests.sessions.export_ast import foreign_names, template_names
    from tests.sessions.helpers import record_ioi_session

    model_dir = work / "model"
    tiny_model("llama", seed=0).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    engine = Engine.load(str(model_dir), device="cpu")
    session = record_ioi_session(engine, "pristine")
    if hasattr(session, "close"):
        session.close()
    pristine = session.path
    reference_file = work / "reference.py"
    code, err = run_command(["export", str(pristine), "-o", str(reference_file)])
    assert code == 0, err
    allowed = template_names(reference_file.read_text())

    import mechscope.cli as cli_package

    def cached_engine(args: Any, source: Any = None) -> Any:
        return engine

    for module_name in ("mechscope.cli.replay", "mechscope.cli"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "load_engine_or_exit"):
            module.load_engine_or_exit = cached_engine  # type: ignore[attr-defined]
    del cli_package

    cases = work / "cases"
    outside = work / "outside"
    cases.mkdir()
    outside.mkdir()
    failures: list[dict[str, Any]] = []
    scripts: list[Path] = []
    counter = {"cases": 0, "exported": 0, "exit": {}}
    started = time.perf_counter()

    @settings(max_examples=options.examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutations=st.lists(mutation, min_size=1, max_size=3))
    def case(mutations: list[tuple]) -> None:
        counter["cases"] += 1
        number = counter["cases"]
        folder = cases / f"c{number:04d}"
        shutil.copytree(pristine, folder, symlinks=True)
        for item in mutations:
            with contextlib.suppress(Exception):  # a mutation that no longer applies (file already broken)
                apply(folder, item, outside)
        script = work / "scripts" / f"c{number:04d}.py"
        script.parent.mkdir(exist_ok=True)
        commands = [["sessions", "show", str(folder)],
                    ["replay", str(folder), "--check", "--model", str(model_dir)],
                    ["export", str(folder), "-o", str(script)]]
        for argv in commands:
            code, err = run_command(argv)
            counter["exit"][str(code)[:40]] = counter["exit"].get(str(code)[:40], 0) + 1
            problem = None
            if not isinstance(code, int):
                problem = code
            elif code not in (0, 1, 2):
                problem = f"exit code {code}"
            elif any(len(line) > 1000 for line in err.splitlines()):
                problem = "an error line longer than 1000 characters"
            elif code == 2 and not err.strip().splitlines()[-1:][0].startswith("error: "):
                problem = f"exit 2 without an error line: {err[-200:]!r}"
            if problem is None and argv[0] == "export" and code == 0:
                counter["exported"] += 1
                extra = foreign_names(script.read_text(), allowed)
                if extra:
                    problem = f"exported script uses {sorted(extra)[:5]}"
                elif len(scripts) < options.scripts and script.read_bytes() != reference_file.read_bytes():
                    scripts.append(script)
            if problem is not None:
                failures.append({"case": number, "command": argv[0] if argv[0] != "sessions" else "show",
                                 "problem": problem[:300], "mutations": repr(mutations)[:300]})
        code, err = run_command(["sessions", "list"])
        if code != 0:
            failures.append({"case": number, "command": "sessions list", "problem": str(code)[:300],
                             "mutations": repr(mutations)[:300]})
        shutil.rmtree(folder, ignore_errors=True)  # each listing sees one mutated session

    os.environ["MECHSCOPE_DATA_DIR"] = str(cases.parent / "cases-root")
    (cases.parent / "cases-root").mkdir()
    os.symlink(cases, cases.parent / "cases-root" / "sessions")
    case()
    seconds = time.perf_counter() - started

    script_results = []
    for script in scripts:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run([sys.executable, str(script), str(model_dir)], capture_output=True,
                                  text=True, timeout=300, cwd=work, env=env)
            result = {"script": script.name, "exit": proc.returncode,
                      "traceback": "Traceback" in proc.stderr, "stderr": proc.stderr[-300:]}
        except subprocess.TimeoutExpired:
            result = {"script": script.name, "exit": "hang", "traceback": False, "stderr": ""}
        script_results.append(result)
        if result["exit"] not in (0, 2) or result["traceback"]:
            failures.append({"case": script.name, "command": "exported script",
                             "problem": f"exit {result['exit']}: {result['stderr']}"[:300],
                             "mutations": ""})
    if (work / "PWNED").exists():
        failures.append({"case": "-", "command": "exported script", "problem": "ran injected code",
                         "mutations": ""})
    with open("/proc/self/status") as status:  # VmHWM: this process's own peak, in KiB
        peak = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
    report = {"cases": counter["cases"], "commands": 4 * counter["cases"], "exported": counter["exported"],
              "scripts_run": script_results, "failures": failures, "failing_cases": len({f["case"] for f in failures}),
              "exit_codes": counter["exit"], "peak_rss_mib": round(peak / 1024, 1),
              "seconds": round(seconds, 1)}
    text = json.dumps(report, indent=1)
    if options.output:
        Path(options.output).write_text(text)
    else:
        print(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
