"""The job queue behind both APIs, in SQLite (stdlib sqlite3): survives restarts, keeps history.

A job is one ComfyUI prompt or one A1111 txt2img/img2img request. Order: lowest `number` first (ComfyUI's
rule: a counter, negated for `front`), then arrival. Jobs found `in_progress` when the store opens were cut
off by a crash and go back to `pending`, so they run again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    number REAL NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    client_id TEXT,
    outputs TEXT NOT NULL DEFAULT '{}',
    messages TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    create_time INTEGER NOT NULL,
    start_time INTEGER,
    end_time INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, number, seq);
"""


@dataclass(frozen=True)
class Job:
    """One row of the queue: the request as sent, and what came of it."""

    id: str
    kind: str
    number: float
    status: str
    request: dict
    client_id: str | None
    outputs: dict
    messages: list
    error: dict | None
    create_time: int
    start_time: int | None
    end_time: int | None


def now_ms() -> int:
    return int(time.time() * 1000)


class JobStore:
    """Thread-safe queue and history in one SQLite file (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        with self._lock:
            self._db.execute("UPDATE jobs SET status='pending', start_time=NULL WHERE status='in_progress'")
            row = self._db.execute("SELECT MAX(ABS(number)) FROM jobs").fetchone()
            self._counter = int(row[0] or 0) + 1
            self.revision = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        job_id: str,
        kind: str,
        request: dict,
        *,
        client_id: str | None = None,
        front: bool = False,
        number: float | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; the same id again returns the existing job (False: nothing was added)."""
        with self._lock:
            existing = self._get(job_id)
            if existing is not None:
                return existing, False
            if number is None:
                number = -self._counter if front else self._counter
                self._counter += 1
            self._db.execute(
                "INSERT INTO jobs (id, kind, number, status, request, client_id, create_time) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                (job_id, kind, number, json.dumps(request), client_id, now_ms()),
            )
            self._changed()
            return self._get(job_id), True

    def claim(self, timeout: float) -> Job | None:
        """The next pending job, marked in_progress; None if none arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE status='pending' ORDER BY number, seq LIMIT 1"
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE jobs SET status='in_progress', start_time=? WHERE id=?", (now_ms(), row[0])
                    )
                    self._changed()
                    return self._get(row[0])
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._wake.wait(left)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        outputs: dict | None = None,
        messages: list | None = None,
        error: dict | None = None,
    ) -> None:
        """Record how a running job ended (completed, failed or cancelled)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status=?, outputs=?, messages=?, error=?, end_time=? WHERE id=?",
                (
                    status,
                    json.dumps(outputs or {}),
                    json.dumps(messages or []),
                    None if error is None else json.dumps(error),
                    now_ms(),
                    job_id,
                ),
            )
            self._changed()

    def cancel(self, job_ids: list[str] | None = None) -> list[str]:
        """Cancel pending jobs (all of them when `job_ids` is None); returns the ids cancelled."""
        with self._lock:
            query = "SELECT id FROM jobs WHERE status='pending'"
            ids = [row[0] for row in self._db.execute(query)]
            if job_ids is not None:
                ids = [job_id for job_id in ids if job_id in set(job_ids)]
            self._db.executemany(
                "UPDATE jobs SET status='cancelled', end_time=? WHERE id=?", [(now_ms(), i) for i in ids]
            )
            if ids:
                self._changed()
            return ids

    def forget(self, job_ids: list[str] | None = None) -> None:
        """Delete finished jobs from the history (all of them when `job_ids` is None)."""
        with self._lock:
            marks = ",".join("?" * len(FINISHED))
            if job_ids is None:
                self._db.execute(f"DELETE FROM jobs WHERE status IN ({marks})", FINISHED)
            else:
                self._db.executemany(
                    f"DELETE FROM jobs WHERE id=? AND status IN ({marks})", [(i, *FINISHED) for i in job_ids]
                )
            self._changed()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._get(job_id)

    def jobs(
        self,
        statuses: tuple[str, ...] = STATUSES,
        *,
        newest_first: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs with these statuses: queue order, or newest first."""
        order = "create_time DESC, seq DESC" if newest_first else "number, seq"
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY {order} LIMIT ? OFFSET ?",
                (*statuses, -1 if limit is None else limit, offset),
            ).fetchall()
            return [_job(row) for row in rows]

    def count(self, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            return self._db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses
            ).fetchone()[0]

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def _changed(self) -> None:
        self.revision += 1
        self._wake.notify_all()


def _job(row: tuple) -> Job:
    (
        _,
        job_id,
        kind,
        number,
        status,
        request,
        client_id,
        outputs,
        messages,
        error,
        created,
        started,
        ended,
    ) = row
    number = int(number) if float(number).is_integer() else number
    return Job(
        job_id,
        kind,
        number,
        status,
        json.loads(request),
        client_id,
        json.loads(outputs),
        json.loads(messages),
        None if error is None else json.loads(error),
        created,
        started,
        ended,
    )
