"""The coach's decisions as events, and the narrow interface every consumer implements.

Speech, tone, store, timeline, stimulation and the simulated patient all subscribe
to the coach through `Sink`; none of them calls back into the coach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class EventKind(StrEnum):
    """Every kind of event any part emits; docs/interfaces.md lists each one's fields.

    A `StrEnum`: `event.kind == "say"` holds, and JSON and the store get the plain string.
    """

    SESSION = "session"  # the coach: ready, started, paused, resumed, snoozed, stopped, done
    CALIBRATION = "calibration"  # the coach: rest and MVC, measured or carried over
    EXERCISE = "exercise"  # the coach: an exercise started, finished or skipped
    PHASE = "phase"  # the coach (and the calibration procedure): a phase of the plan begins
    SAY = "say"  # the coach or the supervisor: a phrase to be spoken
    REP = "rep"  # the coach: one repetition's metrics
    COMMAND = "command"  # the coach: a command heard and whether it was accepted
    WARNING = "warning"  # the coach: a technique, probe or calibration warning
    SETTING = "setting"  # the coach: pace or volume changed
    STIM = "stim"  # appliance.stim.controller: the stimulation line's state
    SERVICE = "service"  # the supervisor: the device is ready
    REMINDER = "reminder"  # the supervisor: a reminder fired
    PLAN = "plan"  # the supervisor: what today's plan applied (stored with the session)
    JUMPS = "jumps"  # appliance.patient.progress: hops counted in one hop phase
    PERFECT = "perfect"  # appliance.patient.progress: the weekly PERFECT assessment


@dataclass(frozen=True)
class Event:
    """Something the coach decided or observed, at session time `t` (seconds).

    `kind` is an `EventKind` (a plain string naming one is converted; any other string
    is refused with ValueError: a kind nobody documented is a programming error).
    """

    t: float
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EventKind):
            try:
                object.__setattr__(self, "kind", EventKind(self.kind))
            except ValueError:
                known = ", ".join(k.value for k in EventKind)
                raise ValueError(f"unknown event kind {self.kind!r} (known: {known})") from None

    def as_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind.value, **self.data}


@dataclass(frozen=True)
class Feedback:
    """What the live tone should express at one control tick.

    `strength_pct` is the smoothed squeeze as % of the patient's MVC; `target_pct`
    the level asked for now; `active` whether a contraction is being asked for; `cmh2o` the smoothed pressure.
    """

    t: float
    strength_pct: float
    target_pct: float
    active: bool
    cmh2o: float = 0.0  # smoothed probe pressure above atmosphere


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...

    def feedback(self, fb: Feedback) -> None: ...


class NullSink:
    """A sink that ignores everything; base class for sinks that need only one method."""

    def emit(self, event: Event) -> None:  # noqa: D401 - interface
        return None

    def feedback(self, fb: Feedback) -> None:
        return None
