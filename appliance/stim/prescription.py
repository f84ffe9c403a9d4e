"""The clinician's `[stim]` table: parsed against the hard limits, or refused naming file, key and value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, check_known_keys
from appliance.stim.limits import CONTRAINDICATIONS, HARD_LIMITS


class StimMode(Enum):
    CYCLIC = "cyclic"  # work seconds on, rest seconds off, for cycles or minutes
    TRIGGERED = "triggered"  # on for the work time once the patient's squeeze crosses trigger_pct


@dataclass(frozen=True)
class StimPrescription:
    """The clinician's `[stim]` table; off unless enabled with the checklist answered "no"."""

    enabled: bool = False
    mode: StimMode = StimMode.CYCLIC
    work_seconds: float = 5.0
    rest_seconds: float = 10.0
    cycles: int | None = None
    session_minutes: float | None = None
    trigger_pct: float = 30.0
    sessions_per_day: int = HARD_LIMITS.default_sessions_per_day
    surgery_or_birth_date: date | None = None
    checked_by: str = ""
    checked_on: date | None = None
    source: str = "(defaults)"

    @property
    def session_seconds(self) -> float:
        """How long one stim exercise may last; `cycles` is counted separately."""
        minutes = HARD_LIMITS.max_session_minutes
        if self.session_minutes is not None:
            minutes = min(minutes, self.session_minutes)
        return minutes * 60.0


_STIM_KEYS = (
    "enabled", "mode", "work_seconds", "rest_seconds", "cycles", "session_minutes",
    "trigger_pct", "sessions_per_day", "surgery_or_birth_date", "checked_by", "checked_on",
    "contraindications",
)


def _number(file: str | Path, table: dict[str, Any], key: str, default: float | None) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(file, f"stim.{key}", value, "must be a number")
    return value


def _limit(file: str | Path, key: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(file, f"stim.{key}", value, f"breaks the hard limit: {rule}")


def _date(file: str | Path, key: str, value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise ConfigError(file, f"stim.{key}", value, "must be a date (YYYY-MM-DD, unquoted)")


def parse_stim_prescription(table: dict[str, Any], file: str | Path) -> StimPrescription:
    """Build the prescription from the `[stim]` table of a prescription file, or refuse it.

    Every refusal is a `ConfigError` naming file, key (`stim.…`), value and the rule.
    A missing table (`{}`) means stim off. When `enabled = true`, the checklist
    `[stim.contraindications]` must answer every item of `CONTRAINDICATIONS` with "no",
    and `checked_by`/`checked_on` record who answered it and when.
    """
    lim = HARD_LIMITS
    if not isinstance(table, dict):
        raise ConfigError(file, "stim", table, "must be a table")
    check_known_keys(table, _STIM_KEYS, lambda k, v, r: ConfigError(file, f"stim.{k}", v, r))
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(file, "stim.enabled", enabled, "must be true or false")
    mode_name = table.get("mode", StimMode.CYCLIC.value)
    try:
        mode = StimMode(mode_name)
    except ValueError:
        raise ConfigError(file, "stim.mode", mode_name,
                          "must be one of 'cyclic', 'triggered'") from None

    work = _number(file, table, "work_seconds", 5.0)
    _limit(file, "work_seconds", work, lim.min_work_seconds <= work <= lim.max_work_seconds,
           f"work between {lim.min_work_seconds:g} and {lim.max_work_seconds:g} s")
    rest = _number(file, table, "rest_seconds", 10.0)
    _limit(file, "rest_seconds", rest, rest >= work, f"rest at least as long as work ({work:g} s)")
    _limit(file, "rest_seconds", rest, lim.min_rest_seconds <= rest <= lim.max_rest_seconds,
           f"rest between {lim.min_rest_seconds:g} s (time to warn the patient) "
           f"and {lim.max_rest_seconds:g} s")

    cycles = table.get("cycles")
    if cycles is not None and (isinstance(cycles, bool) or not isinstance(cycles, int)):
        raise ConfigError(file, "stim.cycles", cycles, "must be a whole number")
    if cycles is not None:
        _limit(file, "cycles", cycles, cycles >= 1, "at least one cycle")
        total_min = (lim.announce_seconds + cycles * work + (cycles - 1) * rest) / 60.0
        _limit(file, "cycles", cycles, total_min <= lim.max_session_minutes,
               f"session at most {lim.max_session_minutes:g} min "
               f"({cycles} cycles of {work:g}+{rest:g} s take {total_min:.1f} min)")
    minutes = _number(file, table, "session_minutes", None)
    if minutes is not None:
        _limit(file, "session_minutes", minutes, 0 < minutes <= lim.max_session_minutes,
               f"session at most {lim.max_session_minutes:g} min")
    if enabled and cycles is None and minutes is None:
        raise ConfigError(file, "stim.session_minutes", None,
                          "breaks the rule: an enabled prescription sets cycles or "
                          "session_minutes")

    trigger = _number(file, table, "trigger_pct", 30.0)
    _limit(file, "trigger_pct", trigger, lim.min_trigger_pct <= trigger <= lim.max_trigger_pct,
           f"trigger between {lim.min_trigger_pct:g} and {lim.max_trigger_pct:g} %MVC")

    per_day = table.get("sessions_per_day", lim.default_sessions_per_day)
    if isinstance(per_day, bool) or not isinstance(per_day, int):
        raise ConfigError(file, "stim.sessions_per_day", per_day, "must be a whole number")
    _limit(file, "sessions_per_day", per_day, 1 <= per_day <= lim.max_sessions_per_day,
           f"between 1 and {lim.max_sessions_per_day} stim sessions a day")

    surgery = _date(file, "surgery_or_birth_date", table.get("surgery_or_birth_date"))
    checked_on = _date(file, "checked_on", table.get("checked_on"))
    checked_by = table.get("checked_by", "")
    if not isinstance(checked_by, str):
        raise ConfigError(file, "stim.checked_by", checked_by, "must be text")

    checklist = table.get("contraindications")
    if checklist is not None and not isinstance(checklist, dict):
        raise ConfigError(file, "stim.contraindications", checklist, "must be a table")
    for key, answer in (checklist or {}).items():
        if key not in CONTRAINDICATIONS:
            raise ConfigError(file, f"stim.contraindications.{key}", answer,
                              f"unknown item (known: {', '.join(CONTRAINDICATIONS)})")
    if enabled:
        if checklist is None:
            raise ConfigError(file, "stim.contraindications", None,
                              "breaks the rule: stim needs the contraindication checklist "
                              "answered by the clinician")
        for key, meaning in CONTRAINDICATIONS.items():
            answer = checklist.get(key)
            if answer == "no":
                continue
            if answer == "yes":
                reason = f"breaks the rule: contraindication, no stimulation with {meaning}"
            else:
                reason = (f"breaks the rule: the checklist must answer \"no\" "
                          f"(asks about {meaning})")
            raise ConfigError(file, f"stim.contraindications.{key}", answer, reason)
        if not checked_by.strip():
            raise ConfigError(file, "stim.checked_by", checked_by,
                              "breaks the rule: the clinician who answered the checklist "
                              "signs it")
        if checked_on is None:
            raise ConfigError(file, "stim.checked_on", None,
                              "breaks the rule: the checklist carries the date it was answered")
    else:
        for key, answer in (checklist or {}).items():
            if answer not in ("yes", "no"):
                raise ConfigError(file, f"stim.contraindications.{key}", answer,
                                  'must be "yes" or "no"')

    return StimPrescription(
        enabled=enabled, mode=mode, work_seconds=float(work), rest_seconds=float(rest),
        cycles=cycles, session_minutes=None if minutes is None else float(minutes),
        trigger_pct=float(trigger), sessions_per_day=per_day, surgery_or_birth_date=surgery,
        checked_by=checked_by, checked_on=checked_on, source=str(file),
    )


def postoperative(prescription: StimPrescription, today: date) -> bool:
    """True while `today` is within 12 weeks of the recorded birth or pelvic surgery."""
    when = prescription.surgery_or_birth_date
    return when is not None and today < when + timedelta(weeks=HARD_LIMITS.postoperative_weeks)
