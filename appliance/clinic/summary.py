"""The lending period in figures: what the report's first page, the CSV and FHIR all say.

Every figure is read from what the device stored: the sessions and their `plan` events
(what was applied: short set, PERFECT, post-op, targets), the calibrations (measured or
carried over), the repetitions as stored (targets as applied, artefact flags), the
stored PERFECT results, the technique warnings the device spoke and the stimulation
line's events. Nothing is replayed or recomputed from a rule.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from statistics import median
from zoneinfo import ZoneInfo

from appliance.patient.prescription import Prescription
from appliance.patient.progress import PERFECT_PROGRAMME, POWER_TYPICAL_ERROR_CMH2O, is_set, load_sessions, local_day
from appliance.sensor.signal import oxford_band

TECHNIQUE_WARNINGS = ("push_down", "breath_hold", "abdominal")  # co-contraction: the belly helped
# Walking (ex7) holds a third of the target while moving and ex8's landings spike the
# pressure: their goals are walking time and jumps, never strength or holds at target.
NOT_STRENGTH = frozenset({"ex7", "ex8"})
STIM_STOPS = ("interrupted", "stopped")
EXERCISE_ORDER = ("awareness", "ex1", "ex2", "ex3", "ex4", "ex5", "ex6", "ex7", "ex8", "stim")
MAIN_PER_DAY = 1  # the prescription's one main session a day (the weekly PERFECT takes its place)


class Kind:
    """What a stored session was, as its `plan` event says."""

    MAIN = "main"
    SHORT = "short_set"
    PERFECT = "perfect"


def is_artefact(rep: dict) -> bool:
    """A repetition whose highest pressure came with a movement (flagged by the device), or
    one that carries no strength value at all."""
    return bool(rep.get("artefact")) or rep.get("peak_cmh2o") is None or rep.get("peak_pct") is None


def counts_for_strength(rep: dict) -> bool:
    """Whether the repetition's stored peak is the squeeze's. A flagged movement repetition
    (ex5 knee lift, ex6 squat) counts: the device stored the highest pressure outside the
    movement (docs/calibration.md), so only a repetition without a strength value is left out;
    leaving every flagged one out emptied ex5 from the charts (the leg lifts the belly pressure
    in nearly every repetition)."""
    return (rep["exercise"] not in NOT_STRENGTH and not rep["exercise"].startswith("perfect")
            and rep.get("peak_cmh2o") is not None and rep.get("peak_pct") is not None)


@dataclass(frozen=True)
class StoredSession:
    """One session with what its events say about it."""

    id: int
    day: date
    started_utc: str
    ended_utc: str | None
    status: str
    programme: str
    lang: str
    kind: str
    postop: bool
    stim_allowed: bool
    targets: dict[str, float]  # the plan's targets, %MVC
    rest_cmh2o: float | None
    mvc_cmh2o: float | None
    oxford_band: str | None
    mvc_measured: bool  # squeezes measured in this session (not carried over)
    trained: bool  # at least one repetition completed
    reps: list[dict]
    perfect: dict | None
    warnings: dict[str, int]
    stim_on: bool
    stim_stops: tuple[str, ...]  # reasons the line was stopped before the stim exercise's end


@dataclass(frozen=True)
class WeekFigures:
    index: int  # 1-based week of the lending period (calendar weeks, Monday first)
    start: date
    end: date
    days: int  # lending days in this week
    main_done: int
    main_prescribed: int
    short_done: int
    short_prescribed: int
    sessions_stopped: int  # sessions the patient (or the device) ended before their end
    postop_sessions: int
    mvc_cmh2o: float | None  # median maximal squeeze above rest, measured, outside the post-op weeks
    mvc_measurements: int
    held_s: float | None  # mean seconds held at target per repetition (holds, artefacts left out)
    hold_asked_s: float | None
    hold_reps: int
    perfect: dict | None  # the PERFECT result stored this week (None: none measured)
    warnings: dict[str, int]  # technique warnings spoken, by kind
    sessions_with_warnings: int
    trained_sessions: int
    incomplete_release: int  # repetitions not let go 1.5 s into the rest (signal.RepRecorder._released)
    release_judged: int
    artefact_reps: int
    stim_sessions: int
    stim_stops: tuple[str, ...]

    @property
    def oxford_band(self) -> str | None:
        return oxford_band(self.mvc_cmh2o) if self.mvc_cmh2o is not None else None

    @property
    def main_pct(self) -> float | None:
        return 100.0 * self.main_done / self.main_prescribed if self.main_prescribed else None

    @property
    def short_pct(self) -> float | None:
        return 100.0 * self.short_done / self.short_prescribed if self.short_prescribed else None

    @property
    def held_pct(self) -> float | None:
        if self.held_s is None or not self.hold_asked_s:
            return None
        return 100.0 * self.held_s / self.hold_asked_s

    @property
    def incomplete_release_pct(self) -> float | None:
        return 100.0 * self.incomplete_release / self.release_judged if self.release_judged else None


@dataclass(frozen=True)
class Change:
    """First week with a measured MVC against the last one."""

    first_week: int
    last_week: int
    first_cmh2o: float
    last_cmh2o: float
    verdict: str  # better, same, worse (by the probe's typical error)

    @property
    def delta_cmh2o(self) -> float:
        return self.last_cmh2o - self.first_cmh2o


@dataclass(frozen=True)
class Summary:
    code: str
    lang: str
    enrolled: date | None
    first_day: date
    last_day: date
    programme: str
    surgery_date: date | None
    catheter_removal_date: date | None
    unlock_date: date | None
    stim_allowed_from: date | None
    short_sets_per_day: int
    progression: bool
    weeks: list[WeekFigures]
    sessions: list[StoredSession] = field(repr=False)

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    def total(self, name: str) -> int:
        return sum(getattr(w, name) for w in self.weeks)

    @property
    def main_pct(self) -> float | None:
        asked = self.total("main_prescribed")
        return 100.0 * self.total("main_done") / asked if asked else None

    @property
    def short_pct(self) -> float | None:
        asked = self.total("short_prescribed")
        return 100.0 * self.total("short_done") / asked if asked else None

    @property
    def exercises_trained(self) -> list[str]:
        """The exercises the device trained (the PERFECT assessment aside), in the leaflet's order."""
        found = {r["exercise"] for s in self.sessions if s.kind != Kind.PERFECT for r in s.reps}
        return [e for e in EXERCISE_ORDER if e in found] + sorted(found - set(EXERCISE_ORDER))

    @property
    def postop_days(self) -> int:
        return len({s.day for s in self.sessions if s.postop})

    @property
    def strength(self) -> Change | None:
        measured = [w for w in self.weeks if w.mvc_cmh2o is not None]
        if len(measured) < 2:
            return None
        a, b = measured[0], measured[-1]
        assert a.mvc_cmh2o is not None and b.mvc_cmh2o is not None
        d = b.mvc_cmh2o - a.mvc_cmh2o
        verdict = ("better" if d >= POWER_TYPICAL_ERROR_CMH2O else
                   "worse" if d <= -POWER_TYPICAL_ERROR_CMH2O else "same")
        return Change(a.index, b.index, a.mvc_cmh2o, b.mvc_cmh2o, verdict)

    @property
    def perfects(self) -> list[tuple[int, dict]]:
        return [(w.index, w.perfect) for w in self.weeks if w.perfect is not None]

    @property
    def stim_sessions(self) -> int:
        return self.total("stim_sessions")

    @property
    def stim_stops(self) -> tuple[str, ...]:
        return tuple(r for w in self.weeks for r in w.stim_stops)


# --- Reading ---------------------------------------------------------------------------------

def _events(db_path: Path) -> dict[int, list[tuple[str, dict]]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    out: dict[int, list[tuple[str, dict]]] = defaultdict(list)
    try:
        rows = db.execute("SELECT session_id, kind, data FROM events WHERE kind IN "
                          "('plan', 'calibration', 'warning', 'stim') ORDER BY session_id, t, id").fetchall()
    except sqlite3.OperationalError:  # a salvaged file without an events table
        rows = []
    finally:
        db.close()
    for sid, kind, data in rows:
        try:
            out[sid].append((kind, json.loads(data)))
        except ValueError:
            continue  # one unreadable event does not hide the session
    return out


def stored_sessions(db_path: Path, tz: ZoneInfo) -> list[StoredSession]:
    events = _events(db_path)
    out = []
    for s in load_sessions(db_path):
        evs = events.get(s["id"], [])
        plan = next((d for k, d in evs if k == "plan"), None)
        if s["programme"] == PERFECT_PROGRAMME or (plan and plan.get("perfect")):
            kind = Kind.PERFECT
        elif plan and plan.get("short_set"):
            kind = Kind.SHORT
        else:
            kind = Kind.MAIN
        measured = any(k == "calibration" and d.get("squeezes_cmh2o") for k, d in evs)
        warnings: dict[str, int] = defaultdict(int)
        for k, d in evs:
            if k == "warning" and d.get("warning") in TECHNIQUE_WARNINGS:
                warnings[d["warning"]] += 1
        stim = [d for k, d in evs if k == "stim"]
        out.append(StoredSession(
            id=s["id"], day=local_day(s["started_utc"], tz), started_utc=s["started_utc"], ended_utc=s["ended_utc"],
            status=s["status"], programme=s["programme"], lang=s["lang"], kind=kind,
            postop=bool(plan and plan.get("postop")),
            stim_allowed=bool(plan and plan.get("stim")),
            targets={str(k): float(v) for k, v in ((plan or {}).get("targets") or {}).items()},
            rest_cmh2o=s["rest_cmh2o"], mvc_cmh2o=s["mvc_cmh2o"], oxford_band=s["oxford_band"],
            mvc_measured=measured, trained=is_set(s),
            reps=s["reps"], perfect=s["perfect"], warnings=dict(warnings),
            stim_on=any(d.get("state") == "on" for d in stim),
            stim_stops=tuple(str(d.get("reason") or "") for d in stim if d.get("state") in STIM_STOPS)))
    return out


# --- The figures -----------------------------------------------------------------------------

def _week(index: int, start: date, first: date, last: date, ss: list[StoredSession], short_per_day: int
          ) -> WeekFigures:
    end = start + timedelta(days=6)
    days = (min(end, last) - max(start, first)).days + 1
    # Every maximal squeeze measured (a short set measures one when it is the day's first session);
    # the post-operative reference squeeze is gentle, so its scaled value is no MVC.
    mvcs = [s.mvc_cmh2o for s in ss if s.mvc_measured and not s.postop and s.mvc_cmh2o is not None]
    holds = [r for s in ss if s.kind != Kind.PERFECT for r in s.reps
             if r["status"] == "complete" and (r["hold_asked_s"] or 0) > 0 and counts_for_strength(r)]
    judged = [r for s in ss if s.kind != Kind.PERFECT for r in s.reps
              if r.get("release_complete") is not None and r["exercise"] not in NOT_STRENGTH]
    warnings: dict[str, int] = {w: sum(s.warnings.get(w, 0) for s in ss) for w in TECHNIQUE_WARNINGS}
    return WeekFigures(
        index=index, start=start, end=end, days=days,
        main_done=sum(s.trained for s in ss if s.kind in (Kind.MAIN, Kind.PERFECT)),
        main_prescribed=days * MAIN_PER_DAY,
        short_done=sum(s.trained for s in ss if s.kind == Kind.SHORT),
        short_prescribed=days * short_per_day,
        sessions_stopped=sum(s.status in ("stopped", "interrupted") for s in ss),
        postop_sessions=sum(s.postop for s in ss),
        mvc_cmh2o=round(median(mvcs), 1) if mvcs else None,
        mvc_measurements=len(mvcs),
        held_s=round(sum(r["held_s"] or 0.0 for r in holds) / len(holds), 1) if holds else None,
        hold_asked_s=round(sum(r["hold_asked_s"] for r in holds) / len(holds), 1) if holds else None,
        hold_reps=len(holds),
        perfect=next((s.perfect for s in ss if s.perfect), None),
        warnings=warnings,
        sessions_with_warnings=sum(any(s.warnings.get(w) for w in TECHNIQUE_WARNINGS) for s in ss),
        trained_sessions=sum(s.trained for s in ss),
        incomplete_release=sum(not r["release_complete"] for r in judged),
        release_judged=len(judged),
        artefact_reps=sum(bool(r.get("artefact")) for s in ss for r in s.reps),
        stim_sessions=sum(s.stim_on for s in ss),
        stim_stops=tuple(r for s in ss for r in s.stim_stops),
    )


def summarise(db_path: Path, code: str, rx: Prescription | None, lang: str | None = None,
              enrolled: date | None = None) -> Summary:
    """The lending period's figures; raises ValueError when no session is stored."""
    tz = rx.tz if rx else ZoneInfo("UTC")
    sessions = stored_sessions(Path(db_path), tz)
    if not sessions:
        raise ValueError("no stored sessions to report on")
    first = min([s.day for s in sessions] + ([enrolled] if enrolled else []))
    last = max(s.day for s in sessions)
    short_per_day = len(rx.reminders.times) if rx and rx.reminders.enabled else 0
    monday = first - timedelta(days=first.weekday())
    by_week: dict[int, list[StoredSession]] = defaultdict(list)
    for s in sessions:
        by_week[(s.day - monday).days // 7].append(s)
    n = (last - monday).days // 7 + 1
    weeks = [_week(i + 1, monday + timedelta(weeks=i), first, last, by_week[i], short_per_day) for i in range(n)]
    return Summary(
        code=code, lang=lang or (rx.language if rx else "nl"), enrolled=enrolled, first_day=first, last_day=last,
        programme=rx.programme if rx else sessions[-1].programme,
        surgery_date=rx.surgery_date if rx else None,
        catheter_removal_date=rx.catheter_removal_date if rx else None,
        unlock_date=rx.unlock_date if rx else None,
        stim_allowed_from=rx.stim_allowed_from if rx and rx.stim is not None and rx.stim.enabled else None,
        short_sets_per_day=short_per_day, progression=bool(rx and rx.progression.enabled),
        weeks=weeks, sessions=sessions)


# --- The same figures for the CSV and FHIR -----------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """One summary figure: the whole period (week 0) or one week; `value` a number or a band."""

    key: str
    week: int
    start: date
    end: date
    value: float | str
    unit: str  # as printed ("cmH2O", "s", "%", "" for counts and bands)
    ucum: str  # UCUM code for FHIR ("cm[H2O]", "s", "%", "1")


def figures(summary: Summary) -> list[Figure]:
    """Every figure the first page shows, in the order it shows them."""
    out: list[Figure] = []

    def add(key: str, week: int, start: date, end: date, value: float | str | None, unit: str = "",
            ucum: str = "1") -> None:
        if value is not None:
            out.append(Figure(key, week, start, end, round(value, 1) if isinstance(value, float) else value,
                              unit, ucum))

    for w in summary.weeks:
        a, b = max(w.start, summary.first_day), min(w.end, summary.last_day)
        add("main_done", w.index, a, b, w.main_done)
        add("main_prescribed", w.index, a, b, w.main_prescribed)
        add("main_pct", w.index, a, b, w.main_pct, "%", "%")
        if w.short_prescribed:
            add("short_done", w.index, a, b, w.short_done)
            add("short_prescribed", w.index, a, b, w.short_prescribed)
            add("short_pct", w.index, a, b, w.short_pct, "%", "%")
        add("mvc_cmh2o", w.index, a, b, w.mvc_cmh2o, "cmH2O", "cm[H2O]")
        add("oxford_band", w.index, a, b, w.oxford_band)
        add("held_s", w.index, a, b, w.held_s, "s", "s")
        add("hold_asked_s", w.index, a, b, w.hold_asked_s, "s", "s")
        add("held_pct", w.index, a, b, w.held_pct, "%", "%")
        if w.perfect:
            add("perfect_power", w.index, a, b, float(w.perfect["power_cmh2o"]), "cmH2O", "cm[H2O]")
            add("perfect_endurance", w.index, a, b, float(w.perfect["endurance_s"]), "s", "s")
            add("perfect_repetitions", w.index, a, b, int(w.perfect["repetitions"]))
            add("perfect_fast", w.index, a, b, int(w.perfect["fast"]))
        for warning in TECHNIQUE_WARNINGS:
            add(f"warnings_{warning}", w.index, a, b, w.warnings[warning])
        add("incomplete_release", w.index, a, b, w.incomplete_release)
        add("stim_sessions", w.index, a, b, w.stim_sessions)
        add("stim_stops", w.index, a, b, len(w.stim_stops))
        add("sessions_stopped", w.index, a, b, w.sessions_stopped)
        add("artefact_reps", w.index, a, b, w.artefact_reps)
    a, b = summary.first_day, summary.last_day
    add("main_done", 0, a, b, summary.total("main_done"))
    add("main_prescribed", 0, a, b, summary.total("main_prescribed"))
    add("main_pct", 0, a, b, summary.main_pct, "%", "%")
    if summary.short_sets_per_day:
        add("short_done", 0, a, b, summary.total("short_done"))
        add("short_prescribed", 0, a, b, summary.total("short_prescribed"))
        add("short_pct", 0, a, b, summary.short_pct, "%", "%")
    change = summary.strength
    if change is not None:
        add("strength_change_cmh2o", 0, a, b, round(change.delta_cmh2o, 1), "cmH2O", "cm[H2O]")
    return out
