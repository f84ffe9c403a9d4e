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
