"""The pressure probe: ADC counts → volts → cmH2O, zeroing, and whether the probe can be trusted.

The transfer function comes from configuration (the MPX5010-class gauge sensor behind a
resistor divider by default, or a clinic's two-point calibration). `ProbeMonitor` decides
the probe's status from plain arrays within a second; `Probe` puts ADC, transfer and
monitor together as an `appliance.sensor.base.PressureSource`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from appliance.config import ConfigError, SensorConfig, bounded, load_dataclass, read_toml
from appliance.sensor.adc import ADC_BITS, AdcSampler
from appliance.sensor.base import ProbeStatus

if TYPE_CHECKING:
    from appliance.clock import Clock
    from appliance.sensor.live import LivePressure

log = logging.getLogger(__name__)

CMH2O_PER_KPA = 10.197162
PROBE_CALIBRATION_FILE = "probe.toml"


class Transfer(Protocol):
    """Sensor output voltage (at the ADC pin) ↔ pressure above atmosphere in cmH2O."""

    def cmh2o(self, volts: npt.ArrayLike) -> np.ndarray: ...

    def volts(self, cmh2o: npt.ArrayLike) -> np.ndarray: ...

    @property
    def span_volts(self) -> tuple[float, float]:
        """The voltages the sensor itself can produce (its output at 0 and at full scale)."""


@dataclass(frozen=True)
class Mpx5010Transfer:
    """NXP MPX5010 (and pin-compatible 0–10 kPa gauge parts): Vout = Vs·(0.09·P + 0.04), P in kPa.

    The 5 V sensor feeds a 3.3 V ADC through a divider of `divider_ratio`; the datasheet's
    full scale is 10 kPa ≈ 102 cmH2O, above the strongest squeeze the literature reports.
    """

    supply_v: float = 5.0
    divider_ratio: float = 0.66
    full_scale_kpa: float = 10.0

    def cmh2o(self, volts: npt.ArrayLike) -> np.ndarray:
        sensor_v = np.asarray(volts, dtype=float) / self.divider_ratio
        return (sensor_v / self.supply_v - 0.04) / 0.09 * CMH2O_PER_KPA

    def volts(self, cmh2o: npt.ArrayLike) -> np.ndarray:
        kpa = np.asarray(cmh2o, dtype=float) / CMH2O_PER_KPA
        return self.supply_v * (0.09 * kpa + 0.04) * self.divider_ratio

    @property
    def span_volts(self) -> tuple[float, float]:
        return (float(self.volts(0.0)), float(self.volts(self.full_scale_kpa * CMH2O_PER_KPA)))


@dataclass(frozen=True)
class TwoPointTransfer:
    """A straight line through two measured points: (volts, cmH2O) at low and high pressure.

    The clinic measures them against a reference (atmosphere and a known water column).
    The sensor's usable span is taken as the line from 0 cmH2O to `full_scale_cmh2o`.
    """

    volts_low: float
    cmh2o_low: float
    volts_high: float
    cmh2o_high: float
    full_scale_cmh2o: float = 100.0

    def __post_init__(self) -> None:
        if abs(self.volts_high - self.volts_low) < 1e-3 or self.cmh2o_high <= self.cmh2o_low:
            raise ValueError(
                f"two-point calibration needs two distinct points, got "
                f"({self.volts_low} V, {self.cmh2o_low} cmH2O) and "
                f"({self.volts_high} V, {self.cmh2o_high} cmH2O)"
            )

    @property
    def slope(self) -> float:
        return (self.cmh2o_high - self.cmh2o_low) / (self.volts_high - self.volts_low)

    def cmh2o(self, volts: npt.ArrayLike) -> np.ndarray:
        return self.cmh2o_low + (np.asarray(volts, dtype=float) - self.volts_low) * self.slope

    def volts(self, cmh2o: npt.ArrayLike) -> np.ndarray:
        return self.volts_low + (np.asarray(cmh2o, dtype=float) - self.cmh2o_low) / self.slope

    @property
    def span_volts(self) -> tuple[float, float]:
        lo, hi = float(self.volts(0.0)), float(self.volts(self.full_scale_cmh2o))
        return (min(lo, hi), max(lo, hi))


@dataclass(frozen=True)
class ProbeCalibration:
    """What `appliance calibrate` stores in the state directory (probe.toml)."""

    atmosphere_cmh2o: float = 0.0
    rest_cmh2o: float | None = None
    mvc_cmh2o: float | None = None
    oxford_band: str | None = None
    two_point: TwoPointTransfer | None = None


def load_probe_calibration(state_dir: Path | None) -> ProbeCalibration:
    if state_dir is None:
        return ProbeCalibration()
    path = Path(state_dir) / PROBE_CALIBRATION_FILE
    if not path.exists():
        return ProbeCalibration()
    data = read_toml(path)
    try:
        return load_dataclass(ProbeCalibration, data, path)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(path, "two_point", data.get("two_point"), str(exc)) from None


def save_probe_calibration(state_dir: Path, cal: ProbeCalibration) -> Path:
    """Write probe.toml atomically (a power cut leaves the old file or the new one)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"atmosphere_cmh2o = {cal.atmosphere_cmh2o!r}"]
    for key in ("rest_cmh2o", "mvc_cmh2o"):
        value = getattr(cal, key)
        if value is not None:
            lines.append(f"{key} = {float(value)!r}")
    if cal.oxford_band is not None:
        lines.append(f'oxford_band = "{cal.oxford_band}"')
    if cal.two_point is not None:
        tp = cal.two_point
        lines += [
            "",
            "[two_point]",
            f"volts_low = {tp.volts_low!r}",
            f"cmh2o_low = {tp.cmh2o_low!r}",
            f"volts_high = {tp.volts_high!r}",
            f"cmh2o_high = {tp.cmh2o_high!r}",
            f"full_scale_cmh2o = {tp.full_scale_cmh2o!r}",
        ]
    path = state_dir / PROBE_CALIBRATION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def transfer_from_config(
    config: SensorConfig, calibration: ProbeCalibration | None = None
) -> Transfer:
    """The configured transfer; `two_point` needs the clinic's calibration in probe.toml."""
    if config.transfer == "mpx5010":
        return Mpx5010Transfer(supply_v=config.sensor_supply_v, divider_ratio=config.divider_ratio)
    if calibration is None or calibration.two_point is None:
        raise ConfigError(
            "(state dir) probe.toml",
            "two_point",
            None,
            "sensor.transfer is 'two_point' but no two-point calibration is stored; "
            "run `appliance calibrate --two-point` first",
        )
    return calibration.two_point


def _floats(values: Any) -> list[float]:
    """Python floats of an array or a sequence, in one call for an array."""
    return values.tolist() if isinstance(values, np.ndarray) else [float(x) for x in values]


def counts_to_volts(counts: np.ndarray, vref: float, bits: int) -> np.ndarray:
    """Code n stands for inputs in [n, n+1)·Vref/2^bits; its centre removes the half-LSB bias."""
    return (np.asarray(counts, dtype=float) + 0.5) * vref / (1 << bits)


# --- status -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeLimits:
    """When the probe's reading stops being believable; all editable, defaults from bench tests."""

    window_s: float = bounded(0.5, 0.1, 0.9)
    rail_fraction: float = bounded(0.5, 0.1, 0.9)
    saturation_fraction: float = bounded(0.97, 0.8, 1.0)
    stuck_ptp_counts: float = bounded(0.0, 0.0, 4.0)
    insert_min_cmh2o: float = bounded(4.0, 0.5, 30.0)
    drift_limit_cmh2o: float = bounded(12.0, 2.0, 60.0)
    drift_window_s: float = bounded(12.0, 2.0, 120.0)


@dataclass
class ProbeMonitor:
    """Probe status from the recent signal, decided on every update (within `window_s` + one read).

    - disconnected: the ADC pin sits at a rail the sensor cannot produce (below half its
      zero-pressure output, or above the top of its span plus half the gap to Vref), or the
      counts do not move at all for a whole window (a real sensor always has noise);
    - saturated: pressure at or above the sensor's full scale;
    - not inserted: while insertion is expected, no pressure above atmosphere;
    - drifting: the resting floor (the lowest half-second median over `drift_window_s`) has
      moved more than `drift_limit_cmh2o` from the rest reference, or sits below atmosphere
      by that much (the zero moved). A falling floor shows within a window; a rising one
      only once a full `drift_window_s` has passed without a return to rest.
    """

    transfer: Transfer
    vref: float
    bits: int
    limits: ProbeLimits = field(default_factory=ProbeLimits)
    expect_inserted: bool = True
    rest_reference_cmh2o: float | None = None

    def __post_init__(self) -> None:
        lo, hi = self.transfer.span_volts
        self._rail_low_v = lo * self.limits.rail_fraction
        self._rail_high_v = hi + (self.vref - hi) * self.limits.rail_fraction
        if self._rail_high_v >= self.vref * (1 - 1.5 / (1 << self.bits)):
            # The sensor can reach the ADC's top: only the top code counts as a rail.
            self._rail_high_v = self.vref * (1 - 1.5 / (1 << self.bits))
        self._saturation_cmh2o = float(self.transfer.cmh2o(hi)) * self.limits.saturation_fraction
        # The window, kept so that a decision costs a few comparisons, not arrays of it: each
        # sample's (time, counts, cmH2O, at the low rail, at the high rail, saturated, below
        # insertion), how many of the window's samples have each flag, and its lowest and
        # highest counts (monotonic queues: the ADC moves, the window's extremes seldom).
        self._recent: deque[tuple[float, float, float, tuple[bool, bool, bool, bool]]] = deque()
        self._flags = [0, 0, 0, 0]
        self._lowest: deque[tuple[float, float]] = deque()
        self._highest: deque[tuple[float, float]] = deque()
        self._floor: deque[tuple[float, float]] = deque()
        self._status = ProbeStatus.OK
        self._since = 0.0
        self._last_t: float | None = None
        self._half_start: float | None = None
        self._half: list[float] = []

    @property
    def status(self) -> ProbeStatus:
        return self._status

    @property
    def since(self) -> float:
        """Time of the last status change."""
        return self._since

    def _median_cmh2o(self) -> float:
        return float(np.median(np.fromiter((r[2] for r in self._recent), float, len(self._recent))))

    @property
    def floor_cmh2o(self) -> float | None:
        return min(v for _, v in self._floor) if self._floor else None

    def reset_floor(self) -> None:
        self._floor.clear()

    def update(
        self, times: np.ndarray, counts: np.ndarray, volts: np.ndarray, cmh2o: np.ndarray
    ) -> ProbeStatus:
        if len(times) == 0:
            return self._status
        recent, flags, lowest, highest = self._recent, self._flags, self._lowest, self._highest
        low_v, high_v, sat, below = self._rail_low_v, self._rail_high_v, self._saturation_cmh2o, \
            self.limits.insert_min_cmh2o
        for t, c, v, p in zip(_floats(times), _floats(counts), _floats(volts), _floats(cmh2o), strict=True):
            flagged = (v <= low_v, v >= high_v, p >= sat, p < below)
            recent.append((t, c, p, flagged))
            for i in range(4):
                flags[i] += flagged[i]
            while lowest and lowest[-1][1] >= c:
                lowest.pop()
            lowest.append((t, c))
            while highest and highest[-1][1] <= c:
                highest.pop()
            highest.append((t, c))
            self._track_floor(t, p)
        t_now = recent[-1][0]
        cut = t_now - self.limits.window_s
        while recent and recent[0][0] <= cut:
            gone = recent.popleft()[3]
            for i in range(4):
                flags[i] -= gone[i]
        while lowest[0][0] <= cut:
            lowest.popleft()
        while highest[0][0] <= cut:
            highest.popleft()
        span = recent[-1][0] - recent[0][0] if recent else 0.0
        if span < self.limits.window_s * 0.8:
            return self._status  # not a whole window yet
        new = self._decide()
        if new is not self._status:
            log.info("probe status %s -> %s at %.2f s", self._status.value, new.value, t_now)
            self._status = new
            self._since = t_now
        return self._status

    def _track_floor(self, t: float, p: float) -> None:
        if self._half_start is None:
            self._half_start = t
        self._half.append(p)
        if t - self._half_start >= 0.5:
            self._floor.append((t, float(np.median(self._half))))
            self._half = []
            self._half_start = t
            while self._floor and self._floor[0][0] < t - self.limits.drift_window_s:
                self._floor.popleft()

    def _decide(self) -> ProbeStatus:
        """The status from the window's counts of flags and extremes (the same tests on the
        whole window as arrays would make; a median only when it can matter)."""
        lim = self.limits
        n = len(self._recent)
        at_low, at_high, saturated, below = self._flags
        if at_low == n or at_high == n:
            return ProbeStatus.DISCONNECTED
        if self._highest[0][1] - self._lowest[0][1] <= lim.stuck_ptp_counts:
            return ProbeStatus.DISCONNECTED
        if saturated and self._median_cmh2o() >= self._saturation_cmh2o:
            return ProbeStatus.SATURATED
        if self.expect_inserted and below == n:
            # Below atmosphere by more than the drift limit is a moved zero, not an empty probe.
            if self._median_cmh2o() > -lim.drift_limit_cmh2o:
                return ProbeStatus.NOT_INSERTED
            return ProbeStatus.DRIFTING
        floor = self.floor_cmh2o
        if self.expect_inserted and floor is not None and self.rest_reference_cmh2o is not None:
            if abs(floor - self.rest_reference_cmh2o) > lim.drift_limit_cmh2o:
                return ProbeStatus.DRIFTING
        return ProbeStatus.OK


# --- the probe as a pressure source -------------------------------------------------------


class Probe:
    """An `appliance.sensor.base.PressureSource` reading a real (or simulated) SPI ADC.

    `read_until(t)` returns pressure above atmosphere in cmH2O. In simulation
    (`stepped=True`) it first takes the samples due up to `t`; on the device the sampler's
    own thread has already taken them. If the configuration has an abdominal channel, its
    samples (cmH2O, same transfer) from the same reads are in `abdominal`.
    """

    def __init__(
        self,
        sampler: AdcSampler,
        transfer: Transfer,
        vref: float,
        bits: int,
        calibration: ProbeCalibration | None = None,
        limits: ProbeLimits | None = None,
        stepped: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.sampler = sampler
        self.transfer = transfer
        self.vref = vref
        self.bits = bits
        self.stepped = stepped
        self.calibration = calibration or ProbeCalibration()
        self.zero_cmh2o = self.calibration.atmosphere_cmh2o
        self.monitor = ProbeMonitor(
            transfer,
            vref,
            bits,
            limits or ProbeLimits(),
            rest_reference_cmh2o=self.calibration.rest_cmh2o,
        )
        self.abdominal: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))
        self.status_log: list[tuple[float, ProbeStatus]] = []
        self._on_close = on_close

    @property
    def sample_rate_hz(self) -> float:
        return self.sampler.rate_hz

    @property
    def status(self) -> ProbeStatus:
        if self.sampler.error is not None:
            return ProbeStatus.DISCONNECTED
        return self.monitor.status

    def read_until(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        if self.stepped:
            self.sampler.acquire_until(t)
        times, counts = self.sampler.take_until(t)
        volts = counts_to_volts(counts, self.vref, self.bits)
        pressure = self.transfer.cmh2o(volts) - self.zero_cmh2o
        before = self.monitor.status
        self.monitor.update(times, counts[:, 0], volts[:, 0], pressure[:, 0])
        if self.monitor.status is not before:
            self.status_log.append((self.monitor.since, self.monitor.status))
        if self.sampler.channels > 1:
            self.abdominal = (times, pressure[:, 1])
        return times, pressure[:, 0]

    def publish_live(self, slot: LivePressure) -> bool:
        """Publish every sample's pressure (cmH2O, zeroed) into `slot` as the sampler takes it.

        On the device that is the sampler's thread, so the live tone hears a squeeze
        within a sample, without waiting for the control loop's next read.
        """
        vref, bits, transfer = self.vref, self.bits, self.transfer
        scale = vref / (1 << bits)

        def on_sample(t: float, counts: tuple[float, ...]) -> None:
            volts = (counts[0] + 0.5) * scale  # counts_to_volts, for one sample
            slot.push(float(transfer.cmh2o(volts)) - self.zero_cmh2o)

        self.sampler.on_sample = on_sample
        return True

    def set_atmosphere_zero(self, offset_cmh2o: float) -> None:
        """Subtract this (the mean reading at atmosphere, probe out) from every later reading."""
        if not math.isfinite(offset_cmh2o):
            raise ValueError(f"atmosphere zero must be a number, got {offset_cmh2o}")
        self.zero_cmh2o = float(offset_cmh2o)
        self.monitor.reset_floor()

    def set_rest(self, rest_cmh2o: float) -> None:
        """The resting pressure after insertion: the reference drift is measured against."""
        self.monitor.rest_reference_cmh2o = float(rest_cmh2o)
        self.monitor.reset_floor()

    def expect_inserted(self, inserted: bool) -> None:
        self.monitor.expect_inserted = inserted

    def close(self) -> None:
        self.sampler.stop()
        if self._on_close is not None:
            self._on_close()


def open_probe(
    config: SensorConfig,
    clock: Clock,
    state_dir: Path | None = None,
    pin_factory: Any = None,
    stepped: bool | None = None,
    before_conversion: Callable[[float], None] | None = None,
) -> Probe:
    """The probe on the configured ADC; samples on a thread unless `stepped` (simulated clock)."""
    from appliance.clock import SimClock
    from appliance.sensor.adc import open_adc, raw_reader

    calibration = load_probe_calibration(state_dir)
    transfer = transfer_from_config(config, calibration)
    adcs = [open_adc(config, pin_factory=pin_factory)]
    if config.abdominal_channel is not None:
        if config.abdominal_channel == config.channel:
            raise ConfigError(
                "(config)",
                "sensor.abdominal_channel",
                config.abdominal_channel,
                "must differ from sensor.channel",
            )
        adcs.append(open_adc(config, channel=config.abdominal_channel, pin_factory=pin_factory))
    if stepped is None:
        stepped = isinstance(clock, SimClock)
    sampler = AdcSampler(
        [raw_reader(a) for a in adcs],
        clock,
        config.sample_rate_hz,
        config.oversample,
        before_conversion=before_conversion,
    )

    def close_adcs() -> None:
        for a in adcs:
            a.close()

    probe = Probe(
        sampler,
        transfer,
        config.vref,
        ADC_BITS[config.chip],
        calibration,
        stepped=stepped,
        on_close=close_adcs,
    )
    if not stepped:
        sampler.start()
    return probe
