"""One worker thread per device: takes jobs from the queue in order and runs them one at a time."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from lienzo.errors import LienzoError
from lienzo.server.events import Hub
from lienzo.server.jobs import Job, JobStore

log = logging.getLogger("lienzo.server")


class JobInterrupted(LienzoError):
    """The running job was interrupted (ComfyUI's /interrupt, A1111's /interrupt)."""


class ImageSkipped(LienzoError):
    """A1111's /skip: the image being drawn is dropped and the job goes on with the next one."""


@dataclass
class Progress:
    """What the running job is doing, for A1111's /progress: steps, batch position and the latest x0."""

    job_id: str | None = None
    step: int = 0
    steps: int = 0
    job_no: int = 0
    job_count: int = 0
    denoised: object = None
    vae: object = None
    started: float = 0.0
    interrupted: bool = False
    skipped: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a runner returns: the outputs to keep in history, and the messages of the run."""

    outputs: dict
    messages: list = field(default_factory=list)


Runner = Callable[[Job, "Worker"], Outcome]
Finisher = Callable[[Job], None]


class Worker(threading.Thread):
    """Runs queued jobs through `runners[job.kind]`; records the outcome, wakes whoever waits, broadcasts
    the queue status, then calls `finishers[job.kind]` (ComfyUI's closing `executing` message)."""

    def __init__(
        self, store: JobStore, hub: Hub, runners: dict[str, Runner], finishers: dict[str, Finisher]
    ) -> None:
        super().__init__(name="lienzo-worker", daemon=True)
        self.store, self.hub, self.runners, self.finishers = store, hub, runners, finishers
        self.interrupt = threading.Event()
        self.skip = threading.Event()
        self.stopping = threading.Event()
        self.current: Job | None = None
        self.progress = Progress()

    def run(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim(timeout=0.2)
            if job is not None:
                self._run(job)

    def stop(self) -> None:
        self.stopping.set()
        self.interrupt.set()

    def interrupt_job(self, job_id: str | None = None) -> bool:
        """Interrupt the running job (only if it is `job_id`, when given); True when one was running."""
        current = self.current
        if current is None or (job_id is not None and current.id != job_id):
            return False
        self.progress.interrupted = True
        self.interrupt.set()
        return True

    def check(self) -> None:
        """Raise JobInterrupted or ImageSkipped when asked to; runners call it between steps."""
        if self.interrupt.is_set():
            raise JobInterrupted("the job was interrupted")
        if self.skip.is_set():
            self.skip.clear()
            raise ImageSkipped("the image was skipped")

    def _run(self, job: Job) -> None:
        self.interrupt.clear()
        self.skip.clear()
        self.current = job
        self.progress = Progress(job_id=job.id)
        self.send_status()
        try:
            outcome = self.runners[job.kind](job, self)
            self.store.finish(job.id, "completed", outputs=outcome.outputs, messages=outcome.messages)
        except JobInterrupted as error:
            self.store.finish(
                job.id,
                "cancelled",
                messages=getattr(error, "messages", []),
                error={"type": "interrupted", "kind": "interrupted", "message": str(error)},
            )
        except LienzoError as error:
            log.info("job %s failed: %s", job.id, error)
            self.store.finish(
                job.id,
                "failed",
                messages=getattr(error, "messages", []),
                error={"type": type(error).__name__, "kind": "user", "message": str(error)},
            )
        except Exception as error:
            log.error("job %s failed unexpectedly:\n%s", job.id, traceback.format_exc())
            self.store.finish(
                job.id,
                "failed",
                messages=getattr(error, "messages", []),
                error={
                    "type": type(error).__name__,
                    "kind": "internal",
                    "message": str(error),
                    "traceback": traceback.format_exc().splitlines(),
                },
            )
        finally:
            self.current = None
            self.hub.job_done(job.id)
            self.send_status()
            if job.kind in self.finishers:
                self.finishers[job.kind](job)

    def queue_remaining(self) -> int:
        return self.store.count(("pending", "in_progress"))

    def send_status(self) -> None:
        """Broadcast ComfyUI's `status` message (the queue length)."""
        self.hub.send("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}})
