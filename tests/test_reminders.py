"""Five moments a day, and six weeks after surgery simulated day by day (Europe/Brussels)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from appliance.clinic.enrolment import enroll
from appliance.clock import SimClock
from appliance.coach.runner import ScriptedCommand
from appliance.commands import Command
from appliance.patient.prescription import Reminders, parse_prescription, plan_for_day
from appliance.patient.reminders import Answer, ReminderClock
from appliance.simulation.session import EventLog, simulate
from appliance.voice.phrases import Catalogue

BRUSSELS = ZoneInfo("Europe/Brussels")


def _utc(y, m, d, hh, mm):
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


def test_five_default_moments_keep_their_local_time_across_daylight_saving():
    clock = ReminderClock(Reminders())
    winter = [r.due_utc for r in clock.slots_on(date(2026, 3, 28))]
    summer = [r.due_utc for r in clock.slots_on(date(2026, 3, 29))]  # clocks go forward that night
    assert len(winter) == 5
    assert winter[0] == _utc(2026, 3, 28, 7, 30)  # 08:30 CET
    assert summer[0] == _utc(2026, 3, 29, 6, 30)  # 08:30 CEST
    assert [r.local.strftime("%H:%M") for r in clock.slots_on(date(2026, 10, 25))] == \
        ["08:30", "11:00", "14:00", "17:30", "20:30"]


def test_each_reminder_carries_one_of_the_leaflets_moments():
    slots = ReminderClock(Reminders()).slots_on(date(2026, 3, 2))
    tips = [r.phrases[1] for r in slots]
    assert set(tips) == {"reminder.moment_toilet", "reminder.moment_drink", "reminder.moment_bed"}
    assert tips[-1] == "reminder.moment_bed"  # the evening one: "when you are lying in bed"
    assert all(r.phrases[0] == "device.reminder" for r in slots)


def test_later_snoozes_but_never_into_quiet_hours_and_not_forever():
    rem = Reminders(times=("12:10", "20:30"), quiet=("12:30-13:30",), snooze_minutes=15, max_snoozes=2)
    clock = ReminderClock(rem)
    r = clock.due(_utc(2026, 3, 2, 11, 10))  # 12:10 CET
    assert r is not None and r.slot == 0
    answer, phrase = clock.answer(r, Command.LATER, _utc(2026, 3, 2, 11, 11))
    assert answer is Answer.SNOOZED and phrase == "reminder.snoozed"
    assert clock.due(_utc(2026, 3, 2, 11, 20)) is None
    again = clock.due(_utc(2026, 3, 2, 11, 26))
    assert again is not None and again.snoozes == 1
    # A second "later" would land at 12:41, in the quiet hour: the device gives up politely.
    answer, phrase = clock.answer(again, Command.LATER, _utc(2026, 3, 2, 11, 26))
    assert answer is Answer.GIVEN_UP and phrase == "reminder.given_up"
    assert clock.due(_utc(2026, 3, 2, 11, 45)) is None
    assert clock.answer(again, Command.START, _utc(2026, 3, 2, 11, 27))[0] is Answer.START


def test_a_reminder_is_given_once_and_skipped_after_a_recent_set():
    clock = ReminderClock(Reminders())
    now = _utc(2026, 3, 2, 7, 31)
    assert clock.due(now) is not None
    assert clock.due(now + timedelta(minutes=1)) is None
    eleven = _utc(2026, 3, 2, 10, 0)
    assert clock.due(eleven, last_set_utc=eleven - timedelta(minutes=20)) is None


def test_six_weeks_after_surgery_day_by_day(tmp_path):
    """Awareness only (capped) until the unlock date, unlocked and announced on it, reminders
    at 08:30 local time before and after the change to summer time on 29 March. The
    sessions are the device's own (`simulate --state-dir`, the enrolled prescription)."""
    rx_file = tmp_path / "rx.toml"
    rx_file.write_text('[patient]\ncode = "GNT-2026-0042"\nsurgery_date = 2026-03-02\n'
                       '[reminders]\nshort_set = ["ex1", "awareness"]\n')
    state = tmp_path / "state"
    enroll(state, rx_file, datetime(2026, 3, 2, 8, tzinfo=UTC))
    rx = parse_prescription({"patient": {"code": "GNT-2026-0042", "surgery_date": date(2026, 3, 2)},
                             "reminders": {"short_set": ["ex1", "awareness"]}}, "rx.toml")
    assert rx.unlock_date == date(2026, 4, 13)
    reminders = ReminderClock(rx.reminders)
    morning_utc = {}
    for i in range(43):  # 2 March .. 13 April: the reminders' local times, every day
        day = date(2026, 3, 2) + timedelta(days=i)
        first = reminders.slots_on(day)[0]
        morning_utc[day] = first.due_utc
        assert reminders.due(first.due_utc + timedelta(seconds=5)) == first
    # The device's sessions on the days that matter: in the post-op weeks, on the day before
    # the unlock, on it (announced once), and the day after (not announced again).
    for day in (date(2026, 3, 3), date(2026, 3, 31), date(2026, 4, 12), date(2026, 4, 13), date(2026, 4, 14)):
        result = simulate(state_dir=state, patient="postop", seed=day.day, lang=None, max_seconds=420.0,
                          start_wall=datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=9))
        said = [e.data["phrase"] for e in result.log.of("say")]
        exercises = {e.data["exercise"] for e in result.log.of("exercise")}
        if day < rx.unlock_date:
            assert exercises == {"awareness"}
            assert all(r["target_pct"] <= 30.0 for r in result.session.reps)
            assert "postop.unlocked" not in said and "calibrate.squeeze" not in said
            assert "calibrate.squeeze_gentle" in said  # no maximal squeeze after surgery
        elif day == rx.unlock_date:
            assert said.count("postop.unlocked") == 1
            assert "ex1" in exercises or "awareness" in exercises
        else:
            assert "postop.unlocked" not in said
    assert morning_utc[date(2026, 3, 28)].hour == 7 and morning_utc[date(2026, 3, 29)].hour == 6
    assert all(d.astimezone(BRUSSELS).strftime("%H:%M") == "08:30" for d in morning_utc.values())


def test_asking_for_more_in_the_postop_weeks_gets_the_explanation_not_a_skip():
    rx = parse_prescription({"patient": {"code": "GNT-2026-0042", "surgery_date": date(2026, 3, 2)}}, "rx.toml")
    plan = plan_for_day(rx, date(2026, 3, 10))
    from appliance.coach.session import Session
    from appliance.simulation.session import simulate

    result = simulate(programme=plan.programme, patient="postop",
                      script=[ScriptedCommand(120.0, Command.NEXT)], auto_start=True)
    # Without the hook the coach skips the (only) exercise.
    assert any(e.data.get("state") == "skipped" for e in result.log.of("exercise"))
    cat = Catalogue.load("nl")
    clock = SimClock()
    log2 = EventLog()
    session = Session(plan.programme, cat, clock, [log2])
    session.more_phrase = plan.more_phrase
    session.command(Command.START)
    for _ in range(12000):  # 120 s of control ticks, no patient needed for the decision
        clock.advance(0.01)
        session.tick(clock.now())
    assert session.command(Command.NEXT) is False
    assert log2.of("say")[-1].data["phrase"] == "postop.why_awareness"
    assert not any(e.data.get("state") == "skipped" for e in log2.of("exercise"))
