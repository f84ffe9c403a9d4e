"""Patient data on the device: SQLite in WAL mode, one commit per finished repetition.

A power cut can lose at most the repetition in progress; everything the coach has
announced as completed is on disk. Timestamps are UTC wall-clock (ISO 8601). A file
that cannot be used raises StoreDamaged at open; appliance.salvage reads what is left of it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
RESERVE_SUFFIX = ".reserve"  # beside the database: "appliance.db.reserve"
RESERVE_BYTES = 2 * 1024 * 1024  # a day of repetitions many times over; samples are not kept once it is used
LOCK_TIMEOUT_S = 5.0  # a lock held longer than this at open is one that never unlocks
# What reading a damaged file can raise: CPython's sqlite3 raises UnicodeDecodeError when
# SQLite's own error message quotes schema text that is no longer UTF-8.
UNREADABLE = (sqlite3.Error, UnicodeDecodeError)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started_utc TEXT NOT NULL,
    ended_utc TEXT,
    status TEXT NOT NULL DEFAULT 'running',      -- running, done, stopped, interrupted
    programme TEXT NOT NULL,
    lang TEXT NOT NULL,
    patient_code TEXT,
    rest_cmh2o REAL,
    mvc_cmh2o REAL,
    oxford_band TEXT,
    source TEXT NOT NULL DEFAULT 'device'         -- device or simulation
);
CREATE TABLE IF NOT EXISTS exercises (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    exercise TEXT NOT NULL,
    position INTEGER NOT NULL,
    started_utc TEXT NOT NULL,
    ended_utc TEXT,
    status TEXT NOT NULL DEFAULT 'running'        -- running, finished, skipped, stopped
);
CREATE TABLE IF NOT EXISTS repetitions (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    exercise_row INTEGER NOT NULL REFERENCES exercises(id),
    exercise TEXT NOT NULL,
    rep INTEGER NOT NULL,
    status TEXT NOT NULL,                         -- complete, partial
    ended_utc TEXT NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    target_pct REAL NOT NULL,
    peak_cmh2o REAL, peak_pct REAL, time_to_peak_s REAL, held_s REAL, hold_asked_s REAL,
    steadiness_pct REAL, release_complete INTEGER, onset_s REAL, mean_hold_pct REAL, contractions INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    cmh2o REAL NOT NULL,
    pct REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_session ON samples(session_id, t);
CREATE INDEX IF NOT EXISTS reps_by_session ON repetitions(session_id);
CREATE INDEX IF NOT EXISTS events_by_session ON events(session_id, t);
"""

REP_METRICS = ("peak_cmh2o", "peak_pct", "time_to_peak_s", "held_s", "hold_asked_s",
               "steadiness_pct", "release_complete", "onset_s", "mean_hold_pct", "contractions", "artefact")


def _plain(value: Any) -> Any:
    """numpy scalars (from a real probe's arrays) as the Python values JSON knows."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _is_full(exc: sqlite3.OperationalError) -> bool:
    return "full" in str(exc).lower()


def _sql_value(value: Any) -> Any:
    return value.item() if callable(getattr(value, "item", None)) else value


def _inserted(cur: sqlite3.Cursor) -> int:
    """The rowid an INSERT gave its row (SQLite always gives one)."""
    if cur.lastrowid is None:
        raise sqlite3.OperationalError("the INSERT gave no rowid")
    return cur.lastrowid


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, default=_plain)


class StoreDamaged(Exception):
    """The database file cannot be used as it is: the device needs the clinic.

    Nothing is written to a file that raised this; `appliance.salvage.salvage(path)` reads what is left.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"the database {self.path} {reason}")

    def __reduce__(self):  # picklable with its two arguments (multiprocessing, the fuzz bench)
        return (type(self), (self.path, self.reason))


def _damage_reason(exc: sqlite3.Error | UnicodeDecodeError, lock_timeout_s: float) -> str:
    """What an SQLite error at open says about the file, in the clinic's words."""
    if isinstance(exc, UnicodeDecodeError):
        return "has a damaged schema (SQLite's description of it is not even text)"
    text = str(exc)
    low = text.lower()
    if "not a database" in low:
        return f"is not an SQLite database (damaged or overwritten: {text})"
    if "malformed" in low or "corrupt" in low:
        return f"has corrupt pages ({text})"
    if "locked" in low or "busy" in low:
        return f"is locked by another process and did not unlock within {lock_timeout_s:g} s"
    if "i/o" in low:
        return f"cannot be read ({text}: the SD card may be failing)"
    if "readonly" in low or "read-only" in low:
        return f"cannot be written ({text})"
    if _is_full(exc):  # type: ignore[arg-type]
        return "cannot be opened because the disk is full"
    return f"cannot be used ({text})"


def file_problem(path: Path) -> str | None:
    """A database path that is not a readable regular file (or absent: a new database)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a database file"
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or mislead SQLite; never open one.
        return "is not a regular file"
    try:
        with path.open("rb") as fh:
            fh.read(100)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


@functools.cache
def expected_columns() -> dict[str, tuple[str, ...]]:
    """Each table's columns in the order this version creates them (read from SQLite itself)."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(SCHEMA)
        tables = [r[0] for r in mem.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid")]
        return {t: tuple(r[1] for r in mem.execute(f'PRAGMA table_info("{t}")')) for t in tables}
    finally:
        mem.close()


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The schema version the file says it was written with; None for a new or pre-meta file."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    if row is None:
        return None
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise ValueError(f"has an unreadable schema version {row[0]!r} in its meta table") from None


def _check_readable(db: sqlite3.Connection, lock_timeout_s: float) -> str | None:
    """Corrupt pages or a schema from a newer version; None when the file reads well."""
    found = [r[0] for r in db.execute("PRAGMA quick_check")]
    if found != ["ok"]:
        more = f" and {len(found) - 1} more problems" if len(found) > 1 else ""
        return f"has corrupt pages (quick_check: {found[0] if found else 'no answer'}{more})"
    try:
        version = _schema_version(db)
    except ValueError as exc:
        return str(exc)
    if version is not None and version > SCHEMA_VERSION:
        return (f"was written by a newer version of the appliance (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); it is not written to")
    return _schema_problem(db)


def _schema_problem(db: sqlite3.Connection) -> str | None:
    """A schema this version cannot write to as it is (found read-only, before any migration)."""
    kinds = {name: kind for kind, name in db.execute("SELECT type, name FROM sqlite_master")}
    triggers = sorted(name for name, kind in kinds.items() if kind == "trigger")
    if triggers:
        return f"has a trigger {triggers[0]} that this appliance never creates (a foreign schema)"
    for table, columns in expected_columns().items():
        if table not in kinds:
            continue  # created at open
        if kinds[table] != "table":
            return f"has a {kinds[table]} where the table {table} belongs"
        info = list(db.execute(f'PRAGMA table_info("{table}")'))
        have = {row[1] for row in info}
        migratable = REP_METRICS if table == "repetitions" else ()
        missing = [c for c in columns if c not in have and c not in migratable]
        if missing:
            return f"has a table {table} without the column(s) {', '.join(missing)}"
        required = [row[1] for row in info if row[1] not in columns and row[3] and row[4] is None]
        if required:
            return f"has a table {table} with the foreign required column(s) {', '.join(required)}"
    return None


def diagnose(path: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> StoreDamaged | None:
    """Why `Store(path)` would refuse the file, found without writing it; None if it is usable.

    Used by the clinic's status and export to decide whether to salvage.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        return StoreDamaged(path, problem)
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=lock_timeout_s)
    except UNREADABLE as exc:
        return StoreDamaged(path, _damage_reason(exc, lock_timeout_s))
    try:
        problem = _check_readable(db, lock_timeout_s)
    except UNREADABLE as exc:
        problem = _damage_reason(exc, lock_timeout_s)
    finally:
        db.close()
    return StoreDamaged(path, problem) if problem else None


class Store:
    """The device's database. One writer (the coach); commits per repetition.

    Opening checks the file (`StoreDamaged` for every way it cannot be used) and keeps
    `reserve_bytes` of the disk in a reserve file beside it. When SQLite reports the disk
    full, the reserve is released and the write retried: completed repetitions are still
    stored, pressure samples are dropped from then on, and `disk_full` is True for the
    supervisor to say so. The reserve comes back when the space does.
    """

    def __init__(self, path: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S,
                 reserve_bytes: int = RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.reserve_path = self.path.with_name(self.path.name + RESERVE_SUFFIX)
        self.reserve_bytes = reserve_bytes
        self.lock_timeout_s = lock_timeout_s
        self._pending_events: list[tuple] = []
        self._pending_samples: list[tuple] = []
        self.samples_dropped = 0
        self.events_dropped = 0
        self.keep_samples = True
        self.disk_full = False
        problem = file_problem(self.path)
        if problem:
            raise StoreDamaged(self.path, problem)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreDamaged(self.path, f"has no usable directory ({exc.strerror or exc})") from None
        # Read-only first: a damaged or newer file is refused before a byte of it is written.
        damage = diagnose(self.path, lock_timeout_s)
        if damage is not None and self._full_disk_at_open():
            damage = diagnose(self.path, lock_timeout_s)  # the reserve made room for SQLite's -shm
        if damage is not None:
            raise damage
        try:
            self.db = self._connect()
        except sqlite3.OperationalError as exc:
            # A full disk at open: the reserve (from an earlier start) makes the room.
            if not _is_full(exc) or not self._release_reserve(exc):
                raise StoreDamaged(self.path, _damage_reason(exc, lock_timeout_s)) from None
            self.disk_full = True
            try:
                self.db = self._connect()
            except UNREADABLE as again:
                raise StoreDamaged(self.path, _damage_reason(again, lock_timeout_s)) from None
        except UNREADABLE as exc:
            raise StoreDamaged(self.path, _damage_reason(exc, lock_timeout_s)) from None
        if not self.disk_full:
            self._make_reserve()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.lock_timeout_s)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed repetition survives a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self.db = db
            db.executescript(SCHEMA)
            self._migrate()
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            # Proves the write lock can be had now, not at the first repetition.
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self) -> None:
        """Add repetition metrics that a database written by an older version lacks."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(repetitions)")}
        for column in REP_METRICS:
            if column not in have:
                kind = "INTEGER" if column in ("release_complete", "contractions", "artefact") else "REAL"
                self.db.execute(f"ALTER TABLE repetitions ADD COLUMN {column} {kind}")
                log.info("database %s: added repetitions.%s", self.path, column)

    # --- the reserve ----------------------------------------------------------------------

    def _make_reserve(self) -> bool:
        """Set the reserve aside when there is room for it and as much again; True if it is there."""
        if self.reserve_bytes <= 0:
            return False
        try:
            if self.reserve_path.is_file() and self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
            if shutil.disk_usage(self.reserve_path.parent).free < 2 * self.reserve_bytes:
                return False
        except OSError as exc:
            log.warning("cannot check the storage reserve %s: %s", self.reserve_path, exc)
            return False
        tmp = self.reserve_path.with_name(self.reserve_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.reserve_bytes)
                except OSError as exc:
                    if exc.errno == 28:  # ENOSPC: no room after all
                        raise
                    # A file system without fallocate: real zeros hold the blocks just as well.
                    block = b"\0" * 65536
                    for _ in range(0, self.reserve_bytes, len(block)):
                        os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve_path)
        except OSError as exc:
            log.warning("cannot set the storage reserve aside: %s", exc)
            tmp.unlink(missing_ok=True)
            return False
        log.info("storage reserve of %d KiB set aside in %s", self.reserve_bytes // 1024, self.reserve_path)
        return True

    def _full_disk_at_open(self) -> bool:
        """The disk is too full even to open the file (SQLite's -shm): release the reserve; True if released."""
        try:
            if shutil.disk_usage(self.path.parent).free >= 64 * 1024:
                return False
        except OSError:
            return False
        if not self._release_reserve(OSError(28, "no space left on the device at open")):
            return False
        self.disk_full = True
        return True

    def _release_reserve(self, exc: Exception) -> bool:
        """Delete the reserve so the write that found the disk full can be retried; True if it was there."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            log.error("cannot release the storage reserve %s: %s", self.reserve_path, err)
            return False
        log.error("disk full (%s): storage reserve released; repetitions are kept, samples no longer", exc)
        return True

    def _disk_became_full(self, exc: Exception) -> bool:
        """The disk is full: samples stop, the reserve makes room; True if a retry can succeed."""
        self.disk_full = True
        if self._pending_samples:
            log.warning("disk full: dropping %d samples", len(self._pending_samples))
            self.samples_dropped += len(self._pending_samples)
            self._pending_samples.clear()
        return self._release_reserve(exc)

    def _space_back(self) -> None:
        """After a full disk: when the reserve can be set aside again, samples are kept again."""
        if self.disk_full and self._make_reserve():
            self.disk_full = False
            log.info("disk space is back: storage reserve restored, samples are kept again")

    def _write(self, transaction: Callable[[], T]) -> T:
        """Run one write; on a full disk release the reserve and run it once more."""
        try:
            return self._attempt(transaction)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._disk_became_full(exc)
        return self._attempt(transaction)

    def _attempt(self, transaction: Callable[[], T]) -> T:
        try:
            return transaction()
        except sqlite3.Error:
            # SQLite may or may not have rolled back a transaction that failed on a full disk.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def mark_interrupted(self) -> int:
        """Sessions still 'running' in the file were cut off (power cut, crash): say so."""
        def update() -> int:
            with self.db:
                self.db.execute("BEGIN")
                return self.db.execute("UPDATE sessions SET status='interrupted' WHERE status='running'").rowcount
        return self._write(update)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.db.close()

    # --- writing ------------------------------------------------------------------------

    def start_session(self, when: datetime, programme: str, lang: str, patient_code: str | None = None,
                      source: str = "device") -> int:
        return self._write(lambda: _inserted(self.db.execute(
            "INSERT INTO sessions(started_utc, programme, lang, patient_code, source) VALUES (?,?,?,?,?)",
            (when.isoformat(), programme, lang, patient_code, source),
        )))

    def set_calibration(self, session_id: int, rest: float, mvc: float, band: str) -> None:
        self._write(lambda: self.db.execute("UPDATE sessions SET rest_cmh2o=?, mvc_cmh2o=?, oxford_band=? WHERE id=?",
                                            (rest, mvc, band, session_id)))

    def start_exercise(self, session_id: int, exercise: str, position: int, when: datetime) -> int:
        return self._write(lambda: _inserted(self.db.execute(
            "INSERT INTO exercises(session_id, exercise, position, started_utc) VALUES (?,?,?,?)",
            (session_id, exercise, position, when.isoformat()),
        )))

    def end_exercise(self, row: int, status: str, when: datetime) -> None:
        self._write(lambda: self.db.execute("UPDATE exercises SET status=?, ended_utc=? WHERE id=?",
                                            (status, when.isoformat(), row)))

    def event(self, session_id: int, t: float, kind: str, data: dict[str, Any]) -> None:
        self._pending_events.append((session_id, float(t), kind, to_json(data)))

    def sample(self, session_id: int, t: float, cmh2o: float, pct: float) -> None:
        if self.disk_full:
            self.samples_dropped += 1  # counted: the supervisor hears of the full disk by this too
        elif self.keep_samples:
            self._pending_samples.append((session_id, t, cmh2o, pct))

    def add_repetition(self, session_id: int, exercise_row: int, exercise: str, rep: int, status: str,
                       when: datetime, t_start: float, t_end: float, target_pct: float,
                       metrics: dict[str, Any]) -> int:
        """Store one repetition and everything pending before it, in one transaction.

        On a full disk SQLite may roll the whole transaction back; the reserve is then
        released and the repetition written again with its events (samples dropped), and
        if even that does not fit, on its own.
        """
        row = (session_id, exercise_row, exercise, rep, status, when.isoformat(), t_start, t_end, target_pct,
               *(_sql_value(metrics.get(k)) for k in REP_METRICS))
        sql = ("INSERT INTO repetitions(session_id, exercise_row, exercise, rep, status, ended_utc, t_start,"
               " t_end, target_pct, " + ", ".join(REP_METRICS) + ")"
               " VALUES (" + ",".join("?" * len(row)) + ")")

        def insert(with_pending: bool) -> int:
            with self.db:
                self.db.execute("BEGIN")
                cur = self.db.execute(sql, row)
                if with_pending:
                    self._write_pending()
            return _inserted(cur)

        self._space_back()
        try:
            return self._write(lambda: insert(True))
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._drop_pending(exc)
        return self._attempt(lambda: insert(False))

    def end_session(self, session_id: int, status: str, when: datetime) -> None:
        self.flush()

        def update() -> None:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("UPDATE exercises SET status=?, ended_utc=? WHERE session_id=? AND status='running'",
                                ("stopped" if status != "done" else "finished", when.isoformat(), session_id))
                self.db.execute("UPDATE sessions SET status=?, ended_utc=? WHERE id=?",
                                (status, when.isoformat(), session_id))
        self._write(update)
        self._space_back()

    def flush(self) -> None:
        if not (self._pending_events or self._pending_samples):
            return

        def write() -> None:
            with self.db:
                self.db.execute("BEGIN")
                self._write_pending()
        try:
            self._write(write)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._drop_pending(exc)

    def _write_pending(self) -> None:
        """Write pending events and samples inside the caller's transaction.

        On a full disk they are dropped (counted, logged): a repetition matters more.
        """
        if not (self._pending_events or self._pending_samples):
            return
        self.db.execute("SAVEPOINT pending")
        try:
            if self._pending_events:
                self.db.executemany("INSERT INTO events(session_id, t, kind, data) VALUES (?,?,?,?)",
                                    self._pending_events)
            if self._pending_samples:
                self.db.executemany("INSERT INTO samples VALUES (?,?,?,?)", self._pending_samples)
            self.db.execute("RELEASE pending")
        except sqlite3.OperationalError as exc:
            if not _is_full(exc) or not self.db.in_transaction:
                raise  # the caller sees it (a full disk that rolled back everything: rewrite)
            self.db.execute("ROLLBACK TO pending")
            self.db.execute("RELEASE pending")
            self._disk_became_full(exc)
            self._drop_pending(exc)
        else:
            self._pending_events.clear()
            self._pending_samples.clear()

    def _drop_pending(self, exc: Exception) -> None:
        if not (self._pending_events or self._pending_samples):
            return
        log.warning("disk full: dropping %d events and %d samples (%s)", len(self._pending_events),
                    len(self._pending_samples), exc)
        self.events_dropped += len(self._pending_events)
        self.samples_dropped += len(self._pending_samples)
        self._pending_events.clear()
        self._pending_samples.clear()

    # --- reading ------------------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self.db.row_factory = sqlite3.Row
        try:
            return list(self.db.execute(sql, tuple(params)))
        finally:
            self.db.row_factory = None

    def repetitions(self, session_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM repetitions" + (" WHERE session_id=?" if session_id else "") + " ORDER BY id"
        return [dict(r) for r in self.query(sql, (session_id,) if session_id else ())]

    def sessions(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM sessions ORDER BY id")]


class StoreSink:
    """Records the coach's decisions: rows for sessions, exercises and repetitions, the
    event log, and the live pressure downsampled to `sample_hz`."""

    def __init__(self, store: Store, clock, programme: str, lang: str, patient_code: str | None = None,
                 source: str = "device", sample_hz: float = 10.0) -> None:
        self.store = store
        self.clock = clock
        self.programme = programme
        self.lang = lang
        self.patient_code = patient_code
        self.source = source
        self.session_id: int | None = None
        self._exercise_rows: dict[int, int] = {}
        self._early: list = []
        self._sample_every = 1.0 / sample_hz
        self._next_sample_t = 0.0

    def emit(self, event) -> None:
        d = event.data
        kind = event.kind
        if self.session_id is None:
            if kind == "session" and d.get("state") == "started":
                self.session_id = self.store.start_session(self.clock.wall(), self.programme, self.lang,
                                                           self.patient_code, self.source)
                for early in self._early:
                    self.store.event(self.session_id, early.t, early.kind, early.data)
                self._early.clear()
            else:
                self._early.append(event)
                return
        sid = self.session_id
        self.store.event(sid, event.t, kind, d)
        if kind == "calibration":
            self.store.set_calibration(sid, d["rest_cmh2o"], d["mvc_cmh2o"], d["oxford_band"])
        elif kind == "exercise":
            if d["state"] == "started":
                self._exercise_rows[d["index"]] = self.store.start_exercise(sid, d["exercise"], d["index"],
                                                                            self.clock.wall())
            elif d["index"] in self._exercise_rows:
                self.store.end_exercise(self._exercise_rows[d["index"]], d["state"], self.clock.wall())
        elif kind == "rep":
            row = self._exercise_rows.get(d["exercise_index"])
            if row is None:  # cannot happen from the coach; keep the repetition all the same
                row = self.store.start_exercise(sid, d["exercise"], d["exercise_index"], self.clock.wall())
            metrics = {k: d.get(k) for k in REP_METRICS}
            self.store.add_repetition(sid, row, d["exercise"], d["rep"], d["status"], self.clock.wall(),
                                      d["t_start"], d["t_end"], d["target_pct"], metrics)
        elif kind == "session" and d.get("state") in ("stopped", "done"):
            self.store.end_session(sid, d["state"], self.clock.wall())

    def feedback(self, fb) -> None:
        if self.session_id is None or fb.t < self._next_sample_t - 1e-6:
            return
        self._next_sample_t = max(self._next_sample_t + self._sample_every, fb.t - self._sample_every)
        self.store.sample(self.session_id, round(fb.t, 3), round(fb.cmh2o, 2), round(fb.strength_pct, 1))
