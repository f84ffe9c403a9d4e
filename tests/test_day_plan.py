"""A day's training a physiotherapist would prescribe (issue 14): safe calibration after
surgery, strength measured once a day at most, the day plan, the daily-life exercises,
movement artefacts."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import median
from types import SimpleNamespace

import pytest

from appliance.clinic.enrolment import enroll
from appliance.clinic.report import strength_series
from appliance.clinic.summary import counts_for_strength
from appliance.coach.programme import PhaseKind, load_programme
from appliance.config import ConfigError
from appliance.patient.prescription import parse_prescription
from appliance.patient.today import known_mvc, todays_exercises, todays_plan
from appliance.sensor.signal import RepRecorder
from appliance.simulation.lending import simulate_days
from appliance.simulation.session import simulate

# What asks for maximal effort: the calibration's maximal squeeze, the PERFECT assessment,
# and the status answers that ask for more.
MAXIMAL_CUES = {"calibrate.squeeze", "calibrate.again", "calibrate.intro", "perfect.endurance_title",
                "perfect.fast_title", "perfect.intro", "status.almost", "status.low"}
START = date(2026, 3, 2)  # a Monday


def _events(db: Path, kind: str) -> list[tuple[int, dict]]:
    con = sqlite3.connect(db)
    try:
        return [(sid, json.loads(d)) for sid, d in
                con.execute("SELECT session_id, data FROM events WHERE kind = ? ORDER BY id", (kind,))]
    finally:
        con.close()


def _enrolled(tmp_path: Path, extra: str = "", surgery: date | None = None) -> Path:
    rx = tmp_path / "rx.toml"
    text = '[patient]\ncode = "GNT-2026-0142"\n'
    if surgery is not None:
        text += f"surgery_date = {surgery.isoformat()}\n"
    rx.write_text(text + extra)
    state = tmp_path / "state"
    enroll(state, rx, datetime.combine(START, datetime.min.time(), UTC))
    return state


def test_ten_days_after_surgery_no_maximal_squeeze_is_asked_nor_more_than_30_pct(tmp_path):
    """The lending through the device, surgery 10 days before the start: fourteen days of
    awareness work (a main session and a short set a day), never a maximal squeeze."""
    state = _enrolled(tmp_path, '[reminders]\ntimes = ["17:30"]\n', surgery=START - timedelta(days=10))
    summary = simulate_days(state, 14, first_day=START, patient="postop", seed=4)
    db = state / "appliance.db"
    assert summary.main == 14 and summary.short_sets >= 7
    said = [d["phrase"] for _, d in _events(db, "say")]
    assert "calibrate.squeeze_gentle" in said
    assert not MAXIMAL_CUES & set(said)
    phases = [d for _, d in _events(db, "phase")]
    asked = [d["level_pct"] for d in phases]
    assert max(asked) == pytest.approx(30.0)  # the gentle reference squeeze is the most asked
    assert all(level <= 30.0 for level in asked)
    # The gentle squeezes in the first session and again a week later; every other session
    # measures the rest pressure only (once a week, or when the baseline moved).
    squeezes_by_session = sorted({sid for sid, d in _events(db, "phase") if d["phase"] == "calibrate_squeeze"})
    assert squeezes_by_session[0] == 1 and len(squeezes_by_session) <= 3
    sources = [d["mvc_source"] for _, d in _events(db, "calibration")]
    assert sources.count("squeeze") == len(squeezes_by_session)
    assert set(sources) <= {"squeeze", "earlier"}


def test_the_mvc_the_clinic_measured_replaces_every_calibration_squeeze(tmp_path):
    state = _enrolled(tmp_path, "[reminders]\nenabled = false\n[calibration]\nclinic_mvc_cmh2o = 32.5\n"
                                "[exercise.ex1]\nrepetitions = 2\n[day]\ndaily = [\"ex1\"]\n")
    result = simulate(state_dir=state, seed=3, lang=None, start_wall=datetime(2026, 3, 3, 9, tzinfo=UTC))
    kinds = [e.data["phase"] for e in result.log.of("phase")]
    assert "calibrate_rest" in kinds and "calibrate_squeeze" not in kinds
    cal = result.log.of("calibration")[0].data
    assert cal["mvc_cmh2o"] == 32.5 and cal["mvc_source"] == "clinic"
    assert not MAXIMAL_CUES & {e.data["phrase"] for e in result.log.of("say")}


def _session(day: date, mvc: float, rest: float, source: str = "squeeze", programme: str = "leaflet") -> dict:
    return {"started_utc": datetime.combine(day, datetime.min.time().replace(hour=9), UTC).isoformat(),
            "programme": programme, "mvc_cmh2o": mvc, "rest_cmh2o": rest, "mvc_source": source,
            "reps": [], "jumps": [], "perfect": None}


@pytest.mark.parametrize(("sessions", "today", "expected"), [
    ([], START, (None, "squeeze")),  # never measured: measure
    ([_session(START, 35.0, 20.0)], START, (35.0, "earlier")),  # once a day at most
    ([_session(START, 35.0, 20.0), _session(START + timedelta(days=1), 35.0, 22.0, "earlier")],
     START + timedelta(days=3), (35.0, "earlier")),  # within the week, baseline steady
    ([_session(START, 35.0, 20.0)], START + timedelta(days=7), (None, "squeeze")),  # the weekly measurement
    ([_session(START, 35.0, 20.0), _session(START + timedelta(days=1), 35.0, 26.0, "earlier")],
     START + timedelta(days=2), (None, "squeeze")),  # the rest pressure moved 6 cmH2O
    ([_session(START, 12.0, 20.0, programme="postop")], START + timedelta(days=1), (None, "squeeze")),
])
def test_strength_is_measured_once_a_day_at_most_and_again_weekly_or_when_the_baseline_moved(
        sessions, today, expected):
    rx = parse_prescription({"patient": {"code": "GNT-0042"}}, "rx.toml")
    assert known_mvc(sessions, rx, today, "leaflet") == expected


def test_the_day_plan_trains_awareness_and_ex1_daily_and_rotates_the_rest_over_the_week():
    prog = load_programme("leaflet")
    seen: dict[str, int] = {}
    for d in range(7):
        day = todays_exercises(prog, START + timedelta(days=d))
        ids = [e.id for e in day.exercises]
        assert ids[:2] == ["awareness", "ex1"]
        for i in ids:
            seen[i] = seen.get(i, 0) + 1
        assert any(k.startswith("day.today") for k in day.intro)  # the patient is told today's set
    assert seen["awareness"] == seen["ex1"] == 7
    assert set(seen) == {e.id for e in prog.exercises}  # every exercise over the week
    assert all(2 <= n <= 5 for i, n in seen.items() if i not in ("awareness", "ex1"))


def test_walking_and_hopping_come_last_after_the_patient_takes_the_probe_out():
    day = todays_exercises(load_programme("leaflet"), START + timedelta(days=2))  # Wednesday
    ids = [e.id for e in day.exercises]
    assert ids[-2:] == ["ex7", "ex8"] and not any(e.probe for e in day.exercises[-2:])
    last_probed = day.exercises[-3]
    assert last_probed.probe and last_probed.outro[-2:] == ("daily_life.probe_out", "daily_life.count_yourself")


def test_the_prescription_may_set_its_own_day_plan_and_is_refused_for_an_unknown_exercise():
    rx = parse_prescription({"patient": {"code": "GNT-0042"}, "day": {"daily": ["ex1", "ex2"]}}, "rx.toml")
    plan = todays_plan(rx, load_programme("leaflet"), START + timedelta(days=1), [])  # Monday: PERFECT
    assert [e.id for e in plan.programme.exercises] == ["ex1", "ex2"]
    with pytest.raises(ConfigError, match=r"day\.daily.*ex9"):
        parse_prescription({"patient": {"code": "GNT-0042"}, "day": {"daily": ["ex9"]}}, "rx.toml")


def test_every_hold_is_at_most_ten_seconds_and_its_rest_at_least_as_long():
    for ex in load_programme("leaflet").exercises:
        longest = run = 0.0
        for ph in ex.phases:
            if ph.kind in (PhaseKind.HOLD, PhaseKind.MOVE) and ph.level >= 1.0:
                run += ph.max_seconds if ph.breaths else (ph.seconds or 0.0)
                longest = max(longest, run)
            else:
                run = 0.0
        if ex.probe:  # a squeeze measured and held: the strength bound
            assert longest <= 10.0, ex.id
        assert ex.rest_between_reps_s >= longest, ex.id


def test_three_breaths_hold_follows_the_pace_but_stays_within_ten_seconds():
    ex2 = load_programme("leaflet").only("ex2")
    one = replace(ex2, exercises=(replace(ex2.exercises[0], repetitions=2),))
    result = simulate(programme=one, seed=2)
    holds = [e.data["end"] - e.data["start"] for e in result.log.of("phase") if e.data["phase"] == "hold"]
    rests = [e.data["end"] - e.data["start"] for e in result.log.of("phase") if e.data["phase"] == "rest"]
    assert holds and all(5.0 <= h <= 10.0 for h in holds)
    assert all(r >= max(holds) for r in rests)


def test_the_five_moments_advice_is_said_once_at_the_end():
    prog = load_programme("leaflet").only("awareness")
    prog = replace(prog, exercises=(replace(prog.exercises[0], repetitions=1),))
    result = simulate(programme=prog, seed=1)
    said = [e.data["text"] for e in result.log.of("say")]
    about_moments = [t for t in said if "vijf" in t and ("dag" in t or "moment" in t)]
    assert len(about_moments) == 1 and said.index(about_moments[0]) > len(said) - 12


def test_hopping_without_the_probe_stores_no_strength_and_is_coached_by_voice(tmp_path):
    prog = load_programme("leaflet").only("ex1", "ex8")
    prog = replace(prog, exercises=tuple(replace(e, repetitions=2) for e in prog.exercises),
                   daily=("ex1", "ex8"), rotation=())
    prog = todays_exercises(prog, START)
    result = simulate(out_dir=tmp_path, programme=prog, seed=2)
    reps = sqlite3.connect(tmp_path / "appliance.db").execute(
        "SELECT exercise, peak_pct, peak_cmh2o, held_s, hold_asked_s FROM repetitions ORDER BY id").fetchall()
    assert [r[0] for r in reps] == ["ex1", "ex1", "ex8", "ex8"]
    assert all(r[1] is not None and r[2] is not None for r in reps[:2])
    assert all(r[1] is None and r[2] is None and r[3] is None and r[4] == pytest.approx(15.0) for r in reps[2:])
    said = [e.data["phrase"] for e in result.log.of("say")]
    assert said.index("daily_life.probe_out") < said.index("exercise.ex8.title")
    assert "cue.jump" in said and "cue.stop_jumping" in said
    assert not [p for p in said[said.index("exercise.ex8.title"):] if p.startswith("probe.")]


def test_a_peak_only_the_leg_movement_shows_is_flagged_and_not_stored_as_strength():
    rec = RepRecorder(contract_at=0.0)
    for i in range(400):  # 4 s at 100 Hz: squeeze to 60 %, then a knee lift pushing to 95 %
        t = i / 100
        moving = t >= 2.0
        pct = min(60.0, 30.0 * t) + (35.0 if 2.5 <= t < 2.7 else 0.0)
        rec.add(t, pct, 60.0 if moving else 0.0, False, moving)
    m = rec.metrics(35.0, 0.01)
    assert m.artefact and m.peak_pct == pytest.approx(60.0, abs=0.5)
    steady = RepRecorder(contract_at=0.0)
    for i in range(400):
        t = i / 100
        steady.add(t, min(60.0, 30.0 * t) + (3.0 if t >= 2.0 else 0.0), 60.0, False, t >= 2.0)
    assert not steady.metrics(35.0, 0.01).artefact  # a little more while moving is the squeeze


def test_the_simulated_knee_lift_is_flagged_in_ex5(tmp_path):
    prog = load_programme("leaflet").only("ex5")
    result = simulate(out_dir=tmp_path, programme=prog, seed=3)
    reps = [e.data for e in result.log.of("rep")]
    assert reps and any(r["artefact"] for r in reps)
    stored = sqlite3.connect(tmp_path / "appliance.db").execute(
        "SELECT artefact, peak_pct FROM repetitions").fetchall()
    assert [bool(a) for a, _ in stored] == [r["artefact"] for r in reps]
    assert all(p < 1.15 * r["target_pct"] for (a, p), r in zip(stored, reps, strict=True) if a)


def test_the_knee_lift_repetitions_are_in_the_strength_chart_with_the_squeezes_own_peak(tmp_path):
    """The leg lifts the belly pressure in nearly every ex5 repetition; the device stores the
    peak outside the movement, so a flagged repetition still counts for the strength charts."""
    prog = load_programme("leaflet").only("ex5")
    reps = [e.data for e in simulate(out_dir=tmp_path, programme=prog, seed=3).log.of("rep")]
    flagged = [r for r in reps if r["artefact"]]
    assert flagged and all(counts_for_strength(r) for r in flagged)
    peaks = strength_series(SimpleNamespace(sessions=[SimpleNamespace(
        id=1, mvc_measured=False, mvc_cmh2o=None, postop=False, kind="main", reps=reps)]))["peaks"]
    assert peaks and peaks[0][1] == pytest.approx(median(r["peak_cmh2o"] for r in reps))


def test_a_gentle_squeeze_made_too_strong_does_not_become_the_mvc_the_targets_come_from(tmp_path):
    """After surgery the reference squeeze is asked gently and taken as 30 %MVC; a strong
    patient's (22 cmH2O, x 100/30 = 73 cmH2O) is capped, so the targets stay gentle."""
    result = simulate(out_dir=tmp_path, programme="postop", patient="strong", seed=0)
    cal = result.log.of("calibration")[0].data
    assert min(cal["squeezes_cmh2o"]) > 15.0  # harder than 30 % of a mean MVC (10.5 cmH2O)
    assert cal["mvc_cmh2o"] == pytest.approx(35.1) and cal["mvc_capped"]
    reps = [e.data for e in result.log.of("rep")]
    assert reps and all(r["target_pct"] <= 30.0 for r in reps)
    assert all(r["target_pct"] * cal["mvc_cmh2o"] / 100 <= 10.6 for r in reps)  # cmH2O asked above rest


def test_an_average_patients_gentle_squeeze_gives_an_estimate_near_her_mvc(tmp_path):
    result = simulate(out_dir=tmp_path, programme="postop", patient="average", seed=0)
    cal = result.log.of("calibration")[0].data
    assert 30.0 <= cal["mvc_cmh2o"] <= 35.1  # her true MVC is 35 cmH2O


def test_a_lending_day_line_counts_one_short_set_and_one_reminder_in_the_singular():
    from appliance.simulation.lending import DayLine, _format_line

    line = _format_line(DayLine(START, main=1, short_sets=1, reminders=1))
    assert "1 main, 1 short set, 0 PERFECT, 1 reminder;" in line
    assert "2 short sets, 0 PERFECT, 2 reminders;" in _format_line(DayLine(START, short_sets=2, reminders=2))
