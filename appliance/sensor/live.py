"""The live pressure for the tone: the newest smoothed sample, straight from the sensor side.

The coach reads the probe once per control tick; the tone should not wait for that. A
`LivePressure` slot is written at every sample by whoever takes it (the probe's sampler
thread on the device, the control loop's read for sources without a thread of their
own) and read by the audio callback at every block, without a lock: one writer swaps a
float in, readers take it whole.

Its smoothing is the tone's own: a One Euro filter with the coach's calm at rest but a
larger speed coefficient, so a deliberate squeeze is heard within one sensor sample
(bench/latency.py prints the latency and the steady-hold jitter it buys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.sensor.base import PressureSource, ProbeStatus, Samples
from appliance.sensor.signal import OneEuroFilter


@dataclass(frozen=True)
class ToneSmoothing:
    """The tone's One Euro filter: the coach's `min_cutoff_hz`, quicker when the pressure moves."""

    min_cutoff_hz: float = 1.5
    beta: float = 0.7
    d_cutoff_hz: float = 1.0


class LivePressure:
    """The newest smoothed pressure (cmH2O above atmosphere, probe zero applied).

    `push` is for one writer thread; `value` and `count` may be read from any thread.
    """

    def __init__(self, rate_hz: float, smoothing: ToneSmoothing | None = None) -> None:
        s = smoothing or ToneSmoothing()
        self._filter = OneEuroFilter(rate_hz, s.min_cutoff_hz, s.beta, s.d_cutoff_hz)
        self.value: float | None = None
        self.count = 0  # samples published so far (a stalled writer shows as no change)

    def push(self, cmh2o: float) -> None:
        self.value = self._filter(cmh2o)
        self.count += 1  # published after the value


class LiveSource:
    """A pressure source without a sampler thread of its own, publishing what the loop reads."""

    def __init__(self, source: PressureSource, slot: LivePressure) -> None:
        self.source = source
        self.slot = slot
        self.sample_rate_hz = source.sample_rate_hz

    def read_until(self, t: float) -> tuple[Samples, Samples]:
        times, values = self.source.read_until(t)
        push = self.slot.push
        for v in values:
            push(float(v))
        return times, values

    @property
    def status(self) -> ProbeStatus:
        return self.source.status

    @property
    def abdominal(self) -> Any:
        return getattr(self.source, "abdominal", None)

    def close(self) -> None:
        self.source.close()


def publish_live(source: PressureSource, slot: LivePressure) -> PressureSource:
    """`source`, publishing every sample into `slot`: from its own sampler thread when it
    has one (`source.publish_live(slot)` returns True), else from the control loop's read."""
    publish = getattr(source, "publish_live", None)
    if publish is not None and publish(slot):
        return source
    return LiveSource(source, slot)
