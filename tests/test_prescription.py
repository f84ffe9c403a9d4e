"""The prescription: validation naming file/key/value, overrides, the post-operative gate."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from appliance.coach.programme import PhaseKind, load_programme
from appliance.config import ConfigError
from appliance.patient.prescription import (
    load_prescription,
    parse_prescription,
    plan_for_day,
    prescribed_programme,
)

EXAMPLE = Path(__file__).parent.parent / "examples" / "prescription.toml"


def test_example_prescription_loads_and_is_applied():
    rx = load_prescription(EXAMPLE)
    assert rx.code == "GNT-2026-0042"
    assert rx.unlock_date == date(2026, 3, 30)  # 6 weeks after 2026-02-16
    prog = prescribed_programme(rx)
    ex1 = prog.exercise("ex1")
    assert ex1.repetitions == 10 and ex1.target_pct_mvc == 55
    hold = [p for p in ex1.phases if p.kind is PhaseKind.HOLD]
    assert hold[0].seconds == 6.0
    # Only the unlocked progression is suggested; the standing one stays locked.
    assert "exercise.ex1.progression_sitting" in ex1.outro
    assert "exercise.ex1.progression_standing" not in ex1.outro
    walk = [p for p in prog.exercise("ex7").phases if p.kind is PhaseKind.MOVE]
    assert sum(p.seconds for p in walk) == 45
    assert "ex8" not in {e.id for e in prog.exercises}


@pytest.mark.parametrize(
    ("tables", "key", "value"),
    [
        ({"patient": {"code": "JANSSENS"}}, "patient.code", "JANSSENS"),
        ({"patient": {"code": "GNT-0042", "name": "Marie"}}, "patient.name", "Marie"),
        ({"patient": {"code": "GNT-0042", "language": "fr"}}, "patient.language", "fr"),
        ({"patient": {"code": "GNT-0042", "surgery_date": "2026-02-01"}}, "patient.surgery_date", "2026-02-01"),
        ({"exercise": {"ex9": {"repetitions": 5}}}, "exercise.ex9", {"repetitions": 5}),
        ({"exercise": {"ex1": {"repetitions": 50}}}, "exercise.ex1.repetitions", 50),
        ({"exercise": {"ex1": {"hold_seconds": 12}}}, "exercise.ex1.hold_seconds", 12),
        ({"exercise": {"ex1": {"progressions_unlocked": ["exercise.ex2.progression"]}}},
         "exercise.ex1.progressions_unlocked[0]", "exercise.ex2.progression"),
        ({"exercise": {"ex1": {"move_seconds": 30}}}, "exercise.ex1.move_seconds", 30),
        ({"reminders": {"times": ["06:00"]}}, "reminders.times[0]", "06:00"),
        ({"reminders": {"times": ["12:45"], "quiet": ["12:30-13:30"]}}, "reminders.times[0]", "12:45"),
        ({"reminders": {"times": ["8:30"]}}, "reminders.times[0]", "8:30"),
        ({"reminders": {"timezone": "Europe/Gent"}}, "reminders.timezone", "Europe/Gent"),
        ({"breathing": {"inhale_s": 9}}, "breathing.inhale_s", 9),
        ({"progression": {"step_pct": "five"}}, "progression.step_pct", "five"),
        ({"stim": {"enabled": True, "session_minutes": 20}}, "stim.contraindications", None),
        ({"stim": {"work_seconds": 30}}, "stim.work_seconds", 30),
    ],
)
def test_bad_prescription_is_refused_naming_file_key_and_value(tables, key, value):
    data = {"patient": {"code": "GNT-0042"}, **tables}
    with pytest.raises(ConfigError) as err:
        parse_prescription(data, "rx.toml")
    assert err.value.file == "rx.toml"
    assert err.value.key == key
    assert err.value.value == value


def test_surgery_date_is_shared_with_the_stim_lockout():
    rx = parse_prescription({"patient": {"code": "GNT-0042", "surgery_date": date(2026, 3, 2)}}, "rx.toml")
    assert rx.stim.surgery_or_birth_date == date(2026, 3, 2)
    assert rx.stim_allowed_from == date(2026, 5, 25)


def test_postop_gate_runs_awareness_only_with_capped_targets_until_six_weeks():
    rx = parse_prescription({"patient": {"code": "GNT-0042", "surgery_date": date(2026, 3, 2)},
                             "exercise": {"awareness": {"target_pct_mvc": 70, "repetitions": 10}}}, "rx.toml")
    before = plan_for_day(rx, date(2026, 4, 12))  # 6 weeks minus a day
    assert before.postop and not before.stim_allowed
    assert [e.id for e in before.programme.exercises] == ["awareness"]
    aw = before.programme.exercise("awareness")
    assert aw.target_level_pct <= 30.0  # the clinician's 70 % cannot lift the cap
    assert aw.repetitions == 10  # other overrides still apply
    assert before.more_phrase == "postop.why_awareness"
    on = plan_for_day(rx, date(2026, 4, 13))
    assert not on.postop and on.announce == ("postop.unlocked",)
    assert on.programme.intro[0] == "postop.unlocked"
    assert {"ex1", "ex8"} <= {e.id for e in on.programme.exercises}
    later = plan_for_day(rx, date(2026, 4, 20), full_programme_seen_since_unlock=True)
    assert later.announce == () and "postop.unlocked" not in later.programme.intro


def test_stim_stays_off_for_twelve_weeks_even_when_prescribed():
    checklist = {k: "no" for k in __import__("appliance.stim", fromlist=["x"]).CONTRAINDICATIONS}
    stim = {"enabled": True, "session_minutes": 20, "contraindications": checklist,
            "checked_by": "kine-07", "checked_on": date(2026, 3, 1)}
    rx = parse_prescription({"patient": {"code": "GNT-0042", "surgery_date": date(2026, 3, 2)},
                             "stim": stim}, "rx.toml")
    assert not plan_for_day(rx, date(2026, 4, 20)).stim_allowed  # unlocked training, week 7
    assert not plan_for_day(rx, date(2026, 5, 24)).stim_allowed
    assert plan_for_day(rx, date(2026, 5, 25)).stim_allowed


def test_no_surgery_date_means_no_gate():
    rx = parse_prescription({"patient": {"code": "GNT-0042"}}, "rx.toml")
    plan = plan_for_day(rx, date(2026, 1, 5))
    assert not plan.postop and plan.announce == ()
    assert plan.programme.exercises == prescribed_programme(rx, load_programme("leaflet")).exercises
