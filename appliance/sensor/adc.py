"""The SPI ADC edge: gpiozero's MCP3008/MCP3208, sampled at a steady rate with oversampling.

`open_adc` builds the gpiozero device from the configuration (gpiozero picks spidev on a Pi,
the mock factory in tests). `AdcSampler` turns it into timestamped, averaged counts, either
on its own thread against a real clock (`start`) or stepped by the caller in simulation
(`acquire_until`), and measures how steadily it kept its schedule.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from gpiozero import MCP3008, MCP3208

from appliance.clock import Clock
from appliance.config import SensorConfig

log = logging.getLogger(__name__)

ADC_CLASSES = {"MCP3008": MCP3008, "MCP3208": MCP3208}
ADC_BITS = {"MCP3008": 10, "MCP3208": 12}

# Samples kept when nobody reads them (a stalled consumer must not exhaust 512 MB): 60 s at 1 kHz.
MAX_BUFFERED = 60_000


class AdcChannel(Protocol):
    """What we use of a gpiozero `MCP3008`/`MCP3208` channel (gpiozero is untyped)."""

    @property
    def raw_value(self) -> int: ...

    def close(self) -> None: ...


def raw_reader(adc: AdcChannel) -> Callable[[], int]:
    """A zero-argument reader of `adc`'s raw counts, for `AdcSampler`."""
    return lambda: adc.raw_value


def open_adc(config: SensorConfig, channel: int | None = None, pin_factory: Any = None) -> AdcChannel:
    """The gpiozero ADC for one channel of the configured chip on the configured SPI port/device.

    `pin_factory`: a gpiozero pin factory (the mock factory in tests), or None for gpiozero's choice.
    """
    cls = ADC_CLASSES[config.chip]
    return cls(
        channel=config.channel if channel is None else channel,
        max_voltage=config.vref,
        port=config.spi_port,
        device=config.spi_device,
        pin_factory=pin_factory,
    )


@dataclass(frozen=True)
class SamplingStats:
    """How well the sampler kept its schedule: the figures `bench/adc_rate.py` prints."""

    samples: int
    target_rate_hz: float
    achieved_rate_hz: float
    interval_mean_ms: float
    interval_sd_ms: float
    lateness_mean_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    conversion_mean_ms: float
    overruns: int


class AdcSampler:
    """Samples one or more ADC channels at `rate_hz`, averaging `oversample` conversions each.

    `readers` are zero-argument callables returning raw counts (gpiozero's `raw_value`), one
    per channel; the first is the probe, a second (if any) the abdominal sensor. Averaging
    n conversions lowers white noise by √n and adds fractional resolution, which is why the
    counts are floats. Timestamps come from `clock` at the moment the burst starts.
    """

    def __init__(
        self,
        readers: Sequence[Callable[[], int]],
        clock: Clock,
        rate_hz: float = 200.0,
        oversample: int = 4,
        before_conversion: Callable[[float], None] | None = None,
    ) -> None:
        if not readers:
            raise ValueError("AdcSampler needs at least one channel reader")
        if rate_hz <= 0 or oversample < 1:
            raise ValueError(f"bad sampling parameters: rate {rate_hz} Hz, oversample {oversample}")
        self.readers = list(readers)
        self.clock = clock
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.oversample = int(oversample)
        # In simulation the analog front end needs to know the instant being converted.
        self.before_conversion = before_conversion
        self._buffer: deque[tuple[float, tuple[float, ...]]] = deque(maxlen=MAX_BUFFERED)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._origin: float | None = None
        self._slot = 0
        self._lateness: deque[float] = deque(maxlen=MAX_BUFFERED)
        self._stamps: deque[float] = deque(maxlen=MAX_BUFFERED)
        self._conversion_s: deque[float] = deque(maxlen=MAX_BUFFERED)
        self._overruns = 0
        self.error: BaseException | None = None
        # Called with (t, counts) as each sample is taken, in the sampling thread (the live
        # tone's pressure slot: appliance.sensor.probe.Probe.publish_live).
        self.on_sample: Callable[[float, tuple[float, ...]], None] | None = None

    @property
    def channels(self) -> int:
        return len(self.readers)

    def _burst(self) -> tuple[float, ...]:
        n = self.oversample
        return tuple(sum(reader() for _ in range(n)) / n for reader in self.readers)

    def _record(self, t: float, due: float, counts: tuple[float, ...], took: float) -> None:
        with self._lock:
            self._buffer.append((t, counts))
            self._stamps.append(t)
            self._lateness.append(t - due)
            self._conversion_s.append(took)
        on_sample = self.on_sample
        if on_sample is not None:
            on_sample(t, counts)

    # --- threaded, real time -------------------------------------------------------------

    def start(self) -> None:
        """Sample on a background thread until `stop()`; for a real clock."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="adc-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = self.clock.now()
        try:
            while not self._stop.is_set():
                self.clock.sleep_until(due)
                t = self.clock.now()
                counts = self._burst()
                took = self.clock.now() - t
                self._record(t, due, counts, took)
                due += self.period
                now = self.clock.now()
                if now > due + self.period:
                    # Fell more than a whole period behind (e.g. the CPU was busy): skip the
                    # missed slots rather than burst-sampling to catch up, and count it.
                    missed = int((now - due) / self.period)
                    self._overruns += missed
                    due += missed * self.period
        except Exception as exc:  # the coach sees a disconnected probe; the log says why
            log.exception("ADC sampling stopped")
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    # --- stepped, simulation -------------------------------------------------------------

    def acquire_until(self, t: float) -> None:
        """Take every sample scheduled up to `t` now, in the caller's thread (simulated time)."""
        if self._origin is None:
            self._origin = t
        # Due times from a slot index, not by adding periods, so rounding never drops a slot.
        while (due := self._origin + self._slot * self.period) <= t + 1e-9:
            if self.before_conversion is not None:
                self.before_conversion(due)
            counts = self._burst()
            self._record(due, due, counts, 0.0)
            self._slot += 1

    # --- consumers -----------------------------------------------------------------------

    def take_until(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Remove and return samples stamped ≤ t: times (n,) and counts (n, channels)."""
        with self._lock:
            out = []
            while self._buffer and self._buffer[0][0] <= t:
                out.append(self._buffer.popleft())
        if not out:
            return np.empty(0), np.empty((0, self.channels))
        times = np.fromiter((s[0] for s in out), float, len(out))
        counts = np.fromiter((c for s in out for c in s[1]), float, len(out) * self.channels)
        counts = counts.reshape(len(out), self.channels)
        return times, counts

    def stats(self) -> SamplingStats:
        with self._lock:
            stamps = np.array(self._stamps)
            late = np.array(self._lateness)
            conv = np.array(self._conversion_s)
        n = len(stamps)
        if n < 2:
            return SamplingStats(n, self.rate_hz, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self._overruns)
        intervals = np.diff(stamps)
        span = stamps[-1] - stamps[0]
        return SamplingStats(
            samples=n,
            target_rate_hz=self.rate_hz,
            achieved_rate_hz=(n - 1) / span if span > 0 else 0.0,
            interval_mean_ms=float(intervals.mean() * 1e3),
            interval_sd_ms=float(intervals.std() * 1e3),
            lateness_mean_ms=float(late.mean() * 1e3),
            lateness_p99_ms=float(np.percentile(late, 99) * 1e3),
            lateness_max_ms=float(late.max() * 1e3),
            conversion_mean_ms=float(conv.mean() * 1e3),
            overruns=self._overruns,
        )
