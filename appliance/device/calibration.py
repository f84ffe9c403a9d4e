"""Calibrating the probe: zero it, insert it, measure rest and MVC, store the Oxford band.

The voice-guided Modified Oxford procedure (best of three maximal squeezes held 3–5 s), run
at the clinic or at home by `appliance calibrate`. `CalibrationProcedure` holds the steps
and is tested against the simulated pelvic floor read through the simulated ADC; the
two-point sensor calibration measures the sensor against two known pressures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from appliance.events import Event, EventKind
from appliance.sensor.base import ProbeStatus
from appliance.sensor.probe import (
    ProbeCalibration,
    ProbeLimits,
    TwoPointTransfer,
    load_probe_calibration,
    save_probe_calibration,
)
from appliance.sensor.signal import oxford_band

log = logging.getLogger(__name__)

ATMOSPHERE_S = 3.0
INSERT_TIMEOUT_S = 90.0
INSERT_REMIND_S = 20.0
REST_S = 8.0
SQUEEZES = 3
SQUEEZE_S = 5.0  # the patient holds 3–5 s; the best quarter-second counts
RECOVER_S = 8.0
MIN_MVC_CMH2O = 3.0
SPOKEN_KEYS = ("probe.atmosphere", "probe.insert", "probe.insert_failed", "probe.inserted", "calibrate.rest",
               "calibrate.again", "calibrate.squeeze", "calibrate.squeeze_release", "calibrate.done")


class CalibrationError(Exception):
    """The calibration cannot go on; one sentence the clinician or patient can act on."""


@dataclass(frozen=True)
class CalibrationResult:
    atmosphere_cmh2o: float
    rest_cmh2o: float
    squeezes_cmh2o: tuple[float, ...]
    mvc_cmh2o: float
    oxford_band: str


class CalibrationProcedure:
    """The steps, against a `Probe`-like source and a clock; `say(key)` speaks a phrase.

    `phase(kind, start, end)` is told each step as the coach's `phase` events would be, so
    the simulated pelvic floor can follow it.
    """

    def __init__(
        self,
        probe,
        clock,
        say: Callable[[str], float],
        phase: Callable[[Event], None] | None = None,
        tick_s: float = 0.05,
    ) -> None:
        self.probe = probe
        self.clock = clock
        self.say = say
        self.phase = phase
        self.tick_s = tick_s
        self.t0 = clock.now()

    def _collect(self, seconds: float) -> np.ndarray:
        values = []
        end = self.clock.now() + seconds
        while self.clock.now() < end - 1e-9:
            self.clock.sleep_until(self.clock.now() + self.tick_s)
            _, v = self.probe.read_until(self.clock.now())
            values.extend(np.asarray(v, dtype=float).tolist())
            if self.probe.status is ProbeStatus.DISCONNECTED:
                raise CalibrationError("the probe reads nothing (disconnected): check the cable and the ADC")
        return np.array(values)

    def _speak(self, key: str) -> None:
        duration = self.say(key)
        if duration:
            self._collect(duration)

    def _announce(self, kind: str, seconds: float, level: float = 0.0) -> None:
        if self.phase is not None:
            t = self.clock.now() - self.t0
            self.phase(Event(t, EventKind.PHASE, dict(phase=kind, start=t, end=t + seconds,
                                                       level_pct=level, exercise="calibration")))

    def run(self) -> CalibrationResult:
        limits = self.probe.monitor.limits if hasattr(self.probe, "monitor") else ProbeLimits()
        # 1. Zero at atmosphere, probe out of the body.
        self.probe.expect_inserted(False)
        self._speak("probe.atmosphere")
        at_rest = self._collect(ATMOSPHERE_S)
        atmosphere = self.probe.zero_cmh2o + float(np.median(at_rest))
        self.probe.set_atmosphere_zero(atmosphere)
        # 2. Insertion: wait for pressure above atmosphere, reminding now and then.
        self._speak("probe.insert")
        waited, since_prompt = 0.0, 0.0
        while True:
            window = self._collect(1.0)
            waited += 1.0
            since_prompt += 1.0
            if len(window) and np.all(window > limits.insert_min_cmh2o):
                break
            if waited >= INSERT_TIMEOUT_S:
                raise CalibrationError(f"no pressure after {INSERT_TIMEOUT_S:.0f} s: the probe was not inserted")
            if since_prompt >= INSERT_REMIND_S:
                self._speak("probe.insert_failed")
                since_prompt = 0.0
        self.probe.expect_inserted(True)
        self._speak("probe.inserted")
        # 3. Rest baseline.
        self._announce("calibrate_rest", REST_S)
        self._speak("calibrate.rest")
        rest_values = self._collect(REST_S)
        rest = float(np.median(rest_values[-int(len(rest_values) * 5 / REST_S) :]))
        self.probe.set_rest(rest)
        # 4. Three maximal squeezes; the best quarter-second of each.
        peaks = []
        for i in range(SQUEEZES):
            if i:
                self._speak("calibrate.again")
            self._announce("calibrate_squeeze", SQUEEZE_S, 100.0)
            self._speak("calibrate.squeeze")
            squeeze = self._collect(SQUEEZE_S)
            n = max(1, int(0.25 * self.probe.sample_rate_hz))
            smooth = np.convolve(squeeze, np.ones(n) / n, mode="valid") if len(squeeze) >= n else squeeze
            peaks.append(float(smooth.max()) - rest if len(smooth) else 0.0)
            self._announce("calibrate_release", RECOVER_S)
            self._speak("calibrate.squeeze_release")
            self._collect(RECOVER_S)
        mvc = max(peaks)
        if mvc < MIN_MVC_CMH2O:
            raise CalibrationError(f"no squeeze was measured (best {mvc:.1f} cmH2O above rest); try again")
        self._speak("calibrate.done")
        return CalibrationResult(
            round(atmosphere, 2), round(rest, 2), tuple(round(p, 2) for p in peaks),
            round(mvc, 2), oxford_band(mvc),
        )


def speaker_voice(lang: str, cfg, echo: Callable[[str], float]) -> tuple[Callable[[str], float], Callable[[], None]]:
    """Speak on the loudspeaker, and `echo(key)` too; returns (say, close). OSError without audio."""
    from appliance.voice.audio import DeviceOutput, Mixer, frames_for
    from appliance.voice.output import prepare_speech

    bank = prepare_speech(lang, cfg, keys=list(SPOKEN_KEYS))
    mixer = Mixer(cfg.sample_rate, volume=cfg.volume)
    output = DeviceOutput(mixer, cfg.output_device, cfg.block_size).start()
    if not output.wait_open(5.0):
        output.stop()
        raise OSError(f"no audio output: {output.last_error}")

    def say(key: str) -> float:
        clip = bank.clip(key)
        mixer.schedule(clip.samples, mixer.frame_now() + frames_for(0.05, cfg.sample_rate), key)
        echo(key)
        return clip.duration_s + 0.1

    return say, output.stop


def simulated_probe(config, profile_name: str, seed: int, clock):
    """The simulated patient through the simulated ADC; the probe is 'inserted' 3 s after asked."""
    from appliance.sensor.mcp_sim import ResampledPressure, simulated_adc_probe
    from appliance.sensor.simulated import SimulatedPelvicFloor, profile

    try:
        patient = profile(profile_name)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    floor = SimulatedPelvicFloor(patient, seed=seed)
    pressure = ResampledPressure(floor)
    state = {"inserted_at": None}

    def at_probe(t: float) -> float:
        inside = pressure(t)  # keep the floor's clock moving even before insertion
        at = state["inserted_at"]
        return inside if at is not None and t >= at else 0.0

    sensor = replace(config.sensor, source="adc")
    probe, _, _ = simulated_adc_probe(at_probe, sensor, clock, seed=seed)
    return probe, floor, state


def two_point(config, state_dir: Path, low: float, high: float, prompt: Callable[[str], object]) -> tuple[Path, str]:
    """Measure the sensor's volts at `low` and `high` cmH2O (`prompt` asks for each); store it.

    Returns the calibration file and a one-line summary.
    """
    from appliance.clock import RealClock
    from appliance.sensor.probe import counts_to_volts, open_probe

    if not high > low:
        raise CalibrationError(f"two-point {low:g}:{high:g}: HIGH must be above LOW")
    clock = RealClock()
    probe = open_probe(replace(config.sensor, transfer="mpx5010"), clock, None)
    volts = []
    try:
        for p in (low, high):
            prompt(f"Apply {p:g} cmH2O to the probe and press Enter… ")
            clock.sleep_until(clock.now() + 0.5)
            probe.sampler.take_until(clock.now())
            clock.sleep_until(clock.now() + 2.0)
            _, counts = probe.sampler.take_until(clock.now())
            volts.append(float(np.median(counts_to_volts(counts[:, 0], probe.vref, probe.bits))))
    finally:
        probe.close()
    try:
        tp = TwoPointTransfer(volts[0], low, volts[1], high)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    cal = replace(load_probe_calibration(state_dir), two_point=tp)
    path = save_probe_calibration(state_dir, cal)
    return path, (f"two-point: {volts[0]:.4f} V at {low:g} cmH2O, {volts[1]:.4f} V at {high:g} cmH2O "
                  f"({tp.slope:.2f} cmH2O/V) -> {path}; set sensor.transfer = \"two_point\"")


def store_result(state_dir: Path, result: CalibrationResult) -> Path:
    """Save rest, MVC and the Oxford band in STATE_DIR/probe.toml, keeping a two-point calibration."""
    previous = load_probe_calibration(state_dir)
    cal = ProbeCalibration(
        atmosphere_cmh2o=result.atmosphere_cmh2o,
        rest_cmh2o=result.rest_cmh2o,
        mvc_cmh2o=result.mvc_cmh2o,
        oxford_band=result.oxford_band,
        two_point=previous.two_point,
    )
    return save_probe_calibration(Path(state_dir), cal)
