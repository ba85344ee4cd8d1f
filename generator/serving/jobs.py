"""Generation jobs and the queue between the command loop and the workers (one per device)."""

from __future__ import annotations

import collections
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"


class QueueFull(RuntimeError):
    """The job queue holds its maximum number of waiting jobs."""


class QueueClosed(RuntimeError):
    """No worker is left to run jobs (every device failed)."""


@dataclass
class Job:
    id: str
    params: dict[str, Any]
    state: str = QUEUED
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    frame_id: str | None = None
    error: str | None = None
    saved: bool | None = None  # in the frame library; None when the server keeps none
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def summary(self) -> dict[str, Any]:
        keys = ("id", "state", "submitted_at", "started_at", "finished_at", "step", "total", "frame_id",
                "error", "saved")
        summary = {k: getattr(self, k) for k in keys}
        return summary | {"prompt": self.params.get("prompt"), "seed": self.params.get("seed")}


class JobQueue:
    """FIFO of jobs shared by the workers; thread-safe; remembers the last ``history`` finished jobs."""

    def __init__(self, max_waiting: int = 16, history: int = 100) -> None:
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []  # oldest first: one per busy worker, and any still being published
        self._closed: str | None = None
        self._active: dict[str, Job] = {}  # every job not finished yet, including one being published
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._history = history
        self._cond = threading.Condition()

    def submit(self, params: dict[str, Any]) -> Job:
        with self._cond:
            if self._closed is not None:
                raise QueueClosed(self._closed)
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"the queue already holds {self.max_waiting} waiting jobs; cancel some or wait")
            job = Job(id="job-" + secrets.token_hex(6), params=params)
            self._waiting.append(job)
            self._active[job.id] = job
            self._cond.notify_all()  # one waiting may be the live worker, which takes no jobs while others serve
            return job

    def wake(self) -> None:
        """Wake a worker waiting in :meth:`take` (it returns None): something besides a job wants it."""
        with self._cond:
            self._cond.notify_all()

    def idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, or until a job is submitted or :meth:`wake` is called."""
        with self._cond:
            self._cond.wait(timeout)

    def take(self, timeout: float) -> Job | None:
        """The next waiting job, now running; None after ``timeout`` seconds without one."""
        with self._cond:
            if not self._waiting:
                self._cond.wait(timeout)
            if not self._waiting:
                return None
            job = self._waiting.popleft()
            job.state, job.started_at = RUNNING, time.time()
            self._running.append(job)
            return job

    def close(self, reason: str) -> list[str]:
        """Refuse new jobs (QueueClosed with ``reason``) and fail the waiting ones; their ids."""
        with self._cond:
            self._closed = reason
            failed = list(self._waiting)
            self._waiting.clear()
            for job in failed:
                job.state, job.finished_at, job.error = FAILED, time.time(), reason
                self._remember(job)
            return [job.id for job in failed]

    def finish(self, job: Job, state: str, *, frame_id: str | None = None, error: str | None = None,
               saved: bool | None = None) -> None:
        with self._cond:
            job.state, job.finished_at, job.frame_id, job.error = state, time.time(), frame_id, error
            job.saved = saved
            if job in self._running:
                self._running.remove(job)
            self._remember(job)

    def cancel(self, job_id: str | None = None) -> list[str]:
        """Cancel one job by id, or every waiting and running job when ``job_id`` is None (on any worker)."""
        with self._cond:
            hits = [j for j in self._waiting if job_id in (None, j.id)]
            for job in hits:
                self._waiting.remove(job)
                job.state, job.finished_at = CANCELLED, time.time()
                self._remember(job)
            for running in self._running:
                if job_id in (None, running.id):
                    running.cancel_event.set()
                    hits.append(running)
            return [j.id for j in hits]

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._active.get(job_id) or self._finished.get(job_id)

    def unfinished(self) -> list[Job]:
        """The waiting jobs and the running ones."""
        with self._cond:
            return list(self._waiting) + self._running

    def snapshot(self) -> dict[str, Any]:
        """``running``: the oldest running job's summary or None; ``waiting``: every waiting job's."""
        with self._cond:
            return {
                "running": self._running[0].summary() if self._running else None,
                "waiting": [j.summary() for j in self._waiting],
            }

    def _remember(self, job: Job) -> None:
        self._active.pop(job.id, None)
        self._finished[job.id] = job
        while len(self._finished) > self._history:
            self._finished.popitem(last=False)
