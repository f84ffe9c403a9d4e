"""The store keeps every finished repetition, even when the power goes mid-session."""

import sqlite3
from datetime import UTC, datetime

import pytest

from appliance.store import Store


def test_the_simulated_session_is_stored_as_the_coach_announced_it(average_session):
    db = sqlite3.connect(average_session.out_dir / "appliance.db")
    announced = [e.data for e in average_session.log.of("rep")]
    stored = db.execute("SELECT exercise, rep, status, peak_pct, held_s FROM repetitions ORDER BY id").fetchall()
    assert stored == [(r["exercise"], r["rep"], r["status"], r["peak_pct"], r["held_s"]) for r in announced]
    (status, mvc, band), = db.execute("SELECT status, mvc_cmh2o, oxford_band FROM sessions").fetchall()
    cal = average_session.log.of("calibration")[0].data
    assert status == "done" and mvc == cal["mvc_cmh2o"] and band == cal["oxford_band"]
    n_samples, t0, t1 = db.execute("SELECT count(*), min(t), max(t) FROM samples").fetchone()
    assert n_samples == pytest.approx((t1 - t0) * 10, rel=0.02)  # 10 Hz downsampling
    kinds = {k for (k,) in db.execute("SELECT DISTINCT kind FROM events")}
    assert {"phase", "say", "rep", "calibration", "exercise", "session"} <= kinds
    exercises = db.execute("SELECT exercise, status FROM exercises ORDER BY position").fetchall()
    assert all(s == "finished" for _, s in exercises) and len(exercises) == 9


def test_a_repetition_is_committed_before_the_next_begins(tmp_path):
    store = Store(tmp_path / "a.db")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    sid = store.start_session(now, "leaflet", "nl")
    ex = store.start_exercise(sid, "ex1", 1, now)
    store.event(sid, 1.0, "phase", {"phase": "hold"})
    store.sample(sid, 1.0, 40.0, 30.0)
    store.add_repetition(sid, ex, "ex1", 1, "complete", now, 0.0, 10.0, 60.0, {"peak_pct": 61.0})
    # A second connection (as after a power cut) sees the repetition and what came before it.
    other = sqlite3.connect(tmp_path / "a.db")
    assert other.execute("SELECT rep, peak_pct FROM repetitions").fetchall() == [(1, 61.0)]
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert other.execute("SELECT count(*) FROM samples").fetchone()[0] == 1
    store.event(sid, 2.0, "phase", {"phase": "rest"})  # pending, not yet committed
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    store.close()
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 2


def _one_rep(store, when=datetime(2026, 1, 1, tzinfo=UTC), **metrics):
    sid = store.start_session(when, "leaflet", "nl")
    ex = store.start_exercise(sid, "ex1", 1, when)
    store.add_repetition(sid, ex, "ex1", 1, "complete", when, 0.0, 10.0, 60.0, metrics)
    return sid


def test_a_database_from_an_older_version_gains_the_new_columns_and_keeps_storing(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE repetitions (id INTEGER PRIMARY KEY, session_id INTEGER, exercise_row INTEGER,"
                      " exercise TEXT, rep INTEGER, status TEXT, ended_utc TEXT, t_start REAL, t_end REAL,"
                      " target_pct REAL, peak_pct REAL)")
    old.execute("INSERT INTO repetitions(exercise, rep, status, peak_pct) VALUES ('ex2', 3, 'complete', 55.0)")
    old.commit()
    old.close()
    store = Store(path)
    _one_rep(store, peak_pct=60.0, contractions=1, release_complete=True)
    rows = store.query("SELECT exercise, peak_pct, contractions FROM repetitions ORDER BY id")
    assert [tuple(r) for r in rows] == [("ex2", 55.0, None), ("ex1", 60.0, 1)]


def test_numpy_values_from_a_real_probe_are_stored_as_plain_numbers(tmp_path):
    import numpy as np

    store = Store(tmp_path / "n.db")
    sid = store.start_session(datetime(2026, 1, 1, tzinfo=UTC), "leaflet", "nl")
    store.event(sid, np.float64(1.5), "rep", {"release_complete": np.bool_(True), "peak_pct": np.float32(61.5)})
    ex = store.start_exercise(sid, "ex1", 1, datetime(2026, 1, 1, tzinfo=UTC))
    store.add_repetition(sid, ex, "ex1", 1, "complete", datetime(2026, 1, 1, tzinfo=UTC), 0.0, 9.0, 60.0,
                         {"release_complete": np.bool_(False), "peak_pct": np.float64(61.5)})
    (data,), = store.db.execute("SELECT data FROM events").fetchall()
    assert data == '{"release_complete": true, "peak_pct": 61.5}'
    assert store.db.execute("SELECT release_complete, peak_pct FROM repetitions").fetchone() == (0, 61.5)


def test_on_a_full_disk_the_repetition_is_kept_and_its_samples_are_dropped(tmp_path):
    store = Store(tmp_path / "full.db")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    sid = store.start_session(when, "leaflet", "nl")
    ex = store.start_exercise(sid, "ex1", 1, when)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk is (nearly) full
    for i in range(20000):
        store.sample(sid, i / 10, 30.0 + i % 7, 10.0)
    store.event(sid, 1.0, "phase", {"phase": "hold", "padding": "x" * 5000})
    store.add_repetition(sid, ex, "ex1", 1, "complete", when, 0.0, 10.0, 60.0, {"peak_pct": 58.0})
    assert store.samples_dropped == 20000 and store.disk_full
    other = sqlite3.connect(tmp_path / "full.db")
    assert other.execute("SELECT rep, peak_pct FROM repetitions").fetchall() == [(1, 58.0)]
    # Samples go first; the event is kept when it still fits, and counted when it does not.
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] + store.events_dropped == 1


def test_sessions_cut_off_by_a_power_cut_are_marked_interrupted(tmp_path):
    store = Store(tmp_path / "p.db")
    _one_rep(store)
    store.db.close()
    again = Store(tmp_path / "p.db")
    assert again.mark_interrupted() == 1
    assert [s["status"] for s in again.sessions()] == ["interrupted"]
    assert again.mark_interrupted() == 0
