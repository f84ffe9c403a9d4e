"""The live pressure for the tone: the newest smoothed sample, straight from the sensor side.

The coach reads the probe once per control tick; the tone should not wait for that. A
`LivePressure` slot is written at every sample by whoever takes it (the probe's sampler
thread on the device, the control loop's read for sources without a thread of their
own) and read by the audio callback at every block, without a lock: one writer swaps a
float in, readers take it whole.

In simulated time there is no sampler thread: `publish_live` given the simulated clock
takes the samples as the clock moves, before the simulated sound card plays the blocks
that would have heard them, and the slot publishes each one at its own time
(`SimulatedSampler`). The speaker's blocks then read the slot as the card's callbacks on
the device do, whatever the control loop's tick.

Its smoothing is the tone's own: a One Euro filter with the coach's calm at rest but a
larger speed coefficient, so a deliberate squeeze is heard within one sensor sample
(bench/latency.py prints the latency and the steady-hold jitter it buys).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from appliance.sensor.base import PressureSource, ProbeStatus, Samples, plain_floats
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
        # In simulated time (`keep_time`): samples taken ahead, published at their time.
        self._due: deque[tuple[float, float]] | None = None

    def push(self, cmh2o: float) -> None:
        self.value = self._filter(cmh2o)
        self.count += 1  # published after the value

    # --- simulated time ------------------------------------------------------------------
    def keep_time(self) -> None:
        """Publish samples pushed with their time only when `publish_until` reaches it."""
        if self._due is None:
            self._due = deque()

    @property
    def keeps_time(self) -> bool:
        return self._due is not None

    def next_time(self) -> float | None:
        """The time of the next sample held back (None: none)."""
        due = self._due
        return due[0][0] if due else None

    def push_block(self, times: Samples, cmh2o: list[float]) -> None:
        """Each sample in order, without a call per sample; a slot that keeps time holds
        each back until `publish_until` reaches its time."""
        values = self._filter.run(cmh2o)
        due = self._due
        if due is not None:
            due.extend(zip(times, values, strict=True))
        elif values:
            self.value = values[-1]
            self.count += len(values)  # published after the value

    def publish_until(self, t: float) -> None:
        """Publish every held-back sample taken at or before clock time `t`."""
        due = self._due
        while due and due[0][0] <= t:
            self.value = due.popleft()[1]
            self.count += 1


class LiveSource:
    """A pressure source without a sampler thread of its own, publishing what the loop reads."""

    def __init__(self, source: PressureSource, slot: LivePressure) -> None:
        self.source = source
        self.slot = slot
        self.sample_rate_hz = source.sample_rate_hz

    def read_until(self, t: float) -> tuple[Samples, Samples]:
        times, values = self.source.read_until(t)
        self.slot.push_block(times, plain_floats(values))
        return times, values

    @property
    def status(self) -> ProbeStatus:
        return self.source.status

    @property
    def abdominal(self) -> Any:
        return getattr(self.source, "abdominal", None)

    def close(self) -> None:
        self.source.close()


class SimulatedSampler:
    """The sensor side in simulated time: it takes the samples as the clock moves (first of
    the clock's observers), so the slot has each one at its own time before the simulated
    sound card plays on, as a sampler thread has on the device. The control loop's
    `read_until` then collects what was taken, as it does from the probe's sampler.
    """

    def __init__(self, source: PressureSource, slot: LivePressure, clock: Any) -> None:
        self.source = source
        self.slot = slot
        self.sample_rate_hz = source.sample_rate_hz
        self._taken_until = -math.inf
        # What each step of the clock took: (clock time, times, values, the belly's or None),
        # handed to the control loop as the source would have answered its read then.
        self._taken: list[tuple[float, list[float], list[float], Any]] = []
        self.abdominal: Any = None
        slot.keep_time()
        self._clock = clock
        clock.on_advance(self.take_until, first=True)
        clock.on_advance(slot.publish_until)  # after the speaker: whatever is due by now

    def take_until(self, t: float) -> None:
        """Take every sample up to clock time `t` (the clock has just reached it)."""
        if t <= self._taken_until:
            return  # (the control loop's read right after the clock moved)
        self._taken_until = t
        times, values = self.source.read_until(t)
        if not len(times):
            return
        times, values = plain_floats(times), plain_floats(values)
        self.slot.push_block(times, values)
        belly = getattr(self.source, "abdominal", None)
        self._taken.append((t, times, values, None if belly is None else tuple(map(plain_floats, belly))))

    def read_until(self, t: float) -> tuple[Samples, Samples]:
        self.take_until(t)
        taken = self._taken
        k = len(taken)
        while k and taken[k - 1][0] > t:  # (taken since: the clock ran past `t`)
            k -= 1
        mine = taken[:k]
        del taken[:k]
        times = [x for _, ts, _, _ in mine for x in ts]
        values = [x for _, _, vs, _ in mine for x in vs]
        bellies = [b for *_, b in mine if b is not None]
        self.abdominal = ([x for b in bellies for x in b[0]], [x for b in bellies for x in b[1]]) if bellies else None
        self.slot.publish_until(t)  # the loop has reached t, speaker or not
        return times, values

    @property
    def status(self) -> ProbeStatus:
        return self.source.status

    def close(self) -> None:
        self._clock.remove_observer(self.take_until)
        self._clock.remove_observer(self.slot.publish_until)
        self.source.close()


def publish_live(source: PressureSource, slot: LivePressure, clock: Any = None) -> PressureSource:
    """`source`, publishing every sample into `slot`: by itself when it can (its sampler
    thread, or bench/latency.py's probe sampling before every audio block:
    `source.publish_live(slot)` returns True); else on a simulated clock (one with
    `on_advance`) as the clock moves (`SimulatedSampler`); else from the control loop's read."""
    publish = getattr(source, "publish_live", None)
    if publish is not None and publish(slot):
        return source
    if getattr(clock, "on_advance", None) is not None:
        return SimulatedSampler(source, slot, clock)
    return LiveSource(source, slot)
