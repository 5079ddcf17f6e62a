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
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechscope.engine.backend_info import backend_record
from mechscope.sessions.errors import SessionError
from mechscope.sessions.events import Event, validate_payload
from mechscope.sessions.folders import (
    FILE_MODE,
    SessionSummary,
    atomic_write,
    clear_lock_info,
    fsync_dir,
    list_sessions,
    load_manifest,
    make_dir,
    remove_folder,
    remove_session,
    rename_folder,
    rename_session,
    session_folder,
    summarise,
    write_lock_info,
)
from mechscope.sessions.log import Log, read_log, reason, stamp
from mechscope.sessions.outcomes import outcome_from_result
from mechscope.sessions.paths import (
    EVENTS_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TENSORS_DIR,
    check_name,
    generate_name,
    sessions_root,
)
from mechscope.sessions.reading import (
    check_values,
    shown,
)
from mechscope.sessions.state import SessionState, copy_builder

if TYPE_CHECKING:
    from mechscope.engine.interventions import Intervention, Metric

logger = logging.getLogger(__name__)

__all__ = [
    "EVENTS_FILE", "MANIFEST_FILE", "SCHEMA_VERSION", "TENSORS_DIR", "Session", "SessionState",
    "SessionSummary", "atomic_write", "remove_folder", "remove_session", "rename_session",
    "session_folder", "summarise",
]


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
        "placement": str(getattr(info, "placement", "")),
        "n_layers": int(getattr(info, "n_layers", 0)),
        "n_heads": int(getattr(info, "n_heads", 0)),
        "backend": backend_record(engine),
    }


class Session:
    """A recorded exploration: create, open, record events, fold them into a state, rename, delete.

    Writers hold an exclusive lock on the event log (POSIX) so two processes never interleave events;
    a writer that gets the lock re-reads the log if it changed since it was read, so it never writes
    from a stale state. Readers (`mechscope replay`, the sessions screen) take no lock.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], log: Log) -> None:
        self.path = path
        self.manifest = manifest
        self._fd: int | None = None
        self._adopt(log)

    def _adopt(self, log: Log) -> None:
        self.events = log.events
        self.warnings = log.warnings
        self._valid_size = log.valid_size  # bytes of events.jsonl holding complete events
        self._needs_newline = log.needs_newline
        self._tensors = log.tensors  # file -> array, every tensor the events reference
        self._builder = log.builder
        self._stamp = log.stamp  # (size, mtime_ns, inode) of the log when it was read

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str | None = None, engine: Any = None, root: str | Path | None = None,
               hint: str = "") -> Session:
        """Start a new session folder (user-only); refuses an existing name. `hint` seeds a generated name."""
        root_path = Path(root) if root is not None else sessions_root()
        try:
            if not root_path.is_dir():
                root_path.parent.mkdir(parents=True, exist_ok=True)
                make_dir(root_path, exist_ok=True)
            name = check_name(name) if name is not None else generate_name(root_path, hint)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        except OSError as exc:
            raise SessionError(f"{root_path}: cannot create the sessions folder ({exc.strerror})") from None
        path = root_path / name
        try:
            make_dir(path)
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
        try:
            atomic_write(path / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
            os.close(os.open(path / EVENTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        except OSError as exc:
            raise SessionError(f"{path}: cannot write ({exc.strerror})") from None
        fsync_dir(path)
        log = Log.empty()
        log.stamp = stamp(os.stat(path / EVENTS_FILE))
        return cls(path, manifest, log)

    @classmethod
    def resolve(cls, name_or_path: str | Path, root: str | Path | None = None) -> Path:
        """The folder of a session given its name (under the sessions root) or a path to it.

        A name must follow the name rule (`paths.check_name`); anything with a separator is a path.
        """
        text = str(name_or_path)
        if isinstance(name_or_path, Path) or os.sep in text or (os.altsep and os.altsep in text) \
                or text in (".", ".."):
            return Path(text).expanduser()
        try:
            check_name(text)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        root_path = Path(root) if root is not None else sessions_root()
        return root_path / text

    @classmethod
    def open(cls, name_or_path: str | Path, root: str | Path | None = None) -> Session:
        """Load and validate a session. SessionError (with file and line) if it cannot be used."""
        path = cls.resolve(name_or_path, root)
        try:
            is_dir = path.is_dir()
        except OSError as exc:
            raise SessionError(f"{shown(str(path))}: cannot open ({exc.strerror})") from None
        if not is_dir:
            raise SessionError(f"no session named {shown(str(name_or_path))} ({shown(str(path))} does "
                               "not exist); `mechscope sessions` lists them")
        manifest = load_manifest(path / MANIFEST_FILE)
        return cls(path, manifest, read_log(path))

    @staticmethod
    def list(root: str | Path | None = None) -> list[SessionSummary]:
        """Every session under `root`, newest first, read quickly and in bounded memory.

        Sessions that cannot be read are listed with `error` set; no engine import.
        """
        return list_sessions(Path(root) if root is not None else sessions_root())

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
            self.warnings.append(f"session {self.name!r} was recorded on {shown(recorded.get('source'))}; "
                                 f"now running {current['source']!r}")

    def record(self, kind: str, **payload: Any) -> Event:
        """Validate and append one event (one write + fsync). SessionError if it is invalid.

        Takes the write lock first (re-reading the log if another process changed it), so the
        event's `seq` and its validation follow what is on disk.
        """
        payload = _jsonable(payload)
        self._open_for_append()
        seq = self.events[-1].seq + 1 if self.events else 1
        event = Event(seq=seq, time=round(time.time(), 3), kind=kind, payload=payload,
                      line=len(self.events) + 1)
        try:
            check_values(payload)
            validate_payload(kind, payload)
            if kind in ("vector", "sweep", "set_sweep") and payload["file"] not in self._tensors:
                raise ValueError(f"{payload['file']} was not saved by this session "
                                 "(use save_vector / record_sweep)")
            copy_builder(self._builder).apply(event)
            line = json.dumps(event.to_json(), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")) + "\n"
        except (TypeError, ValueError) as exc:
            raise SessionError(f"cannot record {_article(kind)} {kind} event: {reason(exc)}") from None
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
                     direction: str = "noising", interventions: Sequence[Any] = ()) -> Event:
        """Save the sweep matrix to tensors/ and record the sweep that produced it (and the
        interventions it ran on top of, when there were any)."""
        values = np.ascontiguousarray(np.asarray(result.values, dtype=np.float32))
        file = self._save_tensor("sweep", "values", values)
        return self.record(
            "sweep", sweep=result.kind, clean=clean, corrupt=corrupt,
            metric=None if metric is None else metric.to_dict(), direction=direction, file=file,
            shape=list(values.shape), base_metric=float(result.base_metric),
            source_metric=None if result.source_metric is None else float(result.source_metric),
            complete=bool(result.complete), row_labels=[str(x) for x in result.row_labels],
            col_labels=[str(x) for x in result.col_labels],
            **({"interventions": _intervention_dicts(interventions)} if interventions else {}),
        )

    def record_prompt_set(self, pset: Any) -> Event:
        """Record a prompt set (a `PromptSet`); set runs and sweeps name it by this event's seq."""
        data = pset.to_dict()
        return self.record("prompt_set", name=data["name"], source=data["source"], rows=data["rows"])

    def prompt_set(self, seq: int) -> Any:
        """The `PromptSet` the prompt_set event `seq` recorded; KeyError if there is none."""
        from mechscope.engine.prompt_sets import PromptSet

        return PromptSet.from_dict(self._builder.prompt_sets[seq])

    def record_set_run(self, set_seq: int, result: Any, metric_kind: str, interventions: Sequence[Any],
                       prompt: str = "clean") -> Event:
        """A run over the recorded set `set_seq` with its per-row metric (`SetRunResult`)."""
        return self.record(
            "set_run", set=set_seq, metric_kind=metric_kind, prompt=prompt,
            interventions=_intervention_dicts(interventions),
            values=[float(v) for v in np.asarray(result.values).reshape(-1)],
            baseline=[float(v) for v in np.asarray(result.baseline).reshape(-1)])

    def record_set_sweep(self, set_seq: int, result: Any, metric_kind: str, direction: str,
                         source: str = "prompts") -> Event:
        """A head-patching sweep over the recorded set `set_seq`: the mean per cell ([layer, head],
        NaN where unfinished) saved to tensors/, the mean base metric in the event."""
        values = np.ascontiguousarray(np.asarray(result.mean, dtype=np.float32))
        file = self._save_tensor("set-sweep", "values", values)
        return self.record(
            "set_sweep", set=set_seq, metric_kind=metric_kind, direction=direction, source=source,
            file=file, shape=list(values.shape), base_metric=float(np.mean(result.base_metric)),
            complete=bool(result.complete))

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
        if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
            raise SessionError(f"steering vector {name!r} must be a finite 1-D array, "
                               f"got shape {list(vector.shape)}")
        file = self._save_tensor("vector", "vector", vector)
        return self.record("vector", name=name, file=file, shape=list(vector.shape))

    def record_note(self, text: str) -> Event:
        return self.record("note", text=text)

    def rename(self, new_name: str) -> None:
        """Rename the folder and the manifest's name; refuses a name in use or a session being recorded."""
        if self._fd is not None:
            raise SessionError(f"cannot rename session {self.name!r} while recording into it")
        self.path = rename_folder(self.path, new_name)
        self.manifest["name"] = new_name

    def delete(self) -> None:
        """Remove the session folder (refused when it is not a session or another process records into it)."""
        self.close()
        remove_folder(self.path)

    def close(self) -> None:
        """Release the write lock (events are already on disk)."""
        if self._fd is not None:
            clear_lock_info(self.path)
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
        try:
            atomic_write(self.path / MANIFEST_FILE, (json.dumps(self.manifest, indent=2) + "\n").encode())
        except OSError as exc:
            raise SessionError(f"{self.path / MANIFEST_FILE}: cannot write ({exc.strerror})") from None

    def _open_for_append(self) -> int:
        """Open and lock the log; re-read it if it changed since it was read; cut an interrupted last line."""
        if self._fd is not None:
            return self._fd
        try:
            fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise SessionError(f"{self.events_path}: cannot open for writing ({exc.strerror}); "
                               "recording stopped") from None
        try:
            self._lock(fd)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SessionError(f"{self.events_path}: not a regular file")
            if stamp(info) != self._stamp:
                # Another process wrote (or a crash left a partial line) since this log was read.
                log = read_log(self.path)
                if log.stamp[2] != info.st_ino:
                    raise SessionError(f"{self.events_path}: replaced while opening it; reopen the session")
                self._adopt(log)
            if info.st_size != self._valid_size:
                os.ftruncate(fd, self._valid_size)
            if self._needs_newline:
                _write_all(fd, b"\n")
                os.fsync(fd)
                self._valid_size += 1
                self._needs_newline = False
        except OSError as exc:
            os.close(fd)
            raise SessionError(f"{self.events_path}: cannot write ({exc.strerror}); "
                               "recording stopped") from None
        except BaseException:
            os.close(fd)
            raise
        write_lock_info(self.path)
        self._fd = fd
        return fd

    def _lock(self, fd: int) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a single writer is the user's job
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            from mechscope.sessions.folders import lock_holder

            raise SessionError(f"session {self.name!r} is being recorded by "
                               f"{lock_holder(self.path)}") from None

    def _append(self, data: bytes) -> None:
        """Write one line and fsync it; on any failure cut the log back to its last good size."""
        fd = self._open_for_append()
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            lost = f"{self.events_path}: cannot write ({exc.strerror}); the event was not saved"
            try:
                os.ftruncate(fd, self._valid_size)
                os.fsync(fd)
            except OSError:
                # The log may end in a partial line: stop writing through this handle; the next
                # append reopens, re-reads and cuts the partial line before writing.
                self.close()
                self._stamp = (-1, -1, -1)
            raise SessionError(lost) from None
        self._valid_size += len(data)
        self._stamp = stamp(os.fstat(fd))

    def _save_tensor(self, prefix: str, key: str, array: np.ndarray) -> str:
        """Write `array` to tensors/<prefix>-<next seq>.safetensors (before its event) and cache it."""
        from safetensors.numpy import save_file

        self._open_for_append()  # the lock first: the file name takes the next seq on disk
        seq = self.events[-1].seq + 1 if self.events else 1
        file = f"{TENSORS_DIR}/{prefix}-{seq:06d}.safetensors"
        path = self.path / file
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            if not path.parent.is_dir():
                make_dir(path.parent)
            save_file({key: array}, str(tmp))
            os.chmod(tmp, FILE_MODE)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            if tmp.exists():
                tmp.unlink()
            raise SessionError(f"{path}: cannot write ({exc.strerror}); recording stopped") from None
        self._tensors[file] = array.copy()
        return file


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _intervention_dicts(interventions: Sequence[Any]) -> list[dict[str, Any]]:
    """Accept interventions, their dicts, or (id, intervention) pairs as the TUI keeps them."""
    out = []
    for item in interventions:
        if isinstance(item, tuple) and len(item) == 2:
            item = item[1]
        out.append(item if isinstance(item, dict) else item.to_dict())
    return out


def _article(kind: str) -> str:
    return "an" if kind[:1] in "aeiou" else "a"
