"""The sweep's results database: one SQLite file per sweep, written only by the driver.

Tables: ``sweep`` (format, grid), ``jobs`` (one row per job: status pending|running|done|failed,
attempts, timings, last error and traceback, artifact, results directory), ``metrics`` (job_id, metric,
value, ci_low, ci_high; UNIQUE per job and metric), ``manifests`` (provenance per done job),
``failures`` (every failed attempt), ``artifacts`` (content-addressed builds) and ``runs`` (each
invocation: engine, parallelism, wall time).

A job's metrics, manifest and its change to ``done`` are one transaction, so a sweep killed at any
moment leaves each job either done with all its metrics or not done with none; WAL journaling with
``synchronous=FULL`` makes committed transactions survive the kill. On resume, jobs left ``running``
by a killed driver go back to ``pending``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import now_utc, sha256_json

FORMAT = "lpmr-edge-sweep/1"
STATUSES = ("pending", "running", "done", "failed")
SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE sweep (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, model TEXT NOT NULL, target TEXT NOT NULL,
    runtime TEXT NOT NULL, precision TEXT NOT NULL, calibration INTEGER, suite TEXT NOT NULL,
    seed INTEGER NOT NULL, threads INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, artifact_key TEXT, results_dir TEXT, worker TEXT,
    started TEXT, finished TEXT, seconds REAL, runtime_seconds REAL, error TEXT, traceback TEXT);
CREATE TABLE metrics (
    job_id TEXT NOT NULL REFERENCES jobs(id), metric TEXT NOT NULL, value REAL, ci_low REAL, ci_high REAL,
    UNIQUE (job_id, metric));
CREATE TABLE manifests (job_id TEXT PRIMARY KEY REFERENCES jobs(id), manifest TEXT NOT NULL);
CREATE TABLE failures (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, error TEXT NOT NULL, traceback TEXT, at TEXT NOT NULL,
    UNIQUE (job_id, attempt));
CREATE TABLE artifacts (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    seconds REAL, reused INTEGER, manifest_sha256 TEXT, error TEXT, traceback TEXT);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, engine TEXT NOT NULL, slots INTEGER NOT NULL, started REAL NOT NULL,
    finished REAL, jobs_done INTEGER, jobs_failed INTEGER);
"""


def is_sqlite(path: Path) -> bool:
    """True if ``path`` is an existing SQLite database file."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _lock_path(database: Path) -> Path:
    return database.with_name(f"{database.name}.lock")


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def driver_lock(database: Path) -> Iterator[None]:
    """One driver per database: an exclusive lock on ``<database>.lock``, released when the driver ends or dies."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(database), "w") as handle:
        if not _try_lock(handle):
            raise UserError(f"another `lpmr-edge sweep` is running on {database}; wait for it (`lpmr-edge sweep "
                            f"status {database}`) or stop it first")
        yield


def driver_running(database: Path) -> bool:
    """True while a driver holds the database's lock (a killed driver holds nothing)."""
    try:
        with open(_lock_path(database)) as handle:
            return not _try_lock(handle)
    except FileNotFoundError:
        return False


class SweepStore:
    """A sweep database; open it with ``create``, ``resume`` or ``open_existing``."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.db = connection

    # ------------------------------------------------------------------ opening

    @staticmethod
    def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
        uri = f"file:{Path(path).resolve()}{'?mode=ro' if read_only else ''}"
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
        connection.row_factory = sqlite3.Row
        if not read_only:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    @classmethod
    def open_existing(cls, path: Path, read_only: bool = True) -> SweepStore:
        """Open a database written by ``lpmr-edge sweep``; anything else is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sweep database not found: {path}; run `lpmr-edge sweep SWEEP.toml` first "
                            "(it writes <out>/sweep.db)")
        fix = "pass the sweep.db that `lpmr-edge sweep` wrote"
        if not is_sqlite(path):
            raise UserError(f"{path} is not an SQLite database; {fix}")
        store = cls(path, cls._connect(path, read_only))
        try:
            found = store.meta("format")
        except sqlite3.DatabaseError:
            found = None
        if found != FORMAT:
            store.close()
            raise UserError(f"{path} is not an lpmr-edge sweep database (format {found!r}, expected {FORMAT}); {fix}")
        return store

    @classmethod
    def create(cls, path: Path, grid: dict[str, Any], jobs: Sequence[dict[str, Any]]) -> SweepStore:
        """A new database holding the grid and every job as pending."""
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, cls._connect(path))
        with store.transaction() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.executemany("INSERT INTO sweep VALUES (?, ?)",
                           [("format", FORMAT), ("grid", json.dumps(grid, sort_keys=True, default=str)),
                            ("grid_sha256", sha256_json(sorted(job["id"] for job in jobs))),
                            ("created", now_utc())])
            columns = ("id", "position", "model", "target", "runtime", "precision", "calibration", "suite", "seed",
                       "threads")
            db.executemany(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           [tuple(job[column] for column in columns) for job in jobs])
        return store

    @classmethod
    def resume(cls, path: Path, job_ids: Sequence[str], source: str) -> SweepStore:
        """Reopen a database to continue it: the grid must be the same; interrupted jobs become pending."""
        store = cls.open_existing(path, read_only=False)
        stored = {row["id"] for row in store.db.execute("SELECT id FROM jobs")}
        if stored != set(job_ids):
            store.close()
            raise UserError(f"{path} holds a different grid than {source} ({len(stored - set(job_ids))} stored "
                            f"job(s) not in the file, {len(set(job_ids) - stored)} new); resume with the sweep "
                            "file it was made from, or write to a new --out")
        with store.transaction() as db:
            db.execute("UPDATE jobs SET status = 'pending', started = NULL, worker = NULL WHERE status = 'running'")
        return store

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ reading

    def meta(self, key: str) -> str | None:
        """A value of the ``sweep`` table."""
        row = self.db.execute("SELECT value FROM sweep WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero if none)."""
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {**dict.fromkeys(STATUSES, 0), **{row["status"]: row["n"] for row in rows}}

    def job_ids(self, status: str) -> list[str]:
        """Ids of the jobs with a status, in grid order."""
        return [row["id"] for row in self.db.execute("SELECT id FROM jobs WHERE status = ? ORDER BY position",
                                                     (status,))]

    def jobs(self, status: str | None = None) -> list[sqlite3.Row]:
        """Job rows (optionally of one status) in grid order."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        return self.db.execute(f"SELECT * FROM jobs {where} ORDER BY position", args).fetchall()

    def done_manifests(self) -> list[tuple[sqlite3.Row, dict[str, Any]]]:
        """Each done job's row and manifest, in grid order."""
        rows = self.db.execute("SELECT j.*, m.manifest FROM jobs j JOIN manifests m ON m.job_id = j.id "
                               "WHERE j.status = 'done' ORDER BY j.position").fetchall()
        return [(row, json.loads(row["manifest"])) for row in rows]

    def runs(self) -> list[sqlite3.Row]:
        """Every invocation of the sweep, oldest first."""
        return self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()

    # ------------------------------------------------------------------ writing (driver only)

    def requeue_failed(self) -> int:
        """Give failed jobs a fresh set of attempts; returns how many."""
        with self.transaction() as db:
            return db.execute("UPDATE jobs SET status = 'pending', attempts = 0 WHERE status = 'failed'").rowcount

    def start_run(self, engine: str, slots: int) -> int:
        """Record the start of an invocation; returns its id."""
        with self.transaction() as db:
            return int(db.execute("INSERT INTO runs (engine, slots, started) VALUES (?, ?, ?)",
                                  (engine, slots, time.time())).lastrowid)

    def finish_run(self, run_id: int) -> None:
        """Record the end of an invocation with the job counts at that moment."""
        counts = self.counts()
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished = ?, jobs_done = ?, jobs_failed = ? WHERE id = ?",
                       (time.time(), counts["done"], counts["failed"], run_id))

    def job_started(self, job_id: str) -> None:
        """Mark a job as submitted to a worker."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = 'running', started = ? WHERE id = ? AND status = 'pending'",
                       (now_utc(), job_id))

    def job_done(self, job_id: str, outcome: dict[str, Any], artifact_key: str | None) -> None:
        """Store a job's metrics and manifest and mark it done, all in one transaction."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = 'done', finished = ?, seconds = ?, runtime_seconds = ?, worker = ?, "
                "results_dir = ?, artifact_key = ?, error = NULL, traceback = NULL "
                "WHERE id = ? AND status = 'running'",
                (now_utc(), outcome["seconds"], outcome["runtime_seconds"], outcome["worker"],
                 outcome["results_dir"], artifact_key, job_id)).rowcount
            if changed != 1:
                raise RuntimeError(f"job {job_id} finished but was not running; refusing to store it twice")
            db.executemany("INSERT INTO metrics (job_id, metric, value, ci_low, ci_high) VALUES (?, ?, ?, ?, ?)",
                           [(job_id, *row) for row in outcome["metrics"]])
            db.execute("INSERT INTO manifests (job_id, manifest) VALUES (?, ?)",
                       (job_id, json.dumps(outcome["manifest"], sort_keys=True, default=str)))

    def job_failed(self, job_id: str, error: str, traceback: str | None, max_attempts: int) -> bool:
        """Record a failed attempt; the job goes back to pending unless it has used ``max_attempts``.
        Returns True when that was its last attempt (the job is now failed)."""
        with self.transaction() as db:
            attempts = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()["attempts"] + 1
            final = attempts >= max_attempts
            db.execute("INSERT INTO failures (job_id, attempt, error, traceback, at) VALUES (?, ?, ?, ?, ?)",
                       (job_id, attempts, error, traceback, now_utc()))
            db.execute("UPDATE jobs SET status = ?, attempts = ?, error = ?, traceback = ?, finished = ? WHERE id = ?",
                       ("failed" if final else "pending", attempts, error, traceback, now_utc(), job_id))
        return final

    def artifact_result(self, key: str, name: str, outcome: dict[str, Any]) -> None:
        """Record an artifact build (or reuse), successful or not."""
        with self.transaction() as db:
            db.execute("INSERT INTO artifacts (key, name, status) VALUES (?, ?, 'pending') ON CONFLICT DO NOTHING",
                       (key, name))
            if outcome["ok"]:
                db.execute("UPDATE artifacts SET status = 'built', path = ?, seconds = ?, reused = ?, "
                           "manifest_sha256 = ?, error = NULL, traceback = NULL WHERE key = ?",
                           (outcome["path"], outcome["seconds"], int(outcome["reused"]),
                            outcome["manifest_sha256"], key))
            else:
                db.execute("UPDATE artifacts SET status = 'failed', attempts = attempts + 1, error = ?, "
                           "traceback = ? WHERE key = ?", (outcome["error"], outcome["traceback"], key))
