"""Reminders from the idle loop: the prescription's local times (or, without one, the
timer's), spoken once each, and the patient's answer ("start" runs the short set,
"later" snoozes). A mixin of `Appliance`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from appliance.commands import Command
from appliance.device.service import Signals
from appliance.events import EventKind

if TYPE_CHECKING:
    from appliance.clock import Clock
    from appliance.coach.session import Session
    from appliance.config import DeviceConfig
    from appliance.device.health import Health
    from appliance.store import Store

log = logging.getLogger(__name__)

REMINDER_HOURS = range(8, 21)  # without a prescription: never remind at night
REMINDER_CHECK_S = 20.0
REMINDER_ANSWER_S = 120.0  # "start" or "later" within this long answers the reminder


class Reminding:
    """The supervisor's reminders (see `Appliance`, which sets these up)."""

    clock: Clock
    config: DeviceConfig | None
    session: Session | None
    health: Health
    store: Store | None
    reminder_clock: Any
    _pending_reminder: tuple[Any, float] | None
    _timer_reminder: threading.Event
    _last_reminder_day: str | None
    _last_set: datetime | None
    _last_set_known: bool

    if TYPE_CHECKING:  # defined by Appliance
        def _announce(self, phrase: str, warning: str | None = None) -> None: ...

        def _say_if_known(self, phrase: str) -> None: ...

        def _emit_service(self, kind: EventKind, **data: Any) -> None: ...

    def _answer_reminder(self, cmd: Command) -> bool:
        """A "start" or "later" soon after a reminder answers it; True if it starts the short set."""
        if self._pending_reminder is None or cmd not in (Command.START, Command.LATER):
            return False
        reminder, asked_at = self._pending_reminder
        self._pending_reminder = None
        if self.clock.now() - asked_at > REMINDER_ANSWER_S or not self.reminder_clock:
            return False
        from appliance.patient.reminders import Answer

        answer, phrase = self.reminder_clock.answer(reminder, cmd, _utc(self.clock))
        if phrase:
            self._say_if_known(phrase)
        return bool(answer is Answer.START)

    def _remind(self) -> None:
        """A reminder, if one is due: the prescription's times (checked every 20 s and on
        SIGUSR1 from appliance-reminder.timer), else the timer's own times by day."""
        if self.config is None or self.session is not None or self.health.needs_clinic:
            return
        if self.reminder_clock is not None:
            r = self.reminder_clock.due(_utc(self.clock), self._last_set_utc())
            if r is not None:
                for phrase in r.phrases:
                    self._say_if_known(phrase)
                self._pending_reminder = (r, self.clock.now())
                self._emit_service(EventKind.REMINDER, slot=r.slot, local=r.local.isoformat())
            return
        if not Signals.take(self._timer_reminder):
            return
        wall = self.clock.wall().astimezone()
        day = wall.date().isoformat()
        if wall.hour not in REMINDER_HOURS or self._last_reminder_day == day + str(wall.hour // 12):
            return
        self._last_reminder_day = day + str(wall.hour // 12)
        self._announce("device.reminder")

    def _last_set_utc(self) -> datetime | None:
        if self.store is None:
            return None
        if not self._last_set_known:
            try:
                ended = [s["ended_utc"] for s in self.store.sessions() if s.get("ended_utc")]
            except sqlite3.Error as exc:
                log.error("reading the sessions: %s", exc)
                ended = []
            self._last_set = datetime.fromisoformat(max(ended)) if ended else None
            self._last_set_known = True
        return self._last_set


def _utc(clock: Clock) -> datetime:
    return clock.wall().astimezone(UTC)
