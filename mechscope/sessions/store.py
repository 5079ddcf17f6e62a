"""Session storage: a folder with an atomic manifest, an append-only fsynced event log and safetensors.

Layout of a session folder:
  session.json           manifest (schema version, name, created, model, versions), replaced atomically
  events.jsonl           one JSON object per line; each append is a single write followed by fsync
  tensors/*.safetensors  steering vectors and sweep matrices, written before the event naming them

Reading never runs code: JSON and safetensors only. Every line is validated on open; a truncated last
line (a crash mid-write) is dropped with a warning, anything else wrong raises SessionError naming the
file and line.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechscope.sessions.errors import SessionError
from mechscope.sessions.events import Event, event_from_json, validate_payload
from mechscope.sessions.outcomes import outcome_from_result
from mechscope.sessions.paths import check_name, generate_name, sessions_root

if TYPE_CHECKING:
    from mechscope.engine.interventions import Intervention, Metric

SCHEMA_VERSION = 1
MANIFEST_FILE = "session.json"
EVENTS_FILE = "events.jsonl"
TENSORS_DIR = "tensors"

logger = logging.getLogger(__name__)


@dataclass
class SessionState:
    """What resuming a session restores: the folded result of its events."""

    clean: str = ""
    corrupted: str | None = None
    metric: Metric | None = None
    interventions: list[tuple[int, Intervention]] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    reference_prompts: list[str] | None = None
    last_run: Event | None = None
    last_sweep: Event | None = None
    last_generate: Event | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def last_outcome(self) -> dict[str, Any] | None:
        """The last run's recorded outcome (top_ids, top_tokens, top_probs, metric, baseline_metric)."""
        return None if self.last_run is None else self.last_run["outcome"]

    @property
    def next_intervention_id(self) -> int:
        return max((ident for ident, _ in self.interventions), default=0) + 1


@dataclass(frozen=True)
class SessionSummary:
    """One row of `Session.list`. `error` is set (and the rest partial) for a session that won't load."""

    name: str
    path: Path
    model: str
    created: str
    n_events: int
    last_prompt: str
    error: str = ""


class _StateBuilder:
    """Folds events into a SessionState; raises ValueError (before changing anything) on a bad event."""

    def __init__(self) -> None:
        self.clean = ""
        self.corrupted: str | None = None
        self.metric: dict | None = None
        self.interventions: dict[int, Intervention] = {}
        self.vector_files: dict[str, str] = {}
        self.reference_prompts: list[str] | None = None
        self.last: dict[str, Event] = {}
        self.notes: list[str] = []

    def apply(self, event: Event) -> None:
        kind, payload = event.kind, event.payload
        if kind == "prompt":
            self.clean, self.corrupted = payload["clean"], payload["corrupted"]
        elif kind == "metric":
            self.metric = payload["metric"]
        elif kind == "intervention":
            self._apply_intervention(payload)
        elif kind == "vector":
            self.vector_files[payload["name"]] = payload["file"]
        elif kind == "reference_prompts":
            self.reference_prompts = list(payload["prompts"])
        elif kind == "note":
            self.notes.append(payload["text"])
        if kind == "run":
            self.clean, self.corrupted, self.metric = (payload["prompt"], payload["corrupted"],
                                                       payload["metric"])
        if kind in ("run", "sweep", "generate"):
            self.last[kind] = event

    def _apply_intervention(self, payload: dict[str, Any]) -> None:
        from mechscope.engine.interventions import Intervention

        action, ident = payload["action"], payload["id"]
        if action == "added":
            if ident in self.interventions:
                raise ValueError(f"intervention id {ident} is added twice")
            self.interventions[ident] = Intervention.from_dict(payload["intervention"])
            return
        if ident not in self.interventions:
            raise ValueError(f"intervention id {ident} is {action} but was never added (or was removed)")
        if action == "changed":
            self.interventions[ident] = Intervention.from_dict(payload["intervention"])
        elif action == "toggled":
            self.interventions[ident] = self.interventions[ident].with_enabled(payload["enabled"])
        else:
            del self.interventions[ident]

    def state(self, tensors: dict[str, np.ndarray]) -> SessionState:
        from mechscope.engine.interventions import Metric

        return SessionState(
            clean=self.clean,
            corrupted=self.corrupted,
            metric=None if self.metric is None else Metric.from_dict(self.metric),
            interventions=list(self.interventions.items()),
            vectors={name: tensors[file].copy() for name, file in self.vector_files.items()},
            reference_prompts=None if self.reference_prompts is None else list(self.reference_prompts),
            last_run=self.last.get("run"),
            last_sweep=self.last.get("sweep"),
            last_generate=self.last.get("generate"),
            notes=list(self.notes),
        )


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temp file, fsync it, then `os.replace` it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _jsonable(value: Any) -> Any:
    """Plain JSON types: tuples to lists, numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _model_manifest(engine: Any) -> dict[str, Any]:
    info = engine.info
    return {
        "source": str(engine.source),
        "name": str(getattr(info, "name", "")),
        "family": str(getattr(info, "family", "")),
        "weights_digest": str(getattr(engine, "weights_digest", "") or ""),
        "dtype": str(getattr(info, "dtype", "")),
        "device": str(getattr(info, "device", "")),
        "n_layers": int(getattr(info, "n_layers", 0)),
        "n_heads": int(getattr(info, "n_heads", 0)),
    }


def _line_of(text: str, needle: str) -> int:
    index = text.find(needle)
    return 1 if index < 0 else text.count("\n", 0, index) + 1


def _load_manifest(path: Path) -> dict[str, Any]:
    """Read and validate session.json; SessionError as `path:line: reason`."""
    if not path.is_file():
        raise SessionError(f"{path}: missing (not a mechscope session folder)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SessionError(f"{path}:{line}: not UTF-8 text (not a mechscope session file)") from None
    try:
        manifest = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise SessionError(f"{path}:1: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise SessionError(f"{path}:1: the manifest must be a JSON object")
    version = manifest.get("schema_version")
    line = _line_of(text, '"schema_version"')
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SessionError(f"{path}:{line}: schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise SessionError(
            f"{path}:{line}: schema version {version} is newer than this mechscope supports "
            f"({SCHEMA_VERSION}); upgrade mechscope to open this session"
        )
    for key, kind in (("name", str), ("created", str)):
        if not isinstance(manifest.get(key), kind):
            raise SessionError(f"{path}:{_line_of(text, repr(key)[1:-1])}: {key} must be a string")
    model = manifest.get("model")
    if model is not None and not (isinstance(model, dict) and isinstance(model.get("source"), str)):
        line = _line_of(text, '"model"')
        raise SessionError(f"{path}:{line}: model must be null or an object with a source string")
    return manifest


def _load_tensor(session_path: Path, file: str, key: str, shape: list[int], where: str) -> np.ndarray:
    """Load one named tensor, checking it exists, parses as safetensors and has the recorded shape."""
    path = session_path / file
    if not path.is_file():
        raise SessionError(f"{where}: tensor file {file} is missing")
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for any malformed file
        raise SessionError(f"{where}: {path} is not a valid safetensors file ({exc})") from None
    array = arrays.get(key)
    if array is None or array.dtype.kind != "f":
        raise SessionError(f"{where}: {path} has no float tensor named {key!r}")
    if list(array.shape) != list(shape):
        raise SessionError(f"{where}: {path} holds shape {list(array.shape)}, the event says {shape}")
    return array.astype(np.float32)


class Session:
    """A recorded exploration: create, open, record events, fold them into a state, rename, delete.

    Writers hold an exclusive lock on the event log (POSIX) so two processes never interleave events;
    readers (`mechscope replay`, the sessions screen) take no lock.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], events: list[Event],
                 warnings: list[str], valid_size: int, needs_newline: bool,
                 tensors: dict[str, np.ndarray], builder: _StateBuilder) -> None:
        self.path = path
        self.manifest = manifest
        self.events = events
        self.warnings = warnings
        self._valid_size = valid_size  # bytes of events.jsonl holding complete events
        self._needs_newline = needs_newline
        self._tensors = tensors  # file -> array, every tensor the events reference
        self._builder = builder
        self._fd: int | None = None

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str | None = None, engine: Any = None, root: str | Path | None = None,
               hint: str = "") -> Session:
        """Start a new session folder; refuses an existing name. `hint` seeds a generated name."""
        root_path = Path(root) if root is not None else sessions_root()
        try:
            root_path.mkdir(parents=True, exist_ok=True)
            name = check_name(name) if name is not None else generate_name(root_path, hint)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        except OSError as exc:
            raise SessionError(f"{root_path}: cannot create the sessions folder ({exc.strerror})") from None
        path = root_path / name
        try:
            path.mkdir()
        except FileExistsError:
            raise SessionError(f"a session named {name!r} already exists ({path})") from None
        except OSError as exc:
            raise SessionError(f"{path}: cannot create ({exc.strerror})") from None
        from mechscope import __version__

        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "model": _model_manifest(engine) if engine is not None else None,
            "versions": {"mechscope": __version__, "torch": _package_version("torch"),
                         "transformers": _package_version("transformers"),
                         "python": platform.python_version()},
        }
        atomic_write(path / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
        (path / EVENTS_FILE).touch()
        _fsync_dir(path)
        return cls(path, manifest, [], [], 0, False, {}, _StateBuilder())

    @classmethod
    def resolve(cls, name_or_path: str | Path, root: str | Path | None = None) -> Path:
        """The folder of a session given its name (under the sessions root) or a path to it."""
        text = str(name_or_path)
        candidate = Path(text).expanduser()
        if os.sep in text or (os.altsep and os.altsep in text) or text in (".", ".."):
            return candidate
        root_path = Path(root) if root is not None else sessions_root()
        return root_path / text

    @classmethod
    def open(cls, name_or_path: str | Path, root: str | Path | None = None) -> Session:
        """Load and validate a session. SessionError (with file and line) if it cannot be used."""
        path = cls.resolve(name_or_path, root)
        if not path.is_dir():
            raise SessionError(f"no session named {str(name_or_path)!r} ({path} does not exist); "
                               "`mechscope sessions` lists them")
        manifest = _load_manifest(path / MANIFEST_FILE)
        events_path = path / EVENTS_FILE
        if not events_path.is_file():
            raise SessionError(f"{events_path}: missing")
        try:
            data = events_path.read_bytes()
        except OSError as exc:
            raise SessionError(f"{events_path}: cannot read ({exc.strerror})") from None
        return cls._from_log(path, manifest, data)

    @classmethod
    def _from_log(cls, path: Path, manifest: dict[str, Any], data: bytes) -> Session:
        events_path = path / EVENTS_FILE
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline
        events: list[Event] = []
        warnings: list[str] = []
        tensors: dict[str, np.ndarray] = {}
        builder = _StateBuilder()
        valid_size, needs_newline = len(data) - len(tail), False

        def accept(raw: bytes, number: int, is_tail: bool) -> bool:
            """Validate one line and fold it in; False for an unparseable unterminated last line."""
            where = f"{events_path}:{number}"
            try:
                event = _parse_line(raw, number)
            except Exception as exc:  # untrusted bytes: any failure to read this line is the line's fault
                if is_tail and _looks_interrupted(raw):
                    message = (f"{where}: last line is incomplete (the session was interrupted while "
                               f"writing it) and was dropped ({_reason(exc)})")
                    warnings.append(message)
                    logger.warning(message)
                    return False
                raise SessionError(f"{where}: {_reason(exc)}") from None
            if event.kind in ("vector", "sweep"):
                key = "vector" if event.kind == "vector" else "values"
                tensors[event["file"]] = _load_tensor(path, event["file"], key, event["shape"], where)
            try:
                if events and event.seq <= events[-1].seq:
                    raise ValueError(f"seq {event.seq} does not follow seq {events[-1].seq}")
                builder.apply(event)
            except Exception as exc:
                raise SessionError(f"{where}: {_reason(exc)}") from None
            events.append(event)
            return True

        for number, raw in enumerate(complete, 1):
            accept(raw, number, is_tail=False)
        if tail and accept(tail, len(complete) + 1, is_tail=True):
            needs_newline, valid_size = True, len(data)
        return cls(path, manifest, events, warnings, valid_size, needs_newline, tensors, builder)

    @staticmethod
    def list(root: str | Path | None = None) -> list[SessionSummary]:
        """Every session under `root`, newest first, read quickly (no full validation, no engine import)."""
        root_path = Path(root) if root is not None else sessions_root()
        if not root_path.is_dir():
            return []
        summaries = [_summarise(entry) for entry in root_path.iterdir()
                     if entry.is_dir() and not entry.name.startswith(".")]
        return sorted(summaries, key=lambda s: (s.created, s.name), reverse=True)

    # -- reading ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_source(self) -> str | None:
        model = self.manifest.get("model")
        return model.get("source") if isinstance(model, dict) else None

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS_FILE

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def __len__(self) -> int:
        return len(self.events)

    def state(self) -> SessionState:
        """Prompts, metric, interventions (id, intervention), vectors and last results to resume."""
        return self._builder.state(self._tensors)

    def tensor(self, event: Event) -> np.ndarray:
        """The array a vector or sweep event refers to."""
        return self._tensors[event["file"]].copy()

    def vector(self, name: str) -> np.ndarray:
        """The latest steering vector saved under `name`; KeyError if none."""
        return self._tensors[self._builder.vector_files[name]].copy()

    # -- writing ------------------------------------------------------------------------------

    def bind_engine(self, engine: Any) -> None:
        """Record the engine's model in the manifest of a session created without one.

        A session resumed on a different model keeps its recorded model and gets a warning.
        """
        current = _model_manifest(engine)
        recorded = self.manifest.get("model")
        if recorded is None:
            self.manifest["model"] = current
            self._write_manifest()
        elif (recorded.get("source"), recorded.get("weights_digest")) != (
                current["source"], current["weights_digest"]):
            self.warnings.append(f"session {self.name!r} was recorded on {recorded.get('source')!r}; "
                                 f"now running {current['source']!r}")

    def record(self, kind: str, **payload: Any) -> Event:
        """Validate and append one event (one write + fsync). SessionError if it is invalid."""
        payload = _jsonable(payload)
        seq = self.events[-1].seq + 1 if self.events else 1
        event = Event(seq=seq, time=round(time.time(), 3), kind=kind, payload=payload,
                      line=len(self.events) + 1)
        try:
            validate_payload(kind, payload)
            if kind in ("vector", "sweep") and payload["file"] not in self._tensors:
                raise ValueError(f"{payload['file']} was not saved by this session "
                                 "(use save_vector / record_sweep)")
            _copy_builder(self._builder).apply(event)
            line = json.dumps(event.to_json(), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")) + "\n"
        except (TypeError, ValueError) as exc:
            article = "an" if kind[:1] in "aeiou" else "a"
            raise SessionError(f"cannot record {article} {kind} event: {_reason(exc)}") from None
        self._append(line.encode("utf-8"))
        self._builder.apply(event)
        self.events.append(event)
        return event

    def record_prompt(self, clean: str, corrupted: str | None = None) -> Event:
        return self.record("prompt", clean=clean, corrupted=corrupted or None)

    def record_metric(self, metric: Metric | None) -> Event:
        return self.record("metric", metric=None if metric is None else metric.to_dict())

    def record_intervention(self, action: str, id: int, intervention: Intervention | None = None,
                            enabled: bool | None = None) -> Event:
        payload: dict[str, Any] = {"action": action, "id": id}
        if intervention is not None:
            payload["intervention"] = intervention.to_dict()
        if enabled is not None:
            payload["enabled"] = enabled
        return self.record("intervention", **payload)

    def record_reference_prompts(self, prompts: Sequence[str]) -> Event:
        return self.record("reference_prompts", prompts=list(prompts))

    def record_run(self, prompt: str, corrupted: str | None, metric: Metric | None,
                   interventions: Sequence[Any], result: Any, top_k: int | None = None) -> Event:
        """Record a run with everything needed to re-run it (vectors excepted) and its outcome."""
        return self.record(
            "run", prompt=prompt, corrupted=corrupted or None,
            metric=None if metric is None else metric.to_dict(),
            interventions=_intervention_dicts(interventions),
            top_k=len(result.top) if top_k is None else top_k,
            outcome=outcome_from_result(result),
        )

    def record_sweep(self, result: Any, clean: str, corrupt: str, metric: Metric,
                     direction: str = "noising") -> Event:
        """Save the sweep matrix to tensors/ and record the sweep that produced it."""
        values = np.ascontiguousarray(np.asarray(result.values, dtype=np.float32))
        file = self._save_tensor("sweep", "values", values)
        return self.record(
            "sweep", sweep=result.kind, clean=clean, corrupt=corrupt,
            metric=None if metric is None else metric.to_dict(), direction=direction, file=file,
            shape=list(values.shape), base_metric=float(result.base_metric),
            source_metric=None if result.source_metric is None else float(result.source_metric),
            complete=bool(result.complete), row_labels=[str(x) for x in result.row_labels],
            col_labels=[str(x) for x in result.col_labels],
        )

    def record_generate(self, prompt: str, interventions: Sequence[Any], params: dict[str, Any],
                        tokens: Sequence[Any], corrupted: str | None = None) -> Event:
        """Record a generation: params holds max_new_tokens, temperature and seed."""
        full_params = {"max_new_tokens": len(tokens), "temperature": 0.0, "seed": 0, **params}
        return self.record(
            "generate", prompt=prompt, corrupted=corrupted or None,
            interventions=_intervention_dicts(interventions), params=full_params,
            token_ids=[int(t.id) for t in tokens], tokens=[str(t.text) for t in tokens],
        )

    def save_vector(self, name: str, array: Any) -> Event:
        """Save a steering vector [d_model] under tensors/ and record it by name."""
        vector = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        if vector.ndim != 1 or not np.isfinite(vector).all():
            raise SessionError(f"steering vector {name!r} must be a finite 1-D array, "
                               f"got shape {list(vector.shape)}")
        file = self._save_tensor("vector", "vector", vector)
        return self.record("vector", name=name, file=file, shape=list(vector.shape))

    def record_note(self, text: str) -> Event:
        return self.record("note", text=text)

    def rename(self, new_name: str) -> None:
        """Rename the folder and the manifest's name; refuses a name in use."""
        try:
            check_name(new_name)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        target = self.path.parent / new_name
        if target.exists():
            raise SessionError(f"a session named {new_name!r} already exists ({target})")
        try:
            os.rename(self.path, target)
        except OSError as exc:
            raise SessionError(f"cannot rename {self.path} to {target} ({exc.strerror})") from None
        _fsync_dir(target.parent)
        self.path = target
        self.manifest["name"] = new_name
        self._write_manifest()

    def delete(self) -> None:
        """Remove the session folder (only if it really is a session: it holds a session.json)."""
        self.close()
        if not (self.path / MANIFEST_FILE).is_file():
            raise SessionError(f"{self.path} does not look like a session; not deleting it")
        shutil.rmtree(self.path)

    def close(self) -> None:
        """Release the write lock (events are already on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    # -- internals ----------------------------------------------------------------------------

    def _write_manifest(self) -> None:
        atomic_write(self.path / MANIFEST_FILE, (json.dumps(self.manifest, indent=2) + "\n").encode())

    def _open_for_append(self) -> int:
        """Open the log for appending, lock it, and cut off a truncated last line first."""
        if self._fd is not None:
            return self._fd
        try:
            fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SessionError(f"{self.events_path}: cannot open for writing ({exc.strerror})") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a single writer is the user's job
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SessionError(f"session {self.name!r} is being recorded by another mechscope "
                                   "process") from None
        if os.fstat(fd).st_size != self._valid_size:
            os.ftruncate(fd, self._valid_size)
        if self._needs_newline:
            _write_all(fd, b"\n")
            self._needs_newline = False
        self._fd = fd
        return fd

    def _append(self, data: bytes) -> None:
        fd = self._open_for_append()
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise SessionError(f"{self.events_path}: cannot write ({exc.strerror})") from None
        self._valid_size += len(data)

    def _save_tensor(self, prefix: str, key: str, array: np.ndarray) -> str:
        """Write `array` to tensors/<prefix>-<next seq>.safetensors (before its event) and cache it."""
        from safetensors.numpy import save_file

        seq = self.events[-1].seq + 1 if self.events else 1
        file = f"{TENSORS_DIR}/{prefix}-{seq:06d}.safetensors"
        path = self.path / file
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            save_file({key: array}, str(tmp))
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise SessionError(f"{path}: cannot write ({exc.strerror})") from None
        self._tensors[file] = array.copy()
        return file


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_builder(builder: _StateBuilder) -> _StateBuilder:
    """A shallow copy to dry-run an event against (apply mutates only top-level containers)."""
    copy = _StateBuilder()
    copy.__dict__.update({k: (v.copy() if isinstance(v, (dict, list)) else v)
                          for k, v in builder.__dict__.items()})
    return copy


def _intervention_dicts(interventions: Sequence[Any]) -> list[dict[str, Any]]:
    """Accept interventions, their dicts, or (id, intervention) pairs as the TUI keeps them."""
    out = []
    for item in interventions:
        if isinstance(item, tuple) and len(item) == 2:
            item = item[1]
        out.append(item if isinstance(item, dict) else item.to_dict())
    return out


def _parse_line(raw: bytes, number: int) -> Event:
    if not raw.strip():
        raise ValueError("empty line")
    text = raw.decode("utf-8")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    return event_from_json(data, number)


def _looks_interrupted(raw: bytes) -> bool:
    """Whether an unterminated last line is the start of an event line as `record` writes it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end != len(raw):  # bad bytes in the middle, not a character cut at the end
            return False
        text = raw[:exc.start].decode("utf-8", errors="replace")
    start = '{"seq":'
    return text.startswith(start) or start.startswith(text)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _summarise(path: Path) -> SessionSummary:
    """A list row from the manifest and a quick scan of the log (no validation of events)."""
    name = path.name
    try:
        manifest = _load_manifest(path / MANIFEST_FILE)
    except SessionError as exc:
        return SessionSummary(name, path, "?", "", 0, "", error=str(exc))
    model = manifest.get("model") or {}
    model_label = str(model.get("name") or model.get("source") or "-")
    n_events, last_prompt = 0, ""
    try:
        with open(path / EVENTS_FILE, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                try:
                    data = json.loads(raw)
                except (ValueError, RecursionError):
                    continue
                n_events += 1
                if isinstance(data, dict) and data.get("kind") in ("prompt", "run"):
                    prompt = data.get("clean", data.get("prompt"))
                    last_prompt = prompt if isinstance(prompt, str) else last_prompt
    except OSError as exc:
        return SessionSummary(name, path, model_label, str(manifest["created"]), 0, "",
                              error=f"{path / EVENTS_FILE}: cannot read ({exc.strerror})")
    return SessionSummary(name, path, model_label, str(manifest["created"]), n_events, last_prompt)
