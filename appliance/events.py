"""The coach's decisions as events, and the narrow interface every consumer implements.

Speech, tone, store, timeline, stimulation and the simulated patient all subscribe
to the coach through `Sink`; none of them calls back into the coach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Event:
    """Something the coach decided or observed, at session time `t` (seconds).

    Kinds used: `session`, `phase`, `say`, `rep`, `command`, `warning`, `exercise`,
    `calibration`, `setting`, `stim`, `probe`.
    """

    t: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind, **self.data}


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
