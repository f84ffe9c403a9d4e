"""The interface every pressure source offers the coach loop.

A source delivers timestamped pressure samples (absolute cmH2O above atmosphere)
up to a given clock time, and says whether the probe is usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any, Protocol

import numpy as np


class ProbeStatus(Enum):
    OK = "ok"
    NOT_INSERTED = "not_inserted"
    DISCONNECTED = "disconnected"
    SATURATED = "saturated"
    DRIFTING = "drifting"


Samples = np.ndarray | Sequence[float]
"""A probe's arrays, or the plain lists a simulated floor gives (a sample or two a tick)."""


def plain_floats(xs: Any) -> list[float]:
    """Plain floats: a probe's array converted in one call, a list of floats taken as it is
    (numpy scalars kept out of events and the slot: np.float64 is a float too)."""
    if isinstance(xs, np.ndarray):
        return xs.tolist()
    if type(xs) is list and (not xs or type(xs[0]) is float):
        return xs
    return [float(x) for x in xs]


class PressureSource(Protocol):
    """The pressure the coach reads: the probe on its ADC, or a simulated pelvic floor."""

    @property
    def sample_rate_hz(self) -> float: ...

    def read_until(self, t: float) -> tuple[Samples, Samples]:
        """Samples with times in (last call's t, t]: (times_s, pressure_cmh2o)."""

    @property
    def status(self) -> ProbeStatus: ...

    def close(self) -> None: ...
