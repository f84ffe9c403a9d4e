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


# --- Issue 13 item 6: prescriptions accepted at enroll that broke the service later --------

TODAY = date(2026, 3, 2)
CHECKLIST = {k: "no" for k in __import__("appliance.stim", fromlist=["x"]).CONTRAINDICATIONS}


def refusal(tables, today=TODAY):
    data = {"patient": {"code": "GNT-0042"}, **tables}
    if "patient" in tables:
        data["patient"] = {"code": "GNT-0042", **tables["patient"]}
    with pytest.raises(ConfigError) as err:
        parse_prescription(data, "rx.toml", today=today)
    return err.value


def stim(**changes):
    return {"stim": {"enabled": True, "session_minutes": 10, "contraindications": CHECKLIST,
                     "checked_by": "kine-07", "checked_on": date(2026, 3, 1), **changes}}


@pytest.mark.parametrize(
    ("tables", "key", "value"),
    [
        # 9999-12-31 + 6 weeks overflows at every session start: a crash loop.
        ({"patient": {"surgery_date": date(9999, 12, 31)}}, "patient.surgery_date", date(9999, 12, 31)),
        ({"patient": {"catheter_removal_date": date(9999, 12, 31)}}, "patient.catheter_removal_date",
         date(9999, 12, 31)),
        ({"patient": {"surgery_date": date(1, 1, 1)}}, "patient.surgery_date", date(1, 1, 1)),
        (stim(surgery_or_birth_date=date(9999, 12, 31)), "stim.surgery_or_birth_date", date(9999, 12, 31)),
        (stim(checked_on=date(9999, 1, 1)), "stim.checked_on", date(9999, 1, 1)),
        (stim(checked_on=date(2026, 3, 10)), "stim.checked_on", date(2026, 3, 10)),  # next week
        (stim(checked_by="\u200b"), "stim.checked_by", "\u200b"),  # a zero-width space is no signature
        (stim(checked_by="\u2060\ufeff \u00a0"), "stim.checked_by", "\u2060\ufeff \u00a0"),
        ({"patient": {"programme": "../../etc/appliance/other.toml"}}, "patient.programme",
         "../../etc/appliance/other.toml"),
        ({"patient": {"programme": "/tmp/evil.toml"}}, "patient.programme", "/tmp/evil.toml"),
        ({"patient": {"programme": "leaflet.toml"}}, "patient.programme", "leaflet.toml"),
        ({"patient": {"programme": "nope"}}, "patient.programme", "nope"),
    ],
)
def test_values_that_broke_the_service_later_are_refused_at_load(tables, key, value):
    err = refusal(tables)
    assert (err.file, err.key, err.value) == ("rx.toml", key, value)


def test_dates_near_today_and_a_signed_checklist_load():
    data = {"patient": {"code": "GNT-0042", "surgery_date": date(2026, 1, 5)}, **stim()}
    rx = parse_prescription(data, "rx.toml", today=TODAY)
    assert rx.stim.enabled and rx.stim_allowed_from == date(2026, 3, 30)
    planned = parse_prescription({"patient": {"code": "GNT-0042", "surgery_date": date(2027, 6, 1)}},
                                 "rx.toml", today=TODAY)
    assert planned.unlock_date == date(2027, 7, 13)  # a planned surgery: fine


def test_every_exercise_disabled_is_refused_at_load():
    off = {ex.id: {"enabled": False} for ex in load_programme("leaflet").exercises}
    err = refusal({"exercise": off})
    assert err.key == "exercise" and "no exercise" in err.reason


def test_a_short_set_of_a_disabled_exercise_is_refused():
    err = refusal({"exercise": {"ex1": {"enabled": False}}})  # the default short set is ex1
    assert (err.key, err.value) == ("reminders.short_set[0]", "ex1")


@pytest.mark.parametrize("code", ["GNT-0042\n", " GNT-0042", "GNT-0042 ", "GNT-\u200b0042", "GNT-00\x0742",
                                  "GNT-0042\r\n", "G" * 30 + "1"])
def test_a_patient_code_with_invisible_or_surrounding_characters_is_refused_without_repeating_it(code):
    err = refusal({"patient": {"code": code}})
    assert err.key == "patient.code" and err.value == code
    assert code.strip() not in str(err)  # the refusal goes to the journal, which the wipe cannot reach


def test_names_in_the_patient_table_are_refused_without_repeating_them():
    err = refusal({"patient": {"name": "Marie Janssens"}})
    assert err.key == "patient.name" and "Janssens" not in str(err)


@pytest.mark.parametrize("key", ["rest_between_reps_s", "move_seconds", "hold_seconds", "target_pct_mvc"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_overrides_are_refused(key, value):
    ex = "ex7" if key == "move_seconds" else "ex2"
    err = refusal({"exercise": {ex: {key: value}}})
    assert err.key == f"exercise.{ex}.{key}" and "finite" in err.reason


@pytest.mark.parametrize(("table", "key"), [("breathing", "inhale_s"), ("reminders", "snooze_minutes"),
                                            ("progression", "step_pct")])
def test_non_finite_numbers_elsewhere_are_refused(table, key):
    err = refusal({table: {key: float("nan")}})
    assert err.key == f"{table}.{key}"


@pytest.mark.parametrize("code, counted", [("1", "1 character)"), ("G1", "2 characters)")])
def test_a_too_short_patient_code_is_counted_in_plain_words(code, counted):
    err = refusal({"patient": {"code": code}})
    assert str(err).endswith(counted)
