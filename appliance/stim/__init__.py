"""The electrostimulation line: one GPIO output that gates an external, certified stimulator.

The line is high only while every interlock holds; any stop, fault, hang, signal or exit
drives it low. The hard limits live in `HARD_LIMITS`, the one reviewed place.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from appliance.commands import Command
from appliance.config import ConfigError, check_known_keys
from appliance.events import Event

log = logging.getLogger(__name__)


# --- The hard limits: reviewed in one place ------------------------------------------------


@dataclass(frozen=True)
class StimLimits:
    """Limits no prescription can exceed; change them only after clinical review.

    Sources (see the team's CLINICAL.md, "Electrostimulation"):
    - work at most 10 s, rest at least as long as work: clinic trial protocols cycle
      5 s on / 10 s off; on-times beyond 10 s are outside what the leaflet's clinic uses.
    - rest at least 3 s: before every work phase the patient is told and has
      `announce_seconds` (3 s) to say stop, and that warning is spoken during the rest.
    - session at most 30 min: INNOVO uses 30-min sessions; home vaginal stimulation
      runs 20-30 min a day.
    - one stim session a day unless prescribed, never more than two.
    - no stimulation within 12 weeks after childbirth or pelvic surgery (contraindication).
    - trigger threshold 10-90 %MVC: below 10 % noise and breath ripple would fire it,
      above 90 % a weak patient (the very patients stim is for) would never reach it.
    - the control loop must tick at least every 200 ms or the watchdog drops the line.
    """

    min_work_seconds: float = 1.0
    max_work_seconds: float = 10.0
    min_rest_seconds: float = 3.0
    max_rest_seconds: float = 60.0
    max_session_minutes: float = 30.0
    default_sessions_per_day: int = 1
    max_sessions_per_day: int = 2
    postoperative_weeks: int = 12
    announce_seconds: float = 3.0
    min_trigger_pct: float = 10.0
    max_trigger_pct: float = 90.0
    watchdog_seconds: float = 0.2


HARD_LIMITS = StimLimits()

# The contraindication checklist (CLINICAL.md); every item must be answered "no".
CONTRAINDICATIONS: Mapping[str, str] = MappingProxyType(
    {
        "pacemaker": "a pacemaker or other implanted stimulator",
        "pregnancy_or_trying": "pregnancy or trying to conceive",
        "recent_birth_or_pelvic_surgery": "less than 12 weeks after childbirth or pelvic surgery",
        "infection": "a urinary or vaginal infection or discharge",
        "pelvic_cancer": "pelvic cancer",
        "epilepsy": "epilepsy",
        "broken_skin": "broken skin at the electrode",
        "no_sensation": "no sensation at the electrode",
        "metal_implant_or_iud": "metal implants or a conductive IUD near the field",
        "large_prolapse": "a large prolapse",
        "cannot_report_discomfort": "cognitive impairment that prevents reporting discomfort",
        "urinary_retention": "urinary retention",
    }
)


# --- The prescription ----------------------------------------------------------------------


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
    for key in checklist or {}:
        if key not in CONTRAINDICATIONS:
            raise ConfigError(file, f"stim.contraindications.{key}", checklist[key],
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


# --- The line itself (the thin hardware edge) ----------------------------------------------


class Line(Protocol):
    """What the controller needs from the output: a `StimLine` or a `PipeLine`."""

    def on(self, max_seconds: float) -> None: ...

    def off(self) -> None: ...

    @property
    def is_active(self) -> bool: ...


class StimLine:
    """The GPIO output that enables the external stimulator: active-high, low from the start.

    `on(max_seconds)` records a deadline that a `StimWatchdog` enforces even if the
    controller never ticks again. Thread-safe: the watchdog and the signal handlers
    may call `off()` at any moment.
    """

    def __init__(self, pin: int | str, pin_factory: Any = None) -> None:
        from gpiozero import DigitalOutputDevice

        self._device = DigitalOutputDevice(
            pin, active_high=True, initial_value=False, pin_factory=pin_factory
        )
        self._lock = threading.RLock()
        self._deadline: float | None = None
        self._closed = False

    def on(self, max_seconds: float) -> None:
        limit = HARD_LIMITS.max_work_seconds + HARD_LIMITS.watchdog_seconds
        if not 0 < max_seconds <= limit:
            raise ValueError(f"stim on-time {max_seconds!r} s outside (0, {limit}] s")
        with self._lock:
            if self._closed:
                raise RuntimeError("stim line is closed")
            self._deadline = time.monotonic() + max_seconds
            self._device.on()

    def off(self) -> None:
        with self._lock:
            self._deadline = None
            if not self._closed:
                self._device.off()

    @property
    def is_active(self) -> bool:
        with self._lock:
            return not self._closed and bool(self._device.value)

    def overdue(self, now: float) -> bool:
        """True if the line is high past the deadline given to `on()` (real monotonic time)."""
        with self._lock:
            return self._deadline is not None and now > self._deadline

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._device.off()
                self._device.close()
                self._closed = True


class StimWatchdog:
    """Drops the line if the control loop stops feeding it for more than 200 ms.

    A daemon thread polls every `poll_seconds`; it also drops a line held past the
    deadline `StimLine.on()` was given. `tripped` tells the controller it happened.
    """

    def __init__(
        self,
        line: StimLine,
        timeout: float = HARD_LIMITS.watchdog_seconds,
        poll_seconds: float = 0.01,
    ) -> None:
        if not 0 < timeout <= HARD_LIMITS.watchdog_seconds:
            raise ValueError(f"watchdog timeout {timeout} s exceeds the hard limit")
        self._line = line
        self._timeout = timeout
        self._poll = poll_seconds
        self._last_feed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tripped = False

    def start(self) -> StimWatchdog:
        self._last_feed = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="stim-watchdog", daemon=True)
        self._thread.start()
        return self

    def feed(self) -> None:
        self._last_feed = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._line.off()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            now = time.monotonic()
            stale = now - self._last_feed > self._timeout
            if self._line.is_active and (stale or self._line.overdue(now)):
                self._line.off()
                self.tripped = True
                log.error("stim watchdog dropped the line (%s)",
                          "control loop stopped ticking" if stale else "on-time exceeded")


def install_exit_handlers(line: Line) -> None:
    """Drive the line low at interpreter exit and on SIGTERM/SIGINT, then do what was done before.

    Call from the main thread. A handler installed later must chain to this one.
    SIGKILL and power loss cannot be caught: the pull-down (docs/stimulation.md) and,
    for a separate line-holding process, `LineRelay` cover those.
    """
    atexit.register(line.off)
    if threading.current_thread() is not threading.main_thread():
        log.warning("stim exit handlers: not the main thread, so atexit only (no signals)")
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            line.off()
            log.warning("stim line driven low on signal %s", signal.Signals(sig).name)
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_IGN:
                return
            elif sig == signal.SIGINT:
                raise KeyboardInterrupt
            else:
                raise SystemExit(128 + sig)

        signal.signal(signum, handler)


# --- A line held by another process --------------------------------------------------------


class PipeLine:
    """The controller side of a line held by another process (see `LineRelay`).

    It sends "on"/"off" and a heartbeat on every tick; if this process dies or hangs,
    the holder drops the line.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._active = False

    def on(self, max_seconds: float) -> None:
        self._conn.send(("on", float(max_seconds)))
        self._active = True

    def off(self) -> None:
        self._active = False
        try:
            self._conn.send(("off", 0.0))
        except (OSError, ValueError):
            pass  # the holder is gone; its side drops the line on EOF

    def feed(self) -> None:
        self._conn.send(("beat", 0.0))

    @property
    def is_active(self) -> bool:
        return self._active


class LineRelay:
    """Holds the `StimLine` for a controller in another process, fed through a pipe.

    The line goes low on an "off", on end-of-file (the other process died, even by
    SIGKILL) and, through a `StimWatchdog`, when heartbeats stop for 200 ms (it hangs).
    """

    def __init__(self, line: StimLine, conn: Any) -> None:
        self._line = line
        self._conn = conn
        self.watchdog = StimWatchdog(line)
        self._thread = threading.Thread(target=self._run, name="stim-relay", daemon=True)

    def start(self) -> LineRelay:
        self.watchdog.start()
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                try:
                    what, value = self._conn.recv()
                except (EOFError, OSError):
                    log.warning("stim controller process gone; line driven low")
                    return
                if what == "on":
                    self._line.on(value)
                elif what == "off":
                    self._line.off()
                self.watchdog.feed()
        finally:
            self._line.off()
            self.watchdog.stop()


# --- The controller: every interlock in one decision ---------------------------------------


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
        watchdog: Any = None,
        sessions_on: Callable[[date], int] | None = None,
    ) -> None:
        self._line = line
        self._rx = prescription
        self.emit = emit or (lambda event: None)  # the session attaches its sinks here
        self._watchdog = watchdog
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
        if self._watchdog is not None:
            self._watchdog.feed()
        return cue

    def _decide(self, now: float, ctx: StimContext) -> StimCue | None:
        previous, self._last_tick = self._last_tick, now
        if self.state in (StimState.IDLE, StimState.LOCKED, StimState.DONE, StimState.STOPPED):
            self._drop(now, self.state.value)
            return None
        rx = self._rx
        assert rx is not None and rx.enabled  # begin() refuses otherwise
        if getattr(self._watchdog, "tripped", False):
            self._watchdog.tripped = False
            return self._interrupt(now, "watchdog")
        gap = 0.0 if previous is None else now - previous
        if gap < 0 or gap > HARD_LIMITS.watchdog_seconds:
            return self._interrupt(now, "clock_jump")
        if not ctx.exercise_active:
            return self._interrupt(now, "not_in_exercise")
        if not ctx.probe_ok:
            return self._interrupt(now, "probe")
        session_end = self._begun_at + rx.session_seconds
        cycles_used = rx.cycles is not None and self.work_phases >= rx.cycles
        if now >= session_end or (cycles_used and self.state is not StimState.WORK):
            return self._finish(now)

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
                return self._finish(now)
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
                return self._finish(now)
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
        self.emit(Event(now, "stim", {"state": state, "reason": reason, "mode": mode,
                                       "work_phase": self.work_phases}))


def with_stim_exercise(programme: Any, after: str = "awareness") -> Any:
    """The programme with the stim exercise (coach/programmes/stim.toml) after `after`.

    Call only when the prescription enables stim today (`DayPlan.stim_allowed`); the
    controller still checks every interlock itself. At the start if `after` is absent.
    """
    from dataclasses import replace

    from appliance.coach.programme import load_programme

    stim = load_programme("stim").exercise(STIM_EXERCISE_ID)
    exercises = [e for e in programme.exercises if e.id != STIM_EXERCISE_ID]
    ids = [e.id for e in exercises]
    at = ids.index(after) + 1 if after in ids else 0
    return replace(programme, exercises=(*exercises[:at], stim, *exercises[at:]))


def stim_sessions_on(store: Any, day: date) -> int:
    """Stim sessions begun on UTC `day`, from the store's event log (`sessions_on=`)."""
    rows = store.query(
        "SELECT COUNT(DISTINCT e.session_id) AS n FROM events e JOIN sessions s"
        " ON s.id = e.session_id WHERE e.kind = 'stim'"
        " AND json_extract(e.data, '$.state') = 'begin' AND substr(s.started_utc, 1, 10) = ?",
        (day.isoformat(),),
    )
    return int(rows[0]["n"]) if rows else 0


@contextmanager
def open_stim(
    pin: int,
    prescription: StimPrescription | None,
    sessions_on: Callable[[date], int] | None = None,
    pin_factory: Any = None,
) -> Iterator[StimController]:
    """The device's stim line, watchdog and exit handlers around one controller.

    `with open_stim(cfg.controls.stim_pin, rx.stim, sessions_on) as stim:
    session.attach_stim(stim); run(...)` -- on leaving the block, however, the line is
    low, the watchdog stopped and the pin released. Call from the main thread after any
    other SIGTERM/SIGINT handler is installed (these chain to it).
    """
    line = StimLine(pin, pin_factory=pin_factory)
    install_exit_handlers(line)
    watchdog = StimWatchdog(line).start()
    controller = StimController(line, prescription, watchdog=watchdog, sessions_on=sessions_on)
    try:
        yield controller
    finally:
        controller.shutdown(controller._last_tick or 0.0, "closed")
        watchdog.stop()
        line.close()


def drive_low(pin: int, pin_factory: Any = None) -> None:
    """Claim the stim pin as an output, drive it low, release it (after any exit).

    Used by `appliance stim-off`, the service's ExecStopPost: when `appliance run`
    died without its handlers (SIGKILL, watchdog kill), the kernel may leave the line
    as it was; this drives it low before the external pull-down takes over.
    """
    StimLine(pin, pin_factory=pin_factory).close()
