"""A lending period on the device's path: `appliance simulate --state-dir DIR --days N`.

The device's supervisor runs day after day on a simulated clock: the reminders fire at
the prescription's local times (time zone and daylight saving as prescribed), the
simulated patient starts the day's main session at her own time and answers reminders
as her adherence profile says (seeded), and the device decides everything else as it
would at home: the post-operative gate, this week's targets, the weekly PERFECT
assessment, stimulation. Between sessions the supervisor's idle loop steps in
`IDLE_STEP_S` steps (on the device it wakes every 50 ms for the button; here only the
simulated patient presses anything); sessions run at the device's control tick.
"""

from __future__ import annotations

import logging
import time as wall_time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

import numpy as np

from appliance.clock import SimClock
from appliance.commands import Command
from appliance.events import Event, Feedback
from appliance.patient.progress import load_sessions, local_day

log = logging.getLogger(__name__)

IDLE_STEP_S = 5.0
DAY_STARTS = time(6, 0)  # the simulated period starts at 06:00 local on its first day
WEEKLY_GAIN = 0.04  # the simulated patient's strength grows by this a week


@dataclass
class DayLine:
    day: date
    main: int = 0
    short_sets: int = 0
    perfect: int = 0
    reminders: int = 0
    targets: dict[str, float] = field(default_factory=dict)


@dataclass
class LendingSummary:
    days: int
    sessions: int
    main: int
    short_sets: int
    perfect: int
    reminders: int
    wall_s: float
    per_day: list[DayLine]


class _ReminderCounter:
    """In the room: counts the reminders the device speaks, by local day."""

    def __init__(self, clock: SimClock, tz: ZoneInfo) -> None:
        self.clock = clock
        self.tz = tz
        self.by_day: dict[date, int] = {}

    def emit(self, event: Event) -> None:
        if event.kind == "say" and event.data.get("phrase") == "device.reminder":
            day = self.clock.wall().astimezone(self.tz).date()
            self.by_day[day] = self.by_day.get(day, 0) + 1

    def feedback(self, fb: Feedback) -> None:
        return None


def simulate_days(state_dir: Path, days: int, first_day: date | None = None, adherence: str = "good",
                  patient: str = "average", seed: int = 0, config_path: Path | None = None,
                  lang: str | None = None, out: TextIO | None = None) -> LendingSummary:
    """Run the device for `days` days into `state_dir` (enrolled or not) and sum up what it did."""
    from appliance.device.appliance import Appliance, RunOptions
    from appliance.device.edges import ADHERENCE, SimulatedEdges, SimulatedPatient
    from appliance.patient.prescription import load_prescription, prescription_path

    started = wall_time.monotonic()
    rx_path = prescription_path(state_dir)
    rx = load_prescription(rx_path) if rx_path.exists() else None
    tz = rx.tz if rx is not None else ZoneInfo("Europe/Brussels")
    first = first_day or _enrolment_day(state_dir, tz) or datetime.now(tz).date()
    wall0 = datetime.combine(first, DAY_STARTS, tz).astimezone(UTC)
    clock = SimClock(wall_start=wall0)
    profile = ADHERENCE[adherence]
    counter = _ReminderCounter(clock, tz)
    sim_patient = SimulatedPatient(patient, seed)
    edges = SimulatedEdges(sim_patient, clock=clock, start_after_ready=False, adherence=profile,
                           room_sinks=[counter], strength=lambda: 1.0 + WEEKLY_GAIN *
                           (clock.wall() - wall0).total_seconds() / (7 * 86400.0))
    rng = np.random.default_rng(seed + 104729)
    for i in range(days):
        if rng.random() < profile.skip_main:
            continue
        hh, mm = (int(x) for x in profile.main_at.split(":"))
        local = datetime.combine(first + timedelta(days=i), time(hh, mm), tz)
        local += timedelta(minutes=float(rng.normal(0.0, 10.0)))
        edges.say_at(_clock_time(clock, wall0, local), Command.START)
    end = _clock_time(clock, wall0, datetime.combine(first + timedelta(days=days), DAY_STARTS, tz))
    lines: dict[date, DayLine] = {}

    def close_days_before(today: date) -> None:
        """Sum up each day that is over (once: nothing is added to it later), and print it."""
        for i in range(days):
            d = first + timedelta(days=i)
            if d >= today or d in lines:
                continue
            lines[d] = _day_line(state_dir, d, tz, counter)
            if out is not None:
                out.write(_format_line(lines[d]) + "\n")
                out.flush()

    options = RunOptions(config_path=config_path, state_dir=state_dir, audio=False, idle_tick_s=IDLE_STEP_S,
                         serve_until=end, language=lang,
                         on_session_end=lambda s: close_days_before(clock.wall().astimezone(tz).date()))
    device = Appliance(options, edges)
    try:
        device.main()
    finally:
        edges.close()
    close_days_before(first + timedelta(days=days))
    per_day = [lines[d] for d in sorted(lines)]
    return LendingSummary(days, sum(x.main + x.short_sets + x.perfect for x in per_day),
                          sum(x.main for x in per_day), sum(x.short_sets for x in per_day),
                          sum(x.perfect for x in per_day), sum(x.reminders for x in per_day),
                          wall_time.monotonic() - started, per_day)


def _clock_time(clock: SimClock, wall0: datetime, local: datetime) -> float:
    return clock.now() + (local.astimezone(UTC) - wall0).total_seconds()


def _enrolment_day(state_dir: Path, tz: ZoneInfo) -> date | None:
    from appliance.clinic.enrolment import current_enrolment
    from appliance.config import ConfigError

    try:
        enrolment = current_enrolment(state_dir)
    except ConfigError:  # an unreadable enrolment: the caller's default day
        return None
    return enrolment.since_utc.astimezone(tz).date() if enrolment is not None else None


def _day_line(state_dir: Path, day: date, tz: ZoneInfo, counter: _ReminderCounter) -> DayLine:
    import json
    import sqlite3

    db = state_dir / "appliance.db"
    line = DayLine(day, reminders=counter.by_day.get(day, 0))
    if not db.exists():
        return line
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        plans = {sid: json.loads(data) for sid, data in
                 con.execute("SELECT session_id, data FROM events WHERE kind = 'plan'")}
    finally:
        con.close()
    for s in load_sessions(db):
        if local_day(s["started_utc"], tz) != day:
            continue
        plan = plans.get(s["id"], {})
        if plan.get("perfect"):
            line.perfect += 1
        elif plan.get("short_set"):
            line.short_sets += 1
        else:
            line.main += 1
        if not plan.get("perfect"):  # the training targets, not the assessment's
            for ex, pct in (plan.get("targets") or {}).items():
                line.targets.setdefault(ex, float(pct))
    return line


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _format_line(line: DayLine) -> str:
    targets = " ".join(f"{ex} {pct:.0f}%" for ex, pct in sorted(line.targets.items()))
    return (f"{line.day.isoformat()} {line.day.strftime('%a')}: {line.main} main, "
            f"{_counted(line.short_sets, 'short set', 'short sets')}, {line.perfect} PERFECT, "
            f"{_counted(line.reminders, 'reminder', 'reminders')}; targets {targets or '-'}")
