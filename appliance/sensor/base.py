"""The interface every pressure source offers the coach loop.

A source delivers timestamped pressure samples (absolute cmH2O above atmosphere)
up to a given clock time, and says whether the probe is usable.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

import numpy as np


class ProbeStatus(Enum):
    OK = "ok"
    NOT_INSERTED = "not_inserted"
    DISCONNECTED = "disconnected"
    SATURATED = "saturated"
    DRIFTING = "drifting"


class PressureSource(Protocol):
    sample_rate_hz: float

    def read_until(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Samples with times in (last call's t, t]: (times_s, pressure_cmh2o)."""

    @property
    def status(self) -> ProbeStatus: ...

    def close(self) -> None: ...
