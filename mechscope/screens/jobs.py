"""Where the workbench's engine work runs: one table from a request type to its worker group and the
handlers of its outcome and its partial results, and the one place workers are started."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from textual.dom import DOMNode
from textual.worker import Worker, WorkerCancelled, WorkerFailed, get_current_worker

from mechscope.requests.kinds import Outcome, Request
from mechscope.requests.registry import execute
from mechscope.tui.messages import Finished, Partial


@dataclass(frozen=True)
class Job:
    """How one request type runs: its worker group (`exclusive`: a new one cancels the running one),
    what handles its outcome, what handles what it streams (None: it streams nothing), what shows
    that it started, and the requests one worker runs for it in order (None: the request alone)."""

    group: str
    finished: Callable[[Outcome], None]
    partial: Callable[[Request, Any], None] | None = None
    exclusive: bool = False
    started: Callable[[Any], None] | None = None  # takes the job's own request type
    lanes: Callable[[Any], tuple[Request, ...]] | None = None


Prepare = Callable[[], Request | Outcome]  # runs in the worker before the request: disk reads


class JobRunner:
    """Starts every engine request of one screen in a thread worker and posts its messages back to it."""

    def __init__(self, owner: DOMNode, jobs: dict[type, Job]) -> None:
        self.owner = owner
        self.jobs = jobs
        self.engine: Any = None
        self.started = 0  # how many requests were started (tests read it)

    def job(self, request: Request) -> Job:
        return self.jobs[type(request)]

    def start(self, *requests: Request, group: str | None = None,
              prepare: Prepare | None = None) -> Worker[Outcome | None]:
        """Run `requests` one after the other in one worker (stopping at the first that fails), after
        `prepare` when given; its outcome is `Finished`, what it streams is `Partial`."""
        first = requests[0] if requests else None
        job = self.job(first) if first is not None else None
        name = group or (job.group if job is not None else "prepare")
        self.started += 1
        return self.owner.run_worker(lambda: self._run(requests, prepare), name=name, group=name,
                                     thread=True, exit_on_error=False,
                                     exclusive=job.exclusive if job is not None else True)

    def _run(self, requests: Sequence[Request], prepare: Prepare | None) -> Outcome | None:
        worker = get_current_worker()
        if prepare is not None:
            made = prepare()
            if isinstance(made, Outcome):
                self.owner.post_message(Finished(made))
                return made
            requests = (made,)
        outcome: Outcome | None = None
        for request in requests:
            streams = self.job(request).partial is not None

            def partial(value: Any, request: Request = request) -> None:
                self.owner.post_message(Partial(request, value))

            outcome = execute(self.engine, request, partial if streams else None, lambda: worker.is_cancelled)
            self.owner.post_message(Finished(outcome))
            if not outcome.ok:
                break
        return outcome

    async def outcome(self, request: Request) -> Outcome:
        """Run a request and wait for its outcome without blocking the screen (a dialog's dry run)."""
        worker = self.start(request, group="dry-run")
        try:
            result = await worker.wait()
        except (WorkerCancelled, WorkerFailed) as exc:
            return Outcome(request, error=f"not checked: {exc}")
        return result if result is not None else Outcome(request, error="not checked")

    def cancel(self, *groups: str) -> bool:
        """Cancel the running workers of these groups; True when one was running."""
        running = [w for w in self.owner.workers if w.group in groups and w.is_running]
        for worker in running:
            worker.cancel()
        return bool(running)

    def cancel_group(self, group: str) -> None:
        self.owner.workers.cancel_group(self.owner, group)
