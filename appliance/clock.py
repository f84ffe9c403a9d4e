"""One clock for everything time-based: monotonic control time plus UTC wall time.

`RealClock` runs on the device; `SimClock` runs simulations and tests deterministically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the coach, sensors and stimulation need to know about time."""

    def now(self) -> float:
        """Monotonic seconds; only differences mean anything."""

    def sleep_until(self, t: float) -> None:
        """Block (or, in simulation, jump) until `now() >= t`."""

    def wall(self) -> datetime:
        """Current UTC wall-clock time, for stored timestamps only."""


class RealClock:
    """The device's clock: `time.monotonic` for control, UTC for records."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def wall(self) -> datetime:
        return datetime.now(UTC)


class SimClock:
    """A clock that only moves when told to; a 30-minute session runs in seconds.

    `sleep_until` jumps straight to the requested time, so code written for the
    real clock runs unchanged. Thread-safe, so a simulated sensor thread and the
    coach can share it.
    """

    def __init__(self, start: float = 0.0, wall_start: datetime | None = None) -> None:
        self._t = float(start)
        self._start = float(start)
        self._wall_start = wall_start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()
        self._observers: list[Callable[[float], None]] = []

    def now(self) -> float:
        return self._t

    def on_advance(self, observer: Callable[[float], None], *, first: bool = False) -> None:
        """Call `observer(now)` whenever time moves: what a sound card or a microphone would
        do in real time (consume audio, hear the patient) happens in step with the clock.
        `first`: before the observers already there (a sensor's sampler: what it takes is
        there before the sound card plays the blocks that would have heard it)."""
        if first:
            self._observers.insert(0, observer)
        else:
            self._observers.append(observer)

    def remove_observer(self, observer: Callable[[float], None]) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _moved(self) -> None:
        for observer in tuple(self._observers):
            observer(self._t)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"SimClock cannot run backwards (advance {seconds})")
        with self._lock:
            self._t += seconds
        self._moved()
        return self._t

    def sleep_until(self, t: float) -> None:
        with self._lock:
            moved = t > self._t
            if moved:
                self._t = float(t)
        if moved:
            self._moved()

    def wall(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._t - self._start)

    def set_wall(self, when: datetime) -> None:
        """Move the wall clock (e.g. to the next day) without touching control time."""
        if when.tzinfo is None:
            raise ValueError("wall time must be timezone-aware")
        with self._lock:
            self._wall_start = when - timedelta(seconds=self._t - self._start)
