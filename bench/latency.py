"""Probe-to-pitch latency: a step in probe pressure, measured where the pitch moves in the output.

Drives the device's real-time path in simulated time, exactly as the device schedules it:
probe samples at the sensor rate, each published by the sampler (as the probe's sampler
thread does) into the tone's live pressure slot, which the mixer reads at every block;
Session.tick every control tick (signal filter, strength) -> Feedback -> ToneShaper ->
the tone's loudness and cue (and the pitch while no live sample is there). The session is
built by the device's `build_session`, with an `AudioSink` as its audio. Each
step in pressure lands at a random moment (against sensor samples, ticks and blocks)
inside an active phase; the output's instantaneous pitch (analytic signal) tells when
the pitch has moved halfway (in semitones) from where it was to where it settles.

Prints `probe_to_pitch_ms p50=… p99=…` (the whole chain), and for comparison the coach's
own view (`probe_to_feedback_ms`: until the first control tick whose strength asks for a
pitch past the halfway mark; the pitch no longer waits for it). `hold_jitter_semitones`
is the pitch's wobble during a steady hold with the simulated floor's sensor noise
(0.3 cmH2O): the price of a quicker tone filter, next to the coach's filter's.
Algorithmic latency only: the sound card's buffer comes on top (`DeviceOutput.output_latency_s`).
"""

from __future__ import annotations

import argparse
import math
import random

import numpy as np

from appliance.clock import SimClock
from appliance.coach.programme import load_programme
from appliance.coach.session import Calibration
from appliance.commands import Command
from appliance.config import DeviceConfig
from appliance.device.wiring import CONTROL_TICK_S, SessionParts, build_session
from appliance.events import Event, Feedback
from appliance.sensor.base import ProbeStatus
from appliance.sensor.live import LivePressure
from appliance.sensor.signal import OneEuroFilter
from appliance.voice.audio import Mixer
from appliance.voice.output import AudioSink
from appliance.voice.phrases import Catalogue
from appliance.voice.tone import LivePitch, ToneMapping, ToneShaper

REST_CMH2O, MVC_CMH2O = 20.0, 40.0
LOW, HIGH = 0.3, 0.85  # fractions of the target: both plain tone, no cue change
NOISE_CMH2O = 0.3  # the simulated floor's sensor noise (appliance.sensor.simulated)


class StepProbe:
    """A probe whose pressure jumps between two levels at times the bench chooses.

    Like the device's probe, its sampler takes each sample at its own time (`sample_until`,
    called before every audio block here) and publishes it to the live slot at once; the
    control loop's `read_until` then collects what was taken.
    """

    def __init__(self, rate_hz: float) -> None:
        self.sample_rate_hz = rate_hz
        self._next = 0.0
        self.level_pct = 0.0
        self._changes: list[tuple[float, float]] = []  # (t, level_pct), in order
        self._taken: list[tuple[float, float]] = []
        self.slot: LivePressure | None = None

    def step_at(self, t: float, level_pct: float) -> None:
        self._changes.append((t, level_pct))

    def publish_live(self, slot: LivePressure) -> bool:
        self.slot = slot
        return True

    def sample_until(self, t: float) -> None:
        dt = 1.0 / self.sample_rate_hz
        while self._next <= t:
            while self._changes and self._changes[0][0] <= self._next:
                self.level_pct = self._changes.pop(0)[1]
            value = REST_CMH2O + MVC_CMH2O * self.level_pct / 100.0
            self._taken.append((self._next, value))
            if self.slot is not None:
                self.slot.push(value)
            self._next += dt

    def read_until(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        self.sample_until(t)
        n = 0
        while n < len(self._taken) and self._taken[n][0] <= t:
            n += 1
        taken, self._taken = self._taken[:n], self._taken[n:]
        return np.asarray([s[0] for s in taken]), np.asarray([s[1] for s in taken])

    @property
    def status(self) -> ProbeStatus:
        return ProbeStatus.OK

    def close(self) -> None:
        return None


class ToneOnly(AudioSink):
    """The device's `AudioSink` with speech left out, so it cannot disturb the measurement."""

    def __init__(self, mixer: Mixer, shaper: ToneShaper) -> None:
        super().__init__(mixer, None, shaper)  # type: ignore[arg-type]  # no phrases: never speaks
        self.phase: dict | None = None
        self.ticks: list[Feedback] = []

    def emit(self, event: Event) -> None:
        if event.kind == "phase":
            self.phase = event.data

    def feedback(self, fb: Feedback) -> None:
        self.ticks.append(fb)
        super().feedback(fb)


def instantaneous_hz(x: np.ndarray, sr: int) -> np.ndarray:
    n = x.shape[0]
    spec = np.fft.fft(x)
    h = np.zeros(n)
    h[0] = 1
    h[1 : (n + 1) // 2] = 2
    if n % 2 == 0:
        h[n // 2] = 1
    phase = np.unwrap(np.angle(np.fft.ifft(spec * h)))
    return np.diff(phase) * sr / (2 * math.pi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="session seconds to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=None, help="override the shipped block size")
    parser.add_argument("--tick", type=float, default=CONTROL_TICK_S,
                        help=f"control tick in seconds (the device ships {CONTROL_TICK_S})")
    args = parser.parse_args()

    cfg = DeviceConfig()
    sr, block = cfg.audio.sample_rate, args.block or cfg.audio.block_size
    sensor_hz, tick_s = cfg.sensor.sample_rate_hz, args.tick
    rng = random.Random(args.seed)

    catalogue = Catalogue.load("nl")
    programme = load_programme("leaflet", catalogue.keys())
    clock = SimClock()
    mixer = Mixer(sr)
    shaper = ToneShaper(ToneMapping(cfg.audio.tone_rest_hz, cfg.audio.tone_target_hz))
    tone = ToneOnly(mixer, shaper)
    probe = StepProbe(sensor_hz)
    # The device's wiring: the probe's observers (breath, technique) and breath following
    # run on every tick, as in `appliance run`; the tone sink stands in for the voice.
    built = build_session(programme, catalogue, clock, SessionParts(
        source=probe, audio=tone, calibration=Calibration(REST_CMH2O, MVC_CMH2O)))
    session = built.session
    session.command(Command.START, source="bench")

    total = int(args.seconds * sr)
    out = np.zeros(total, dtype=np.float32)
    frames = 0
    next_tick = tick_s
    steps: list[tuple[float, float, float]] = []  # (t, from_pct, to_pct) in session time
    level = 0.0
    next_step_after = 0.0
    while frames + block <= total:
        now = frames / sr
        # The callback for this block runs at `now`: every tick up to then has acted.
        while next_tick <= now:
            t = session.t0 + next_tick
            clock.sleep_until(t)
            times, values = built.source.read_until(t)
            session.tick(t, times, values)
            ph = tone.phase
            fb = tone.ticks[-1]
            active = fb.active and fb.target_pct > 0 and ph is not None
            if active and next_tick >= next_step_after and ph["end"] - next_tick > 0.6:
                new = (HIGH if level < fb.target_pct * 0.5 else LOW) * fb.target_pct
                when = next_tick + rng.uniform(0.0, 0.05)
                probe.step_at(session.t0 + when, new)
                if level > 0:
                    steps.append((when, level, new))
                level = new
                next_step_after = when + 0.45
            elif not active and level != 0.0 and ph is not None:
                probe.step_at(session.t0 + next_tick, 0.0)
                level = 0.0
            next_tick += tick_s
        probe.sample_until(session.t0 + now)  # the sampler thread took these meanwhile
        mixer.render(out[frames : frames + block])
        frames += block

    tick_times = np.array([fb.t for fb in tone.ticks])
    tick_semis = np.array(
        [12 * math.log2(shaper.mapping.pitch_hz(fb.strength_pct, fb.target_pct or 1.0)) for fb in tone.ticks]
    )
    whole, signal, ours = [], [], []
    for when, _from_pct, _to_pct in steps:
        a, b = int((when - 0.06) * sr), int((when + 0.35) * sr)
        if b >= frames:
            break
        f = instantaneous_hz(out[a:b].astype(np.float64), sr)
        semis = 12 * np.log2(np.maximum(f, 1.0))
        step_i = int(when * sr) - a
        start = np.median(semis[step_i - int(0.04 * sr) : step_i - int(0.005 * sr)])
        settled = np.median(semis[-int(0.08 * sr) : -int(0.02 * sr)])
        if abs(settled - start) < 3:
            continue  # the phase changed under the step: not a clean measurement
        half = (start + settled) / 2
        sign = math.copysign(1, settled - start)
        crossing = step_i + int(np.argmax((semis[step_i:] - half) * sign >= 0))
        whole.append((crossing - step_i) / sr * 1e3)
        # the first control tick whose strength asks for a pitch past the halfway mark
        i0 = int(np.searchsorted(tick_times, when))
        i_half = i0 + int(np.argmax((tick_semis[i0:] - half) * sign >= 0))
        signal.append((tick_times[i_half] - when) * 1e3)
        ours.append((crossing - (tick_times[i_half] * sr - a)) / sr * 1e3)

    def pct(v: list[float], q: float) -> float:
        return float(np.percentile(v, q))

    print(
        f"config: sample_rate={sr} Hz block_size={block} ({block / sr * 1e3:.1f} ms) "
        f"sensor={sensor_hz:.0f} Hz control_tick={tick_s * 1e3:.0f} ms steps={len(whole)}"
    )
    print(f"probe_to_pitch_ms p50={pct(whole, 50):.1f} p99={pct(whole, 99):.1f} max={max(whole):.1f}")
    print(f"  the coach's tick sees it: probe_to_feedback_ms (sensor, filter, tick) p50={pct(signal, 50):.1f} "
          f"p99={pct(signal, 99):.1f}")
    print(f"  pitch relative to that tick: p50={pct(ours, 50):+.1f} p99={pct(ours, 99):+.1f} ms")
    tone_sd, coach_sd = hold_jitter(sensor_hz, shaper.mapping, seed=args.seed)
    print(f"hold_jitter_semitones tone={tone_sd:.3f} (the coach's filter would give {coach_sd:.3f})")


def hold_jitter(rate_hz: float, mapping: ToneMapping, seed: int, seconds: float = 60.0) -> tuple[float, float]:
    """Pitch SD (semitones) during a steady hold at 60 % of the target with sensor noise,
    for the tone's live filter and for the coach's: what the patient hears wobble."""
    rng = np.random.default_rng(seed)
    target_pct = 60.0
    level = REST_CMH2O + MVC_CMH2O * 0.6 * target_pct / 100.0
    noisy = level + rng.normal(0.0, NOISE_CMH2O, int(seconds * rate_hz))
    live = LivePitch(REST_CMH2O, MVC_CMH2O * target_pct / 100.0, mapping)
    slot, coach = LivePressure(rate_hz), OneEuroFilter(rate_hz)
    tone, heard = [], []
    for v in noisy:
        slot.push(float(v))
        assert slot.value is not None
        tone.append(12 * math.log2(live.hz(slot.value)))
        heard.append(12 * math.log2(live.hz(coach(float(v)))))
    skip = int(rate_hz)  # the first second settles
    return float(np.std(tone[skip:])), float(np.std(heard[skip:]))


if __name__ == "__main__":
    main()
