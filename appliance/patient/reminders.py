"""Five moments a day: when to remind, what to say, and what "start" and "later" do.

Times are the prescription's local times in its time zone (zoneinfo, so 08:30 stays
08:30 across daylight saving); never outside waking hours, never in quiet hours.
The running appliance asks `ReminderClock.due(now)`, speaks `Reminder.phrases`, and
passes the patient's answer to `ReminderClock.answer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from zoneinfo import ZoneInfo

from appliance.coach.programme import Programme
from appliance.commands import Command
from appliance.patient.prescription import Reminders, in_range, parse_hhmm, quiet_ranges

log = logging.getLogger(__name__)

# The leaflet's own suggestions: "na een toiletbezoek, wanneer u wat drinkt of wanneer u in bed ligt".
MOMENT_TIPS = ("reminder.moment_toilet", "reminder.moment_drink")
BED_TIP = "reminder.moment_bed"
RECENT_SET_MIN = 45.0  # a set done this recently makes the reminder pointless


@dataclass(frozen=True)
class Reminder:
    due_utc: datetime
    local: datetime
    slot: int  # index of the prescribed time of day
    snoozes: int = 0
    phrases: tuple[str, ...] = ()


class Answer(Enum):
    START = "start"  # begin the short set now
    SNOOZED = "snoozed"
    GIVEN_UP = "given_up"  # no more snoozes possible today (or it would fall in quiet hours)
    IGNORED = "ignored"


class ReminderClock:
    """The day's reminders for one prescription; pure logic over UTC instants."""

    def __init__(self, rem: Reminders, file: str = "(prescription)") -> None:
        self.rem = rem
        self.tz = ZoneInfo(rem.timezone)
        self.times = sorted(parse_hhmm(file, f"reminders.times[{i}]", t) for i, t in enumerate(rem.times))
        self.wake = parse_hhmm(file, "reminders.waking_from", rem.waking_from)
        self.sleep = parse_hhmm(file, "reminders.waking_until", rem.waking_until)
        self.quiet = quiet_ranges(rem, file)
        self.pending: Reminder | None = None
        self._done_until: datetime | None = None  # reminders up to here are delivered or skipped

    def allowed(self, local: datetime) -> bool:
        """May the device speak up at this local time?"""
        t = local.timetz().replace(tzinfo=None)
        return in_range(t, self.wake, self.sleep) and not any(in_range(t, a, b) for a, b in self.quiet)

    def slots_on(self, day: date) -> list[Reminder]:
        out = []
        for i, t in enumerate(self.times):
            # Through UTC and back: a time skipped by the spring change resolves to a real instant.
            local = datetime.combine(day, t, self.tz)
            utc = local.astimezone(UTC)
            local = utc.astimezone(self.tz)
            out.append(Reminder(utc, local, i, 0, self._phrases(i)))
        return out

    def _phrases(self, slot: int) -> tuple[str, ...]:
        last = slot == len(self.times) - 1
        tip = BED_TIP if last else MOMENT_TIPS[slot % len(MOMENT_TIPS)]
        return ("device.reminder", tip, "reminder.short_set")

    def next_after(self, now_utc: datetime) -> Reminder:
        if self.pending is not None and self.pending.due_utc > now_utc:
            return self.pending
        day = now_utc.astimezone(self.tz).date()
        for d in range(3):
            for r in self.slots_on(day + timedelta(days=d)):
                if r.due_utc > now_utc:
                    return r
        raise RuntimeError("no reminder within three days")  # cannot happen with >= 1 time

    def due(self, now_utc: datetime, last_set_utc: datetime | None = None) -> Reminder | None:
        """The reminder to speak now, if any; each is given once (a late check still gets it,
        up to 30 minutes late, but never outside the allowed hours)."""
        if not self.rem.enabled:
            return None
        if self.pending is not None and self.pending.due_utc <= now_utc:
            r, self.pending = self.pending, None
            return r if self.allowed(now_utc.astimezone(self.tz)) else None
        day = now_utc.astimezone(self.tz).date()
        candidates = [r for d in (day - timedelta(days=1), day) for r in self.slots_on(d)
                      if r.due_utc <= now_utc and (self._done_until is None or r.due_utc > self._done_until)]
        if not candidates:
            return None
        r = candidates[-1]
        self._done_until = r.due_utc
        if now_utc - r.due_utc > timedelta(minutes=30) or not self.allowed(now_utc.astimezone(self.tz)):
            return None
        if last_set_utc is not None and now_utc - last_set_utc < timedelta(minutes=RECENT_SET_MIN):
            log.info("reminder skipped: a set was done %s ago", now_utc - last_set_utc)
            return None
        return r

    def answer(self, reminder: Reminder, command: Command | None, now_utc: datetime) -> tuple[Answer, str | None]:
        """What the patient's answer to a reminder means, and the phrase to say (if any)."""
        if command is Command.START:
            return Answer.START, None
        if command is not Command.LATER:
            return Answer.IGNORED, None
        again = now_utc + timedelta(minutes=self.rem.snooze_minutes)
        if reminder.snoozes >= self.rem.max_snoozes or not self.allowed(again.astimezone(self.tz)):
            return Answer.GIVEN_UP, "reminder.given_up"
        self.pending = replace(reminder, due_utc=again, local=again.astimezone(self.tz),
                               snoozes=reminder.snoozes + 1, phrases=("device.reminder", "reminder.short_set"))
        return Answer.SNOOZED, "reminder.snoozed"


def short_set(programme: Programme, rem: Reminders) -> Programme:
    """The set a reminder offers: the prescribed short-set exercises of today's programme,
    fewer repetitions, no long intro (today's programme already went through the post-op gate)."""
    ids = [e.id for e in programme.exercises if e.id in rem.short_set] or [programme.exercises[0].id]
    prog = programme.only(*ids)
    exercises = tuple(replace(e, repetitions=min(e.repetitions, rem.short_set_repetitions), outro=())
                      for e in prog.exercises)
    return replace(prog, exercises=exercises, intro=tuple(k for k in prog.intro if k == "postop.unlocked"),
                   outro=())


def reminder_times_utc(rem: Reminders, day: date) -> list[datetime]:
    return [r.due_utc for r in ReminderClock(rem).slots_on(day)]


def local_hhmm(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%H:%M")

