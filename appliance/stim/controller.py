"""The stim controller: every interlock in one decision, tick by tick, and `open_stim`.

The controller never touches a pin: it drives a `Line` (`appliance.stim.line`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import Enum
from typing import Any, Protocol, TypeGuard

from appliance.commands import Command
from appliance.events import Event, EventKind
from appliance.stim.limits import HARD_LIMITS
from appliance.stim.line import Line, StimLine, StimWatchdog, install_exit_handlers
from appliance.stim.prescription import StimMode, StimPrescription, postoperative

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StimContext:
    """What the coach observes at one tick: the inputs to the interlocks.

    `exercise_active`: a stim exercise is running and the session is not paused.
    `probe_ok`: the probe is inserted and reading sane (`ProbeStatus.OK`).
    `strength_pct`: the squeeze as %MVC, for triggered mode.
    """

    exercise_active: bool
    probe_ok: bool
    strength_pct: float = 0.0


@dataclass(frozen=True)
class StimCue:
    """Something the coach must say now: `phrase`, whose keyword should land at `keyword_at`.

    Say it at once: the 3 s the patient has to say stop count from the cue's tick.
    """

    phrase: str
    keyword_at: float


class StimState(Enum):
    IDLE = "idle"  # no stim exercise running
    LOCKED = "locked"  # refused for this exercise (prescription, post-op, daily limit)
    WAITING = "waiting"  # needs an announcement before any work
    ANNOUNCING = "announcing"  # told; the patient has 3 s to say stop
    WORK = "work"  # line high
    REST = "rest"
    ARMED = "armed"  # triggered mode: waiting for the patient's squeeze
    DONE = "done"  # cycles or minutes used up
    STOPPED = "stopped"  # a stop, an exception or shutdown: latched for this controller


# The programme exercise the coach runs the stim line in (coach/programmes/leaflet.toml).
STIM_EXERCISE_ID = "stim"

# Phrase keys (appliance/voice/phrases/*.toml, table [stim]).
PHRASE_BEGINS = "stim.begins"
PHRASE_TRIGGERED = "stim.triggered"
PHRASE_REST = "stim.rest"
PHRASE_STOPPED = "stim.stopped"
PHRASE_UNAVAILABLE = "stim.unavailable"


class Fed(Protocol):
    """A guard the controller feeds on every tick: the `StimWatchdog`, a `RelayedLine`'s lease."""

    tripped: bool

    def feed(self) -> None: ...


def _is_fed(x: object) -> TypeGuard[Fed]:
    return callable(getattr(x, "feed", None))


class StimController:
    """Decides, tick by tick, whether the line may be high; drives it low on anything else.

    Use: `begin(now, today, sessions_today)` when the stim exercise starts, `tick(now,
    context)` on every control tick (the cue it returns must be spoken), `command()` for
    every command or button press, `end()` when the exercise ends, `shutdown()` on
    every exit path. `now` is session seconds; events carry it as `t`.
    """

    def __init__(
        self,
        line: Line,
        prescription: StimPrescription | None,
        emit: Callable[[Event], None] | None = None,
        watchdog: StimWatchdog | None = None,
        sessions_on: Callable[[date], int] | None = None,
    ) -> None:
        self._line = line
        self._rx = prescription
        self.emit = emit or (lambda event: None)  # the session attaches its sinks here
        self._watchdog = watchdog
        # fed on every tick, after the watchdog: a line held on a lease (`RelayedLine`)
        self._fed: list[Fed] = []
        for x in (watchdog, line):
            if _is_fed(x) and all(x is not y for y in self._fed):
                self._fed.append(x)
        self._sessions_on = sessions_on  # stim sessions already stored for a day
        # seconds from the start of a phrase to its keyword; the session attaches its timing
        self.announce_lead: Callable[[str], float] = lambda phrase: 0.0
        self.state = StimState.IDLE
        self.reason = ""
        self._last_tick: float | None = None
        self._begun_at = 0.0
        self._work_at = 0.0  # cyclic: when the next (or current) work phase starts
        self._work_until = 0.0
        self._rest_until = 0.0
        self._below_seen = False
        self.work_phases = 0
        self._sessions_by_day: dict[date, int] = {}

    def bind(self, emit: Callable[[Event], None], keyword_offset: Callable[[str], float]) -> None:
        """The session's side of the controller: where its events go, and how long each cue
        takes from its start to its keyword (so "now" lands as the line goes high)."""
        self.emit = emit
        self.announce_lead = keyword_offset

    # -- queries --
    @property
    def line_high(self) -> bool:
        return self._line.is_active

    @property
    def finished(self) -> bool:
        """The stim exercise has nothing more to do (coach may move on)."""
        return self.state in (StimState.DONE, StimState.LOCKED, StimState.STOPPED)

    # -- lifecycle --
    def refusal(self, today: date, sessions_today: int | None = None) -> str:
        """Why a stim exercise cannot begin today ("" if it can)."""
        rx = self._rx
        if self.state is StimState.STOPPED:
            return self.reason or "stopped"
        if rx is None or not rx.enabled:
            return "not_prescribed"
        if postoperative(rx, today):
            return "postoperative"
        if self._count(today, sessions_today) >= rx.sessions_per_day:
            return "daily_limit"
        return ""

    def _count(self, today: date, sessions_today: int | None) -> int:
        if sessions_today is None:
            sessions_today = self._sessions_on(today) if self._sessions_on else 0
        return max(sessions_today, self._sessions_by_day.get(today, 0))

    def begin(self, now: float, today: date, sessions_today: int | None = None) -> bool:
        """Start a stim exercise; False (and a `stim` event saying why) if refused.

        `sessions_today` (stim sessions already given today) defaults to asking the
        `sessions_on` callable, e.g. the store.
        """
        self._drop(now, "begin")
        refusal = self.refusal(today, sessions_today)
        count = self._count(today, sessions_today)
        if refusal:
            if self.state is not StimState.STOPPED:  # a stop stays a stop
                self.state, self.reason = StimState.LOCKED, refusal
            self._event(now, "refused", refusal)
            return False
        self._sessions_by_day[today] = count + 1
        self.state, self.reason = StimState.WAITING, ""
        self._begun_at = now
        self._last_tick = now
        self.work_phases = 0
        self._event(now, "begin", "")
        return True

    def end(self, now: float, reason: str = "exercise_finished") -> None:
        self._drop(now, reason)
        if self.state is not StimState.STOPPED:
            self.state, self.reason = StimState.IDLE, reason

    def shutdown(self, now: float, reason: str = "shutdown") -> None:
        """Drive the line low and refuse anything further; safe to call repeatedly."""
        self._drop(now, reason)
        if self.state is not StimState.STOPPED:
            self.state, self.reason = StimState.STOPPED, reason
            self._event(now, "stopped", reason)

    def command(self, now: float, command: Command | None, source: str = "voice") -> None:
        """Any command or button press drops the line; STOP ends stim for this session."""
        name = "button" if command is None else command.value
        if command is Command.STOP:
            self.shutdown(now, f"stop:{source}")
        elif self.state in (StimState.ANNOUNCING, StimState.WORK, StimState.REST,
                            StimState.ARMED, StimState.WAITING):
            self._interrupt(now, f"command:{name}:{source}")

    # -- the decision --
    def tick(self, now: float, context: StimContext) -> StimCue | None:
        """One control tick: apply every interlock, move the line, return a cue to speak."""
        try:
            cue = self._decide(now, context)
        except BaseException:
            self.shutdown(now, "exception")
            raise
        for fed in self._fed:
            fed.feed()
        return cue

    def _decide(self, now: float, ctx: StimContext) -> StimCue | None:
        previous, self._last_tick = self._last_tick, now
        if self.state in (StimState.IDLE, StimState.LOCKED, StimState.DONE, StimState.STOPPED):
            self._drop(now, self.state.value)
            return None
        rx = self._rx
        assert rx is not None and rx.enabled  # begin() refuses otherwise
        tripped = [x for x in self._fed if getattr(x, "tripped", False)]
        if tripped:
            for x in tripped:
                x.tripped = False
            self._interrupt(now, "watchdog")
            return None
        gap = 0.0 if previous is None else now - previous
        if gap < 0 or gap > HARD_LIMITS.watchdog_seconds:
            self._interrupt(now, "clock_jump")
            return None
        if not ctx.exercise_active:
            self._interrupt(now, "not_in_exercise")
            return None
        if not ctx.probe_ok:
            self._interrupt(now, "probe")
            return None
        session_end = self._begun_at + rx.session_seconds
        cycles_used = rx.cycles is not None and self.work_phases >= rx.cycles
        if now >= session_end or (cycles_used and self.state is not StimState.WORK):
            self._finish(now)
            return None

        cyclic = rx.mode is StimMode.CYCLIC
        announce = HARD_LIMITS.announce_seconds
        if self.state is StimState.WORK:
            if now >= self._work_until:
                self._drop(now, "work_done")
                self.state = StimState.REST
                return StimCue(PHRASE_REST, now)
            return None
        if self.state is StimState.WAITING or (cyclic and self.state is StimState.REST):
            # tell the patient; work may start 3 s later and not before the rest is over
            if cyclic and self._rest_until + rx.work_seconds > session_end:
                self._finish(now)
                return None
            if cyclic and now < self._rest_until - max(announce, self.announce_lead(PHRASE_BEGINS)):
                return None
            # the cue is spoken now; at least 3 s (or until its keyword) before any work
            phrase = PHRASE_BEGINS if cyclic else PHRASE_TRIGGERED
            told = now + max(announce, self.announce_lead(phrase))
            self.state = StimState.ANNOUNCING
            self._work_at = max(told, self._rest_until) if cyclic else told
            self._event(now, "announce", "")
            return StimCue(phrase, self._work_at)
        if self.state is StimState.ANNOUNCING and now >= self._work_at:
            if not cyclic:
                self.state = StimState.ARMED
                self._below_seen = ctx.strength_pct < rx.trigger_pct
            elif self._work_at + rx.work_seconds > session_end:
                self._finish(now)
                return None
            else:
                self._start_work(now, self._work_at, rx)
            return None
        if self.state in (StimState.ARMED, StimState.REST) and not cyclic:
            # a fresh crossing of the threshold, after the rest, fires one work phase
            self.state = StimState.ARMED
            if ctx.strength_pct < rx.trigger_pct:
                self._below_seen = True
            elif (self._below_seen and now >= self._rest_until
                  and now + rx.work_seconds <= session_end):
                self._start_work(now, now, rx)
            if now < self._rest_until:
                self._below_seen = False  # a squeeze held through the rest does not count
        return None

    # -- the only two places that move the line --
    def _start_work(self, now: float, scheduled: float, rx: StimPrescription) -> None:
        # end on the schedule, not on the tick, so a late tick shortens rather than lengthens
        self._work_until = scheduled + rx.work_seconds
        self._line.on(rx.work_seconds + HARD_LIMITS.watchdog_seconds)
        self.state = StimState.WORK
        self.work_phases += 1
        self._event(now, "on", "")

    def _drop(self, now: float, reason: str) -> None:
        was_high = self._line.is_active
        self._line.off()
        if was_high and self._rx is not None:
            # a full rest follows every work phase, also one cut short by an interruption
            ended = min(now, self._work_until)
            self._rest_until = max(self._rest_until, ended + self._rx.rest_seconds)
        if was_high:
            self._event(now, "off", reason)

    def _interrupt(self, now: float, reason: str) -> None:
        """Line low; the next work phase needs a fresh announcement and 3 s."""
        self._drop(now, reason)
        if self.state in (StimState.ANNOUNCING, StimState.WORK, StimState.REST,
                          StimState.ARMED):
            self._event(now, "interrupted", reason)
        if self.state not in (StimState.IDLE, StimState.LOCKED, StimState.DONE,
                              StimState.STOPPED):
            self.state, self.reason = StimState.WAITING, reason
        return None

    def _finish(self, now: float) -> None:
        self._drop(now, "session_limit")
        self.state, self.reason = StimState.DONE, "session_limit"
        self._event(now, "done", "session_limit")
        return None

    def _event(self, now: float, state: str, reason: str) -> None:
        mode = self._rx.mode.value if self._rx is not None else "none"
        self.emit(Event(now, EventKind.STIM, {"state": state, "reason": reason, "mode": mode,
                                               "work_phase": self.work_phases}))


def stim_sessions_on(store: Any, day: date, tz: tzinfo | None = None) -> int:
    """Stim sessions begun on `day` in time zone `tz` (the prescription's; None: UTC).

    Read from the store's event log (`sessions_on=`): a session counts for the local
    day its `started_utc` falls on, so 00:30 in Brussels is that day, not the UTC one.
    """
    zone = tz or UTC
    start = datetime.combine(day, time(0), zone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    rows = store.query(
        "SELECT DISTINCT s.id AS id, s.started_utc AS started FROM events e JOIN sessions s"
        " ON s.id = e.session_id WHERE e.kind = 'stim'"
        " AND json_extract(e.data, '$.state') = 'begin'"
        " AND s.started_utc >= ? AND s.started_utc < ?",
        # a day's margin either side of the UTC range; the exact local day is decided below
        ((start - timedelta(days=1)).astimezone(UTC).date().isoformat(),
         (end + timedelta(days=1)).astimezone(UTC).date().isoformat()),
    )
    return sum(1 for row in rows if start <= _utc(row["started"]) < end)


def _utc(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@contextmanager
def open_stim(
    line: Line | int,
    prescription: StimPrescription | None,
    sessions_on: Callable[[date], int] | None = None,
    pin_factory: Any = None,
) -> Iterator[StimController]:
    """A controller around the stim line, with exit handlers; the line is low and closed after.

    `line`: an already opened line (the device's `RelayedLine` from `open_relayed_line`,
    the simulation's `StimLine`), or a BCM pin number to open a `StimLine` on (with
    `pin_factory`). A `StimLine` gets an in-process `StimWatchdog`; a line with `feed()`
    is fed by the controller on every tick instead. `open_stim` owns the line: on
    leaving the block, however, the line is low, any watchdog stopped and the line
    closed. Call from the main thread after any other SIGTERM/SIGINT handler is
    installed (these chain to it).
    """
    if isinstance(line, bool):
        raise TypeError("open_stim needs a Line or a BCM pin number, not a bool")
    if isinstance(line, int):
        line = StimLine(line, pin_factory=pin_factory)
    uninstall = install_exit_handlers(line)
    watchdog = StimWatchdog(line).start() if isinstance(line, StimLine) else None
    controller = StimController(line, prescription, watchdog=watchdog, sessions_on=sessions_on)
    try:
        yield controller
    finally:
        low = False
        try:
            controller.shutdown(controller._last_tick or 0.0, "closed")
            low = True
        finally:
            if watchdog is not None:
                watchdog.stop()
            close = getattr(line, "close", None)
            if close is not None:
                close()
            # Low and closed: the handlers that guarded it go. They stay if the shutdown
            # or the closing failed (then they still drive the line low at exit).
            if low:
                uninstall()
