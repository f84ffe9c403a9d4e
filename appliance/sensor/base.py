"""The interface every pressure source offers the coach loop.

A source delivers timestamped pressure samples (absolute cmH2O above atmosphere)
up to a given clock time, and says whether the probe is usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Protocol

import numpy as np


class ProbeStatus(Enum):
    OK = "ok"
    NOT_INSERTED = "not_inserted"
    DISCONNECTED = "disconnected"
    SATURATED = "saturated"
    DRIFTING = "drifting"


Samples = np.ndarray | Sequence[float]
"""A probe's arrays, or the plain lists a simulated floor gives (a sample or two a tick)."""


class PressureSource(Protocol):
    """The pressure the coach reads: the probe on its ADC, or a simulated pelvic floor."""

    @property
    def sample_rate_hz(self) -> float: ...

    def read_until(self, t: float) -> tuple[Samples, Samples]:
        """Samples with times in (last call's t, t]: (times_s, pressure_cmh2o)."""

    @property
    def status(self) -> ProbeStatus: ...

    def close(self) -> None: ...
