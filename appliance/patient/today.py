"""What may be trained today: the prescription's plan with this week's targets, the
post-operative gate, the weekly PERFECT assessment, stimulation and short sets.

Pure decisions over the prescription and the stored sessions; the supervisor asks
`todays_plan(...)` at the start of every session, so it always follows the
prescription on disk and the progress stored so far.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from appliance.coach.pacing import Pace
from appliance.coach.plan import Calibration
from appliance.coach.programme import DayGroup, PhaseKind, Programme, load_programme
from appliance.patient.prescription import DayPlan, Prescription, plan_for_day, prescribed_programme
from appliance.patient.progress import (
    PERFECT_PROGRAMME,
    Week,
    local_day,
    progressed_prescription,
    week_phrases,
    weekly_progress,
)
from appliance.patient.reminders import short_set as make_short_set
from appliance.stim import STIM_EXERCISE_ID


@dataclass(frozen=True)
class TodaysPlan:
    """The session the device runs now, and what it says before it."""

    programme: Programme
    day: DayPlan | None  # None: no prescription (the leaflet's defaults)
    announce: tuple[str, ...] = ()  # phrase keys said before the session starts
    pace: Pace | None = None  # the prescription's breathing, else the programme's
    perfect: bool = False  # the weekly PERFECT assessment, scored when it ends
    short_set: bool = False
    week: Week | None = None  # this week's targets (None without a prescription)
    calibration: Calibration | None = None  # a fixed calibration (none: the session measures)

    @property
    def stim_allowed(self) -> bool:
        return self.day is not None and self.day.stim_allowed and not self.short_set and not self.perfect


def with_stim_exercise(programme: Programme, after: str = "awareness") -> Programme:
    """The programme with the stim exercise (coach/programmes/stim.toml) after `after`.

    Only when the prescription enables stim today (`DayPlan.stim_allowed`); the
    controller still checks every interlock itself. At the start if `after` is absent.
    """
    stim = load_programme("stim").exercise(STIM_EXERCISE_ID)
    exercises = [e for e in programme.exercises if e.id != STIM_EXERCISE_ID]
    ids = [e.id for e in exercises]
    at = ids.index(after) + 1 if after in ids else 0
    return replace(programme, exercises=(*exercises[:at], stim, *exercises[at:]))


def training_weeks(sessions: list[dict], rx: Prescription, today: date | None = None) -> tuple[list[Week], date, date]:
    """The lending period in calendar weeks (Monday first), with the progression rule applied:
    the weeks' targets are what the device trains at, and what the report draws."""
    tz = rx.tz
    days = [local_day(s["started_utc"], tz) for s in sessions]
    if today is not None:
        days.append(today)
    if not days:
        raise ValueError("no sessions and no day given")
    first, last = min(days), max(days)
    first = first - timedelta(days=first.weekday())
    prog = prescribed_programme(rx)
    base = {e.id: e.target_pct_mvc for e in prog.exercises}
    walk = None
    if any(e.id == "ex7" for e in prog.exercises):
        walk = sum(p.seconds or 0.0 for p in prog.exercise("ex7").phases if p.kind is PhaseKind.MOVE)
    return weekly_progress(sessions, rx, first, last, base, walk), first, last


def perfect_due(sessions: list[dict], rx: Prescription, today: date) -> bool:
    """The weekly PERFECT assessment is on the prescription's weekday, once a week,
    never in the post-operative weeks (no maximal squeezes then)."""
    if today.weekday() != rx.progression.perfect_weekday:
        return False
    if rx.unlock_date is not None and today < rx.unlock_date:
        return False
    week_start = today - timedelta(days=today.weekday())
    return not any(s["programme"] == PERFECT_PROGRAMME and local_day(s["started_utc"], rx.tz) >= week_start
                   for s in sessions)


def todays_plan(rx: Prescription | None, default: Programme, today: date, sessions: list[dict],
                short_set: bool = False, fixed_programme: bool = False) -> TodaysPlan:
    """The session to run now.

    Without a prescription (or with a programme named on the command line) it is `default`.
    With one: the weekly PERFECT assessment if it is due (the day's first full session),
    else the prescription's programme at this week's targets through the post-operative
    gate, with the stim exercise when stimulation is allowed today; a reminder's short
    set is the prescribed short-set exercises of that programme.
    """
    if rx is None or fixed_programme:
        prog = make_short_set(default, rx.reminders) if (short_set and rx is not None) else default
        if not short_set and not fixed_programme:
            prog = todays_exercises(prog, today)
        return TodaysPlan(prog, None, short_set=short_set)
    weeks, _, _ = training_weeks(sessions, rx, today)
    week = weeks[-1] if weeks else None
    current = progressed_prescription(rx, weeks)
    # The week's news is told at its first session, whatever kind: a short set or the
    # Monday PERFECT come first as often as the main session does.
    announce = tuple(week_phrases(weeks)) if _first_of_week(sessions, rx.tz, today) else ()
    if not short_set and perfect_due(sessions, rx, today):
        return TodaysPlan(_said_first(announce, load_programme(PERFECT_PROGRAMME)), None, announce,
                          pace=rx.breathing.pace, perfect=True, week=week)
    unlock = rx.unlock_date
    seen = unlock is not None and any(local_day(s["started_utc"], rx.tz) >= unlock and s["programme"] == rx.programme
                                      for s in sessions)
    day = plan_for_day(current, today, full_programme_seen_since_unlock=seen)
    programme = day.programme
    if short_set:
        programme = make_short_set(programme, rx.reminders)
    else:
        programme = todays_exercises(programme, today, None if day.postop else rx.day)
        if not _first_main_of_week(sessions, rx.tz, today):
            programme = replace(programme, outro=tuple(k for k in programme.outro if k not in programme.weekly_outro))
        if day.stim_allowed:
            programme = with_stim_exercise(programme)
    # Strength is measured once a day at most; the rest pressure at every session.
    mvc, source = known_mvc(sessions, rx, today, programme.id)
    if mvc is not None:
        programme = replace(programme, known_mvc_cmh2o=mvc, mvc_source=source)
    return TodaysPlan(_said_first(announce, programme), day, announce, rx.breathing.pace, short_set=short_set,
                      week=week)


def todays_exercises(programme: Programme, today: date,
                     override: tuple[tuple[str, ...], tuple[DayGroup, ...]] | None = None) -> Programme:
    """Today's main session: the programme's (or the prescription's) daily exercises and the
    rotation group of this weekday, the patient told which; daily-life exercises (no probe)
    last, after she is asked to take the probe out. Without a day plan: every exercise."""
    daily, rotation = override if override is not None else (programme.daily, programme.rotation)
    if not daily and not rotation:
        return programme
    present = {e.id for e in programme.exercises}
    group = rotation[today.weekday() % len(rotation)] if rotation else DayGroup(())
    chosen = (set(daily) | set(group.exercises)) & present
    if not chosen:
        return programme  # every exercise of the plan is disabled: the programme as it is
    exercises = [e for e in programme.exercises if e.id in chosen]
    probed = [e for e in exercises if e.probe]
    free = [e for e in exercises if not e.probe]
    intro = programme.intro
    group_here = [e for e in exercises if e.id in group.exercises]
    if group_here:
        intro = intro + (group.say or ("day.today_also", *(e.title for e in group_here)))
    if free and probed:  # the probe comes out once, after the last exercise that needs it
        last = probed[-1]
        probed[-1] = replace(last, outro=last.outro + programme.probe_out)
    elif free:
        intro = intro + programme.probe_out
    return replace(programme, exercises=tuple(probed + free), intro=intro)


def known_mvc(sessions: list[dict], rx: Prescription, today: date, programme_id: str) -> tuple[float | None, str]:
    """The MVC this session uses without a squeeze, and where it comes from; (None, "squeeze")
    when the session must measure it (docs/calibration.md).

    The clinic's measured MVC when prescribed. Otherwise the last squeeze calibration of the
    same kind (a post-op gentle reference squeeze is never taken for a maximal one, nor the
    other way) is reused on its own day (strength is measured once a day at most) and after
    it, until `recalibrate_days` have passed or the rest pressure has moved by
    `baseline_moved_cmh2o` since it was measured.
    """
    cal = rx.calibration
    if cal.clinic_mvc_cmh2o is not None:
        return cal.clinic_mvc_cmh2o, "clinic"
    gentle = programme_id == "postop"
    same = [s for s in sessions if (s["programme"] == "postop") == gentle and s.get("mvc_cmh2o") is not None
            and s.get("rest_cmh2o") is not None]
    measured = [s for s in same if s.get("mvc_source", "squeeze") == "squeeze"]
    if not measured:
        return None, "squeeze"
    last = measured[-1]
    age = (today - local_day(last["started_utc"], rx.tz)).days
    if age == 0:
        return float(last["mvc_cmh2o"]), "earlier"
    if age >= cal.recalibrate_days:
        return None, "squeeze"
    latest_rest = float(same[-1]["rest_cmh2o"])
    if abs(latest_rest - float(last["rest_cmh2o"])) >= cal.baseline_moved_cmh2o:
        return None, "squeeze"
    return float(last["mvc_cmh2o"]), "earlier"


def _said_first(announce: tuple[str, ...], programme: Programme) -> Programme:
    """The programme with `announce` said before its own intro."""
    return replace(programme, intro=announce + programme.intro) if announce else programme



def _first_main_of_week(sessions: list[dict], tz: ZoneInfo, today: date) -> bool:
    week_start = today - timedelta(days=today.weekday())
    return not any(local_day(s["started_utc"], tz) >= week_start and not s.get("short_set")
                   and s["programme"] != PERFECT_PROGRAMME for s in sessions)


def _first_of_week(sessions: list[dict], tz: ZoneInfo, today: date) -> bool:
    week_start = today - timedelta(days=today.weekday())
    return not any(local_day(s["started_utc"], tz) >= week_start for s in sessions)
