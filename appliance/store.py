"""Patient data on the device: SQLite in WAL mode, one commit per finished repetition.

A power cut can lose at most the repetition in progress; everything the coach has
announced as completed is on disk. Timestamps are UTC wall-clock (ISO 8601).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

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
               "steadiness_pct", "release_complete", "onset_s", "mean_hold_pct", "contractions")


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


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, default=_plain)


class Store:
    """The device's database. One writer (the coach); commits per repetition."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed repetition survives a power cut, not only a crash.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self._migrate()
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._pending_events: list[tuple] = []
        self._pending_samples: list[tuple] = []
        self.samples_dropped = 0
        self.events_dropped = 0
        self.keep_samples = True

    def _migrate(self) -> None:
        """Add repetition metrics that a database written by an older version lacks."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(repetitions)")}
        for column in REP_METRICS:
            if column not in have:
                kind = "INTEGER" if column in ("release_complete", "contractions") else "REAL"
                self.db.execute(f"ALTER TABLE repetitions ADD COLUMN {column} {kind}")
                log.info("database %s: added repetitions.%s", self.path, column)

    def mark_interrupted(self) -> int:
        """Sessions still 'running' in the file were cut off (power cut, crash): say so."""
        with self.db:
            self.db.execute("BEGIN")
            n = self.db.execute("UPDATE sessions SET status='interrupted' WHERE status='running'").rowcount
        return n

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.db.close()

    # --- writing ------------------------------------------------------------------------

    def start_session(self, when: datetime, programme: str, lang: str, patient_code: str | None = None,
                      source: str = "device") -> int:
        cur = self.db.execute(
            "INSERT INTO sessions(started_utc, programme, lang, patient_code, source) VALUES (?,?,?,?,?)",
            (when.isoformat(), programme, lang, patient_code, source),
        )
        return int(cur.lastrowid)

    def set_calibration(self, session_id: int, rest: float, mvc: float, band: str) -> None:
        self.db.execute("UPDATE sessions SET rest_cmh2o=?, mvc_cmh2o=?, oxford_band=? WHERE id=?",
                        (rest, mvc, band, session_id))

    def start_exercise(self, session_id: int, exercise: str, position: int, when: datetime) -> int:
        cur = self.db.execute(
            "INSERT INTO exercises(session_id, exercise, position, started_utc) VALUES (?,?,?,?)",
            (session_id, exercise, position, when.isoformat()),
        )
        return int(cur.lastrowid)

    def end_exercise(self, row: int, status: str, when: datetime) -> None:
        self.db.execute("UPDATE exercises SET status=?, ended_utc=? WHERE id=?", (status, when.isoformat(), row))

    def event(self, session_id: int, t: float, kind: str, data: dict[str, Any]) -> None:
        self._pending_events.append((session_id, float(t), kind, to_json(data)))

    def sample(self, session_id: int, t: float, cmh2o: float, pct: float) -> None:
        if self.keep_samples:
            self._pending_samples.append((session_id, t, cmh2o, pct))

    def add_repetition(self, session_id: int, exercise_row: int, exercise: str, rep: int, status: str,
                       when: datetime, t_start: float, t_end: float, target_pct: float,
                       metrics: dict[str, Any]) -> int:
        """Store one repetition and everything pending before it, in one transaction.

        On a full disk SQLite may roll the whole transaction back; the repetition is then
        written again on its own, and the pending events and samples are dropped.
        """
        row = (session_id, exercise_row, exercise, rep, status, when.isoformat(), t_start, t_end, target_pct,
               *(_sql_value(metrics.get(k)) for k in REP_METRICS))
        sql = ("INSERT INTO repetitions(session_id, exercise_row, exercise, rep, status, ended_utc, t_start,"
               " t_end, target_pct, " + ", ".join(REP_METRICS) + ")"
               " VALUES (" + ",".join("?" * len(row)) + ")")
        try:
            with self.db:
                self.db.execute("BEGIN")
                cur = self.db.execute(sql, row)
                self._write_pending()
            return int(cur.lastrowid)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._drop_pending(exc)
        with self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute(sql, row)
        return int(cur.lastrowid)

    def end_session(self, session_id: int, status: str, when: datetime) -> None:
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE exercises SET status=?, ended_utc=? WHERE session_id=? AND status='running'",
                            ("stopped" if status != "done" else "finished", when.isoformat(), session_id))
            self.db.execute("UPDATE sessions SET status=?, ended_utc=? WHERE id=?",
                            (status, when.isoformat(), session_id))

    def flush(self) -> None:
        if not (self._pending_events or self._pending_samples):
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                self._write_pending()
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
            self._drop_pending(exc)
        else:
            self._pending_events.clear()
            self._pending_samples.clear()

    def _drop_pending(self, exc: Exception) -> None:
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
