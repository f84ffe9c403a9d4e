"""The patient's prescription: `prescription.toml` in the state directory, set by the clinic.

It is separate from the device configuration (which is about the unit, not the patient)
and carries a pseudonymous code only. This module validates it (every refusal names file,
key and value), applies the per-exercise overrides to a programme, and gates the first
weeks after pelvic surgery: awareness work only for 6 weeks, no stimulation for 12.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.coach.pacing import MAX_EXHALE_S, MAX_INHALE_S, MIN_EXHALE_S, MIN_INHALE_S, Pace
from appliance.coach.programme import PROGRAMME_DIR, Exercise, PhaseKind, Programme, load_programme, with_overrides
from appliance.config import ConfigError, bounded, check_known_keys, load_dataclass, read_toml

if TYPE_CHECKING:
    from appliance.stim.prescription import StimPrescription

PRESCRIPTION_FILE = "prescription.toml"
POSTOP_AWARENESS_WEEKS = 6  # leaflet: "De eerste 6 weken na operatie ... bewustwording"
POSTOP_STIM_WEEKS = 12  # CLINICAL.md: no stimulation within 12 weeks of pelvic surgery
POSTOP_TARGET_CAP_PCT = 30.0  # awareness at low intensity, whatever the override says

# Letters, digits and dashes with at least one digit: a clinic's study or file number.
# A name ("JANSSENS") has no digit and is refused, so no name ever reaches the device.
# Always used with fullmatch: `$` alone also matches before a trailing newline.
CODE_PATTERN = re.compile(r"(?=.*[0-9])[A-Z0-9][A-Z0-9-]{3,23}")
HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
# A shipped programme's name (appliance/coach/programmes/<name>.toml); never a path.
PROGRAMME_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Dates the clinic writes: nothing before this, nothing more than two years ahead, so the
# service's date arithmetic (+ 12 weeks) can never overflow and a typo (9999) is caught.
EARLIEST_DATE = date(1990, 1, 1)
FUTURE_DATE_YEARS = 2
# A refused value in these keys could identify the patient; the refusal goes to the
# journal, which the wipe cannot reach, so it names the key and the fault, not the value.
NOT_SHOWN = "(value not shown: it may identify the patient)"


@dataclass(frozen=True)
class ExerciseOverride:
    """The clinician's changes to one exercise of the programme; unset keys keep the leaflet's."""

    repetitions: int | None = bounded(None, 1, 30)
    rest_between_reps_s: float | None = bounded(None, 0.0, 120.0)
    target_pct_mvc: float | None = bounded(None, 5.0, 100.0)
    hold_seconds: float | None = bounded(None, 1.0, 60.0)  # the main hold (level 1, in seconds)
    hold_breaths: int | None = bounded(None, 1, 10)  # the main hold when counted in breaths
    move_seconds: float | None = bounded(None, 5.0, 600.0)  # walking / jumping time
    progressions_unlocked: tuple[str, ...] = ()  # the exercise's progression phrases to offer
    enabled: bool = True
    adaptive_target: bool = True  # false: the target never steps down or up within a set


@dataclass(frozen=True)
class Breathing:
    inhale_s: float = bounded(4.0, MIN_INHALE_S, MAX_INHALE_S)
    exhale_s: float = bounded(6.0, MIN_EXHALE_S, MAX_EXHALE_S)

    @property
    def pace(self) -> Pace:
        return Pace(self.inhale_s, self.exhale_s)


@dataclass(frozen=True)
class Reminders:
    """Spoken reminders: the leaflet asks for at least five fixed moments a day."""

    enabled: bool = True
    times: tuple[str, ...] = ("08:30", "11:00", "14:00", "17:30", "20:30")
    timezone: str = "Europe/Brussels"
    waking_from: str = "07:30"
    waking_until: str = "22:00"
    quiet: tuple[str, ...] = ()  # "HH:MM-HH:MM" ranges when the device never speaks
    snooze_minutes: float = bounded(20.0, 5.0, 120.0)
    max_snoozes: int = bounded(2, 0, 5)
    short_set: tuple[str, ...] = ("ex1",)  # exercises of the set a reminder offers
    short_set_repetitions: int = bounded(5, 1, 30)


@dataclass(frozen=True)
class Progression:
    """The weekly progression rule (see appliance.patient.progress); the clinician may switch it off."""

    enabled: bool = True
    step_pct: float = bounded(5.0, 0.0, 20.0)  # target rise after a week that met it
    max_target_pct: float = bounded(80.0, 10.0, 100.0)
    met_fraction: float = bounded(0.8, 0.1, 1.0)  # share of the week's reps that met the target
    min_sets_per_week: int = bounded(10, 1, 70)
    walk_step_s: float = bounded(15.0, 0.0, 120.0)  # ex7: more walking time next week
    walk_max_s: float = bounded(300.0, 10.0, 600.0)
    jump_step: int = bounded(2, 0, 20)  # ex8: next week's jump goal above this week's best
    perfect_weekday: int = bounded(0, 0, 6)  # Monday; the weekly PERFECT assessment


@dataclass(frozen=True)
class CalibrationRx:
    """How the patient's strength (MVC) is known; see docs/calibration.md."""

    # The MVC the clinic measured (cmH2O above rest, with this probe): no calibration squeeze
    # is ever asked; every session measures only the rest pressure.
    clinic_mvc_cmh2o: float | None = bounded(None, 3.0, 200.0)
    recalibrate_days: int = bounded(7, 1, 28)  # the maximal squeezes again after this many days
    # The rest pressure moved this much since the last squeezes: measure again (CLINICAL.md:
    # probe position alone moves readings 5-15 cmH2O).
    baseline_moved_cmh2o: float = bounded(5.0, 1.0, 50.0)


@dataclass(frozen=True)
class Prescription:
    code: str
    language: str = "nl"
    programme: str = "leaflet"
    surgery_date: date | None = None
    catheter_removal_date: date | None = None
    breathing: Breathing = field(default_factory=Breathing)
    reminders: Reminders = field(default_factory=Reminders)
    progression: Progression = field(default_factory=Progression)
    exercises: dict[str, ExerciseOverride] = field(default_factory=dict)
    stim: StimPrescription | None = None
    source: str = "(defaults)"
    calibration: CalibrationRx = field(default_factory=CalibrationRx)
    # The day plan's override (None: the programme's [day]): daily ids and rotation groups.
    day: tuple[tuple[str, ...], tuple[Any, ...]] | None = None

    @property
    def postop_from(self) -> date | None:
        """The day the post-operative weeks count from: the surgery, else the catheter's removal."""
        return self.surgery_date or self.catheter_removal_date

    @property
    def unlock_date(self) -> date | None:
        start = self.postop_from
        return start + timedelta(weeks=POSTOP_AWARENESS_WEEKS) if start else None

    @property
    def stim_allowed_from(self) -> date | None:
        start = self.postop_from
        return start + timedelta(weeks=POSTOP_STIM_WEEKS) if start else None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.reminders.timezone)


# --- Loading --------------------------------------------------------------------------------

_TOP_TABLES = ("patient", "breathing", "reminders", "progression", "exercise", "stim", "calibration", "day")
_PATIENT_KEYS = ("code", "language", "programme", "surgery_date", "catheter_removal_date")


def parse_hhmm(file: str | Path, key: str, value: Any) -> time:
    if not isinstance(value, str) or not HHMM.fullmatch(value):
        raise ConfigError(file, key, value, "must be a time of day as \"HH:MM\" (24 h)")
    return time(int(value[:2]), int(value[3:]))


def _date(file: str | Path, key: str, value: Any, today: date | None = None, future_days: int | None = None
          ) -> date | None:
    """A date the clinic wrote, within `EARLIEST_DATE` .. today + 2 years (or + `future_days`)."""
    if value is None:
        return None
    if isinstance(value, datetime) or not isinstance(value, date):
        raise ConfigError(file, key, value, "must be a date (YYYY-MM-DD, unquoted)")
    check_date(file, key, value, today, future_days)
    return value


def check_date(file: str | Path, key: str, value: date, today: date | None = None,
               future_days: int | None = None) -> None:
    today = today or date.today()
    latest = (today + timedelta(days=future_days) if future_days is not None
              else today.replace(year=today.year + FUTURE_DATE_YEARS, day=min(today.day, 28)))
    if not EARLIEST_DATE <= value <= latest:
        raise ConfigError(file, key, value, f"must be between {EARLIEST_DATE} and {latest} "
                          + ("(it cannot be in the future)" if future_days is not None else "(a typo?)"))


def visible(text: str) -> str:
    """`text` without invisible characters (zero-width spaces, controls, marks, spaces)."""
    return "".join(c for c in text if unicodedata.category(c)[0] not in "CZM")


def quiet_ranges(rem: Reminders, file: str | Path = "(prescription)") -> list[tuple[time, time]]:
    out = []
    for i, item in enumerate(rem.quiet):
        key = f"reminders.quiet[{i}]"
        if not isinstance(item, str) or item.count("-") != 1:
            raise ConfigError(file, key, item, "must be a range \"HH:MM-HH:MM\"")
        a, b = item.split("-")
        out.append((parse_hhmm(file, key, a), parse_hhmm(file, key, b)))
    return out


def in_range(t: time, start: time, end: time) -> bool:
    """Whether `t` is in [start, end), ranges may wrap past midnight."""
    return start <= t < end if start <= end else (t >= start or t < end)


def _check_reminders(rem: Reminders, file: str | Path) -> None:
    try:
        ZoneInfo(rem.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(file, "reminders.timezone", rem.timezone,
                          "is not a known time zone (e.g. \"Europe/Brussels\")") from None
    wake = parse_hhmm(file, "reminders.waking_from", rem.waking_from)
    sleep = parse_hhmm(file, "reminders.waking_until", rem.waking_until)
    quiet = quiet_ranges(rem, file)
    if rem.enabled and not 1 <= len(rem.times) <= 8:
        raise ConfigError(file, "reminders.times", list(rem.times), "must list 1 to 8 times of day")
    seen = set()
    for i, item in enumerate(rem.times):
        key = f"reminders.times[{i}]"
        t = parse_hhmm(file, key, item)
        if t in seen:
            raise ConfigError(file, key, item, "appears twice")
        seen.add(t)
        if not in_range(t, wake, sleep):
            raise ConfigError(file, key, item,
                              f"is outside waking hours ({rem.waking_from}-{rem.waking_until})")
        for a, b in quiet:
            if in_range(t, a, b):
                raise ConfigError(file, key, item, f"falls in quiet hours ({a:%H:%M}-{b:%H:%M})")


def _exercise_overrides(table: Any, programme: Programme, file: str | Path) -> dict[str, ExerciseOverride]:
    if not isinstance(table, dict):
        raise ConfigError(file, "exercise", table, "must be a table of [exercise.<id>] tables")
    known = {e.id for e in programme.exercises}
    out = {}
    for ex_id, sub in table.items():
        if ex_id not in known:
            raise ConfigError(file, f"exercise.{ex_id}", sub,
                              f"programme {programme.id!r} has no such exercise (known: {', '.join(sorted(known))})")
        if not isinstance(sub, dict):
            raise ConfigError(file, f"exercise.{ex_id}", sub, "must be a table")
        ov = load_dataclass(ExerciseOverride, sub, file, prefix=f"exercise.{ex_id}")
        ex = programme.exercise(ex_id)
        for i, key in enumerate(ov.progressions_unlocked):
            if key not in ex.progressions:
                raise ConfigError(file, f"exercise.{ex_id}.progressions_unlocked[{i}]", key,
                                  f"is not a progression of {ex_id} (known: {', '.join(ex.progressions) or 'none'})")
        apply_override(ex, ov, file)  # refuses combinations the exercise cannot take
        out[ex_id] = ov
    return out


def shipped_programmes() -> list[str]:
    return sorted(p.stem for p in PROGRAMME_DIR.glob("*.toml"))


def _programme(file: str | Path, name: Any) -> Programme:
    """Only a programme shipped in appliance/coach/programmes/, by name: never a path."""
    shipped = shipped_programmes()
    if not isinstance(name, str) or not PROGRAMME_NAME.fullmatch(name) or name not in shipped:
        raise ConfigError(file, "patient.programme", name,
                          f"must be the name of a shipped programme ({', '.join(shipped)}), not a path")
    try:
        return load_programme(name)
    except ConfigError as exc:
        raise ConfigError(file, "patient.programme", name, f"cannot be loaded ({exc.reason})") from None


def _code_fault(code: Any) -> str | None:
    """What is wrong with a patient code, in words that do not repeat it; None if it is fine."""
    if not isinstance(code, str):
        return "is required" if code is None else "must be text"
    if code != code.strip():
        return "has spaces or a line break around it"
    if any(not c.isprintable() for c in code):
        return "contains control or invisible characters"
    if not CODE_PATTERN.fullmatch(code):
        return (f"must be a pseudonymous code of 4-24 capitals, digits and dashes with at least one "
                f"digit, never a name (this one has {len(code)} character{'' if len(code) == 1 else 's'})")
    return None


def parse_prescription(data: dict[str, Any], file: str | Path, today: date | None = None) -> Prescription:
    """Validate a prescription table; `today` (default: the local date) bounds its dates."""
    check_known_keys(data, _TOP_TABLES, lambda k, v, r: ConfigError(file, k, v, r, shown=NOT_SHOWN),
                     what="table")
    patient = data.get("patient")
    if not isinstance(patient, dict):
        raise ConfigError(file, "patient", patient, "the file needs a [patient] table with a code",
                          shown=None if patient is None else NOT_SHOWN)
    check_known_keys(patient, _PATIENT_KEYS,
                     lambda k, v, r: ConfigError(file, f"patient.{k}", v, r, shown=NOT_SHOWN),
                     hint="; names never go here")
    code = patient.get("code")
    fault = _code_fault(code)
    if fault is not None:
        raise ConfigError(file, "patient.code", code, fault, shown=None if code is None else NOT_SHOWN)
    assert isinstance(code, str)  # _code_fault refuses anything else
    lang = patient.get("language", "nl")
    if lang not in ("nl", "en"):
        raise ConfigError(file, "patient.language", lang, "must be one of 'nl', 'en'")
    prog_name = patient.get("programme", "leaflet")
    programme = _programme(file, prog_name)
    surgery = _date(file, "patient.surgery_date", patient.get("surgery_date"), today)
    catheter = _date(file, "patient.catheter_removal_date", patient.get("catheter_removal_date"), today)
    if surgery and catheter and catheter < surgery:
        raise ConfigError(file, "patient.catheter_removal_date", catheter, "is before the surgery date")
    breathing = load_dataclass(Breathing, data.get("breathing", {}), file, prefix="breathing")
    reminders = load_dataclass(Reminders, data.get("reminders", {}), file, prefix="reminders")
    _check_reminders(reminders, file)
    for i, ex_id in enumerate(reminders.short_set):
        if ex_id not in {e.id for e in programme.exercises}:
            raise ConfigError(file, f"reminders.short_set[{i}]", ex_id, "is not an exercise of the programme")
    progression = load_dataclass(Progression, data.get("progression", {}), file, prefix="progression")
    overrides = _exercise_overrides(data.get("exercise", {}), programme, file)
    disabled = {ex_id for ex_id, ov in overrides.items() if not ov.enabled}
    if {e.id for e in programme.exercises} <= disabled:
        raise ConfigError(file, "exercise", f"all {len(disabled)} exercises enabled = false",
                          "leaves no exercise to train; enable at least one")
    for i, ex_id in enumerate(reminders.short_set):
        if ex_id in disabled:
            raise ConfigError(file, f"reminders.short_set[{i}]", ex_id,
                              f"is disabled in [exercise.{ex_id}]; the reminder's short set cannot offer it")
    stim = _parse_stim(data.get("stim", {}), file, surgery or catheter, today)
    calibration = load_dataclass(CalibrationRx, data.get("calibration", {}), file, prefix="calibration")
    day = None
    if "day" in data:
        from appliance.coach.programme import parse_day
        from appliance.voice.phrases import Catalogue

        day = parse_day(data["day"], {e.id for e in programme.exercises} - disabled, file,
                        Catalogue.load("nl").keys())
    return Prescription(code=code, language=lang, programme=prog_name, surgery_date=surgery,
                        catheter_removal_date=catheter, breathing=breathing, reminders=reminders,
                        progression=progression, exercises=overrides, stim=stim, source=str(file),
                        calibration=calibration, day=day)


def _parse_stim(table: Any, file: str | Path, surgery: date | None, today: date | None = None) -> StimPrescription:
    from appliance.stim import parse_stim_prescription

    stim = parse_stim_prescription(table, file)
    if stim.surgery_or_birth_date is not None:
        check_date(file, "stim.surgery_or_birth_date", stim.surgery_or_birth_date, today)
    if stim.checked_on is not None:
        # The checklist was answered on a past day (a day's grace for time zones).
        check_date(file, "stim.checked_on", stim.checked_on, today, future_days=1)
    if stim.enabled and not visible(stim.checked_by):
        raise ConfigError(file, "stim.checked_by", stim.checked_by,
                          "breaks the rule: the clinician who answered the checklist signs it "
                          "(invisible characters are no signature)")
    if surgery is not None and (stim.surgery_or_birth_date is None or stim.surgery_or_birth_date < surgery):
        # The stim engine's own 12-week lockout then counts from the same day as ours.
        stim = replace(stim, surgery_or_birth_date=surgery)
    return stim


def load_prescription(path: str | Path) -> Prescription:
    return parse_prescription(read_toml(path), path)


def prescription_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / PRESCRIPTION_FILE


# --- Applying it ----------------------------------------------------------------------------

def apply_override(ex: Exercise, ov: ExerciseOverride, file: str | Path = "(prescription)") -> Exercise:
    """The exercise as prescribed: counts, rest, target, main hold, moving time, progressions."""
    key = f"exercise.{ex.id}"
    phases = list(ex.phases)
    if ov.hold_seconds is not None or ov.hold_breaths is not None:
        mains = [i for i, p in enumerate(phases) if p.kind is PhaseKind.HOLD and p.level >= 1.0]
        if not mains:
            raise ConfigError(file, f"{key}.hold_seconds", ov.hold_seconds or ov.hold_breaths,
                              "this exercise has no main hold to change")
        for i in mains:
            p = phases[i]
            if ov.hold_seconds is not None:
                if p.count and ov.hold_seconds > 10:
                    raise ConfigError(file, f"{key}.hold_seconds", ov.hold_seconds,
                                      "this hold is counted aloud, so at most 10 seconds")
                phases[i] = replace(p, seconds=float(ov.hold_seconds), breaths=None)
            else:
                phases[i] = replace(p, breaths=ov.hold_breaths, seconds=None, count=False)
    if ov.move_seconds is not None:
        moves = [i for i, p in enumerate(phases) if p.kind is PhaseKind.MOVE]
        if not moves:
            raise ConfigError(file, f"{key}.move_seconds", ov.move_seconds, "this exercise has no moving phase")
        # Several moves (knee up, foot back) share the time in their leaflet proportion.
        total = sum(phases[i].seconds or 0.0 for i in moves) or 1.0
        for i in moves:
            share = (phases[i].seconds or 0.0) / total
            phases[i] = replace(phases[i], seconds=round(ov.move_seconds * share, 2))
    changes: dict[str, Any] = {"phases": tuple(phases)}
    if ov.repetitions is not None:
        changes["repetitions"] = ov.repetitions
    if ov.rest_between_reps_s is not None:
        changes["rest_between_reps_s"] = float(ov.rest_between_reps_s)
    if ov.target_pct_mvc is not None:
        changes["target_pct_mvc"] = float(ov.target_pct_mvc)
    if not ov.adaptive_target:
        changes["adaptive_target"] = False
    # Progressions are only suggested once the clinician has unlocked them.
    locked = set(ex.progressions) - set(ov.progressions_unlocked)
    changes["outro"] = tuple(k for k in ex.outro if k not in locked) + tuple(
        k for k in ov.progressions_unlocked if k not in ex.outro)
    return with_overrides(ex, **changes)


def prescribed_programme(rx: Prescription, programme: Programme | None = None) -> Programme:
    """The prescription's programme with every override applied and disabled exercises left out."""
    prog = programme or load_programme(rx.programme)
    exercises = []
    for ex in prog.exercises:
        ov = rx.exercises.get(ex.id)
        if ov is None:
            exercises.append(_hide_progressions(ex))
        elif ov.enabled:
            exercises.append(apply_override(ex, ov, rx.source))
    if not exercises:
        raise ConfigError(rx.source, "exercise", "(all disabled)", "leaves no exercise to train")
    return replace(prog, exercises=tuple(exercises))


def _hide_progressions(ex: Exercise) -> Exercise:
    return apply_override(ex, ExerciseOverride())


# --- After surgery --------------------------------------------------------------------------

@dataclass(frozen=True)
class DayPlan:
    """What the device may train today under the prescription."""

    programme: Programme
    postop: bool  # within the awareness weeks
    stim_allowed: bool  # the prescription enables stim and the 12 weeks are over
    unlock_date: date | None
    announce: tuple[str, ...] = ()  # phrase keys to say before the session (e.g. unlocked)
    more_phrase: str | None = None  # what to answer when the patient asks for more


def plan_for_day(rx: Prescription, today: date, full_programme_seen_since_unlock: bool = False,
                 programme: Programme | None = None) -> DayPlan:
    """The post-operative gate: `postop` (awareness, capped) for 6 weeks, then the prescription.

    `full_programme_seen_since_unlock` says whether a session of the full programme has
    already run on or after the unlock date; until it has, the unlock is announced.
    """
    unlock = rx.unlock_date
    stim_ok = bool(rx.stim is not None and rx.stim.enabled
                   and (rx.stim_allowed_from is None or today >= rx.stim_allowed_from))
    if unlock is not None and today < unlock:
        post = load_programme("postop")
        capped = tuple(replace(e, max_target_pct_mvc=min(e.max_target_pct_mvc, POSTOP_TARGET_CAP_PCT))
                       for e in post.exercises)
        ov = rx.exercises.get("awareness")
        if ov is not None:
            capped = tuple(apply_override(e, replace(ov, target_pct_mvc=None), rx.source)
                           if e.id == "awareness" else e for e in capped)
        return DayPlan(replace(post, exercises=capped), True, False, unlock,
                       more_phrase="postop.why_awareness")
    prog = prescribed_programme(rx, programme)
    announce: tuple[str, ...] = ()
    if unlock is not None and not full_programme_seen_since_unlock:
        announce = ("postop.unlocked",)
        prog = replace(prog, intro=announce + prog.intro)
    return DayPlan(prog, False, stim_ok, unlock, announce)


def to_toml_dict(rx: Prescription) -> dict[str, Any]:
    """The prescription as plain values (for status output and the report's header)."""
    out = dataclasses.asdict(replace(rx, stim=None))
    out["stim_enabled"] = bool(rx.stim is not None and rx.stim.enabled)
    return out
