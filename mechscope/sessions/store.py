"""Session storage: a folder with an atomic manifest, an append-only fsynced event log and safetensors.

Layout of a session folder:
  session.json           manifest (schema version, name, created, model, versions), replaced atomically
  events.jsonl           one JSON object per line; each append is a single write followed by fsync
  tensors/*.safetensors  steering vectors and sweep matrices, written before the event naming them

Reading never runs code: JSON and safetensors only. Every line is validated on open; a truncated last
line (a crash mid-write) is dropped with a warning, anything else wrong raises SessionError naming the
file and line.

`Session` is the API (create, open, record, read back); the log and tensors are written by
`writer.LogWriter`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechscope.engine.backend_info import backend_record
from mechscope.requests.field_types import shown
from mechscope.sessions.errors import SessionError
from mechscope.sessions.events import Event, tensor_files, validate_payload, work_kind
from mechscope.sessions.folders import (
    FILE_MODE,
    SessionSummary,
    atomic_write,
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
)
from mechscope.sessions.log import Log, read_log, reason, stamp
from mechscope.sessions.paths import (
    EVENTS_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TENSORS_DIR,
    check_name,
    generate_name,
    sessions_root,
)
from mechscope.sessions.reading import check_values
from mechscope.sessions.state import SessionState, copy_builder
from mechscope.sessions.writer import LogWriter, write_manifest

if TYPE_CHECKING:
    from mechscope.engine.interventions import Intervention
    from mechscope.engine.metric import Metric
    from mechscope.requests.kinds import Outcome, Request
    from mechscope.requests.registry import Summary

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
        self.manifest = manifest
        self._writer = LogWriter(path, log)
        self._adopt(log)

    def _adopt(self, log: Log) -> None:
        self.events = log.events
        self.warnings = log.warnings
        self._tensors = log.tensors  # file -> array, every tensor the events reference
        self._builder = log.builder

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
    def path(self) -> Path:
        """The session folder (the writer's, so a rename moves both)."""
        return self._writer.folder

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_source(self) -> str | None:
        model = self.manifest.get("model")
        return model.get("source") if isinstance(model, dict) else None

    @property
    def events_path(self) -> Path:
        return self._writer.events_path

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def __len__(self) -> int:
        return len(self.events)

    def state(self) -> SessionState:
        """Prompts, metric, interventions (id, intervention), vectors and last results to resume,
        with the outcomes the handlers can rebuild from the record (`outcomes`)."""
        state = self._builder.state(self._tensors)
        state.outcomes = [*self.restored_outcomes()]
        return state

    def restored_outcomes(self) -> Sequence[Outcome]:
        """The latest outcome of each kind (each sweep kind) rebuilt by its handler, oldest first.

        Work this version cannot rebuild (an unknown kind, a damaged summary) is left out: resuming
        shows the rest."""
        from mechscope.requests.kinds import Outcome
        from mechscope.requests.registry import handler_for

        latest: dict[str, Event] = {}
        for event in self.work():
            try:
                request, _ = self.outcome(event)
            except (KeyError, TypeError, ValueError):
                continue
            latest[handler_for(request).restore_key(request)] = event
        outcomes = []
        for event in sorted(latest.values(), key=lambda e: e.seq):
            try:
                request, summary = self.outcome(event)
                result = handler_for(request).restore(request, summary)
            except Exception:  # a summary this version cannot read back is not shown again
                continue
            if result is not None:
                outcomes.append(Outcome(request, result, seconds=float(event.get("seconds", 0.0))))
        return outcomes

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
            write_manifest(self.path, self.manifest)
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
        self._open_log()
        seq = self.events[-1].seq + 1 if self.events else 1
        event = Event(seq=seq, time=round(time.time(), 3), kind=kind, payload=payload,
                      line=len(self.events) + 1)
        try:
            check_values(payload)
            validate_payload(kind, payload)
            for file in tensor_files(event):
                if file not in self._tensors:
                    raise ValueError(f"{file} was not saved by this session "
                                     "(use save_vector / record_request)")
            copy_builder(self._builder).apply(event)
            line = json.dumps(event.to_json(), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")) + "\n"
        except (TypeError, ValueError) as exc:
            raise SessionError(f"cannot record {_article(kind)} {kind} event: {reason(exc)}") from None
        self._writer.append(line.encode("utf-8"))
        self._builder.apply(event)
        self.events.append(event)
        return event

    def record_outcome(self, outcome: Outcome) -> Event:
        """Record a finished piece of work: its request and its handler's summary of the result."""
        from mechscope.requests.registry import handler_for

        summary = handler_for(outcome.request).summarise(outcome.result)
        return self.record_request(outcome.request, summary, outcome.seconds)

    def record_request(self, request: Request, summary: Summary, seconds: float = 0.0) -> Event:
        """A `request` event: the request as `request_to_dict` writes it, the summary's JSON as its
        outcome, and each of the summary's arrays saved to tensors/ before the event names it."""
        from mechscope.requests.kinds import request_to_dict

        arrays = {}
        for index, (name, array) in enumerate(summary.arrays.items()):
            values = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
            file = self._save_tensor(f"{request.kind.replace('_', '-')}-{index}", "values", values)
            arrays[name] = {"file": file, "shape": list(values.shape)}
        extra = {"arrays": arrays} if arrays else {}
        return self.record("request", request=request_to_dict(request), outcome=summary.data,
                           seconds=float(seconds) if math.isfinite(seconds) else 0.0, **extra)

    def work(self) -> Sequence[Event]:
        """The events that are pieces of work (requests, and runs, sweeps... of older sessions), in order."""
        return [event for event in self.events if work_kind(event) is not None]

    def outcome(self, event: Event) -> tuple[Request, Summary]:
        """The request a work event recorded and its outcome summary (arrays read back from tensors/).

        ValueError (or KeyError) when the event cannot stand for a request on this version."""
        from mechscope.requests.kinds import request_from_dict
        from mechscope.requests.registry import Summary
        from mechscope.sessions.legacy import legacy_outcome

        if event.kind != "request":
            return legacy_outcome(event, self.tensor, self.prompt_set)
        arrays = {name: self._tensors[item["file"]].copy()
                  for name, item in event.get("arrays", {}).items()}
        return request_from_dict(event["request"]), Summary(dict(event["outcome"]), arrays)

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
        """Record a run (as its request and outcome summary) with everything needed to re-run it."""
        from mechscope.requests.kinds import Outcome, RunRequest

        request = RunRequest(prompt, corrupted or None, metric, _interventions(interventions),
                             top_k=len(result.top) if top_k is None else top_k)
        return self.record_outcome(Outcome(request, result))

    def record_sweep(self, result: Any, clean: str, corrupt: str, metric: Metric,
                     direction: str = "noising", interventions: Sequence[Any] = ()) -> Event:
        """Record a sweep (its matrix saved to tensors/) and the interventions it ran on top of."""
        from mechscope.requests.kinds import Outcome, SweepRequest

        request = SweepRequest(result.kind, clean, corrupt, metric, direction,  # type: ignore[arg-type]
                               _interventions(interventions))
        return self.record_outcome(Outcome(request, result))

    def record_prompt_set(self, pset: Any) -> Event:
        """Record the prompt set in use (a `PromptSet`): resuming brings it back with its row."""
        data = pset.to_dict()
        return self.record("prompt_set", name=data["name"], source=data["source"], rows=data["rows"])

    def prompt_set(self, seq: int) -> Any:
        """The `PromptSet` the prompt_set event `seq` recorded; KeyError if there is none."""
        from mechscope.engine.prompt_sets import PromptSet

        return PromptSet.from_dict(self._builder.prompt_sets[seq])

    def record_generate(self, prompt: str, interventions: Sequence[Any], params: dict[str, Any],
                        tokens: Sequence[Any], corrupted: str | None = None) -> Event:
        """Record a generation: params holds max_new_tokens, temperature and seed."""
        from mechscope.requests.kinds import GenerateRequest, Outcome

        full_params = {"max_new_tokens": len(tokens), "temperature": 0.0, "seed": 0, **params}
        request = GenerateRequest(prompt, corrupted or None, _interventions(interventions),
                                  int(full_params["max_new_tokens"]), float(full_params["temperature"]),
                                  int(full_params["seed"]))
        return self.record_outcome(Outcome(request, list(tokens)))

    def save_vector(self, name: str, array: Any) -> Event:
        """Save a steering vector [d_model] under tensors/ and record it by name."""
        vector = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
            raise SessionError(f"steering vector {name!r} must be a finite 1-D array, "
                               f"got shape {list(vector.shape)}")
        file = self._save_tensor("vector", "vector", vector)
        return self.record("vector", name=name, file=file, shape=list(vector.shape))

    def record_effect_scale(self, scale: str) -> Event:
        """How the workbench shows patching effects from here on (`delta` or `normalised`)."""
        return self.record("effect_scale", scale=scale)

    def record_feature_label(self, sae_folder: str, feature: int, label: str) -> Event:
        """The name of feature `feature` of the SAE in `sae_folder` from here on ("" takes it away)."""
        return self.record("feature_label", sae_folder=sae_folder, feature=int(feature), label=label)

    def record_note(self, text: str) -> Event:
        return self.record("note", text=text)

    def rename(self, new_name: str) -> None:
        """Rename the folder and the manifest's name; refuses a name in use or a session being recorded."""
        if self._writer.is_open:
            raise SessionError(f"cannot rename session {self.name!r} while recording into it")
        self._writer.folder = rename_folder(self.path, new_name)
        self.manifest["name"] = new_name

    def delete(self) -> None:
        """Remove the session folder (refused when it is not a session or another process records into it)."""
        self.close()
        remove_folder(self.path)

    def close(self) -> None:
        """Release the write lock (events are already on disk)."""
        self._writer.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _open_log(self) -> None:
        """Take the write lock; a log another process changed since it was read is adopted first."""
        self._writer.open(self._adopt)

    def _save_tensor(self, prefix: str, key: str, array: np.ndarray) -> str:
        """Write `array` to tensors/<prefix>-<next seq>.safetensors (before its event) and cache it."""
        self._open_log()  # the lock first: the file name takes the next seq on disk
        seq = self.events[-1].seq + 1 if self.events else 1
        file = f"{TENSORS_DIR}/{prefix}-{seq:06d}.safetensors"
        self._writer.save_tensor(file, key, array)
        self._tensors[file] = array.copy()
        return file


def _interventions(items: Sequence[Any]) -> tuple[Intervention, ...]:
    """Accept interventions, their dicts, or (id, intervention) pairs as the TUI keeps them."""
    from mechscope.engine.interventions import Intervention

    out = []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            item = item[1]
        out.append(Intervention.from_dict(item) if isinstance(item, dict) else item)
    return tuple(out)


def _article(kind: str) -> str:
    return "an" if kind[:1] in "aeiou" else "a"
