"""The control loop: samples in, `Session.tick` at the control rate, scripted commands.

The same loop runs on the device (RealClock: it sleeps) and in simulation (SimClock:
it jumps), so a simulated session exercises exactly the device's code path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from appliance.clock import Clock
from appliance.coach.session import Session
from appliance.commands import Command
from appliance.sensor.base import PressureSource, plain_floats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptedCommand:
    """A command said at a session time (seconds), e.g. from `--say 95:pause`."""

    t: float
    command: Command

    @classmethod
    def parse(cls, text: str) -> ScriptedCommand:
        try:
            when, name = text.split(":", 1)
            return cls(float(when), Command.parse(name))
        except ValueError as exc:
            raise ValueError(f"--say {text!r}: expected SECONDS:COMMAND, e.g. 95:pause ({exc})") from None


def _plain(samples: tuple[Any, Any]) -> tuple[list[float], list[float]]:
    """A real probe delivers numpy arrays; plain floats keep numpy scalars out of events.
    (`tolist` converts a whole array in one call; a list of floats is taken as it is.)"""
    times, values = samples
    return plain_floats(times), plain_floats(values)


def clock_time(t0: float, st: float) -> float:
    """The first clock time whose session time (`now - t0`) is at least `st`: a tick for a
    planned moment must not fall a rounding error short of it."""
    t = t0 + st
    while t - t0 < st:
        t = math.nextafter(t, math.inf)
    return t


def run(session: Session, source: PressureSource, clock: Clock, tick_s: float = 0.01,
        script: Iterable[ScriptedCommand] = (), max_seconds: float = 4 * 3600.0,
        on_tick: Callable[[float], None] | None = None, should_stop: Callable[[], bool] | None = None,
        fast_tick_s: float | None = None) -> None:
    """Run until the session is done, `max_seconds` of session time pass, or `should_stop()`.

    Ticks come every `tick_s`, every `fast_tick_s` while the session asks for it
    (`Session.needs_fast_tick`: the stimulation exercise), every `Session.idle_tick_s` while
    only words are said (`Session.may_tick_slowly`), and also at each moment the plan or
    the script names (`Session.next_due`), so prompts, phases and scripted commands happen
    on their time whatever the control rate.
    """
    pending = sorted(script, key=lambda c: c.t)
    t = clock.now()
    end = session.t0 + max_seconds
    i = 0
    while not session.finished and t < end:
        if fast_tick_s is not None and session.needs_fast_tick:
            step = fast_tick_s
        elif session.idle_tick_s is not None and session.may_tick_slowly:
            step = max(tick_s, session.idle_tick_s)  # only words until the plan's next moment
        else:
            step = tick_s
        nxt = t + step
        late_s = 10 * step
        due = session.next_due()
        if i < len(pending):
            due = pending[i].t if due is None else min(due, pending[i].t)
        if due is not None:
            at = clock_time(session.t0, due)
            if t < at < nxt:
                nxt = at
        t = nxt
        clock.sleep_until(t)
        now = clock.now()
        if now - t > late_s:  # fell behind (a slow disk, a busy CPU): do not try to catch up
            log.warning("control loop late by %.0f ms", (now - t) * 1000)
            t = now
        times, values = _plain(source.read_until(t))
        st = t - session.t0
        while i < len(pending) and pending[i].t <= st:
            session.command(pending[i].command, source="script")
            i += 1
        session.probe_status = getattr(source, "status", None)  # biofeedback and stim depend on it
        session.tick(t, times, values)
        if on_tick is not None:
            on_tick(t)
        if should_stop is not None and should_stop():
            break
