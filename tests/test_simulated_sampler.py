"""The sensor side in simulated time: samples are taken as the clock moves, the tone hears
each one at its own time, and the control loop still reads every sample once, in order."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.clock import SimClock
from appliance.coach.plan import Calibration
from appliance.device.edges import SimulatedSpeaker
from appliance.events import Feedback
from appliance.sensor.base import ProbeStatus
from appliance.sensor.live import LivePressure, SimulatedSampler, publish_live
from appliance.voice.audio import Mixer
from appliance.voice.output import AudioSink
from appliance.voice.tone import ToneMapping, ToneShaper

RATE_HZ = 100.0
REST, SQUEEZE = 20.0, 40.0  # cmH2O: the rest pitch, and the target's at a 50 % target of a 40 cmH2O MVC


class StepProbe:
    """A probe (physically absent here) whose pressure steps from rest to a squeeze at `step_at`."""

    sample_rate_hz = RATE_HZ
    status = ProbeStatus.OK

    def __init__(self, step_at: float = 1e9) -> None:
        self.step_at = step_at
        self._k = 0
        self.closed = False

    def read_until(self, t: float) -> tuple[list[float], list[float]]:
        times, values = [], []
        while (self._k + 1) / RATE_HZ <= t + 1e-9:
            self._k += 1
            ts = self._k / RATE_HZ
            times.append(ts)
            values.append(SQUEEZE if ts >= self.step_at else REST + 0.01 * self._k)
        return times, values

    def close(self) -> None:
        self.closed = True


@settings(max_examples=60, deadline=None)
@example([(0.29999999999999993, False)])  # the floor's own read takes the 0.3 s sample at this time
@given(st.lists(st.tuples(st.floats(0.0, 0.3), st.booleans()), min_size=1, max_size=40))
def test_the_control_loop_reads_every_sample_once_however_the_clock_moves(steps):
    clock = SimClock()
    slot = LivePressure(RATE_HZ)
    probe = StepProbe()
    source = publish_live(probe, slot, clock)
    assert isinstance(source, SimulatedSampler) and slot.keeps_time
    reference = StepProbe()
    got, want, now = [], [], 0.0
    for dt, loop_reads in steps:
        now += dt
        clock.sleep_until(now)  # the sampler takes what is due; the loop may not read yet
        if loop_reads:
            times, values = source.read_until(now)
            got.extend(zip(times, values, strict=True))
            want.extend(zip(*reference.read_until(now), strict=True))
            assert slot.next_time() is None or slot.next_time() > now  # all published by the loop's time
    times, values = source.read_until(now)
    got.extend(zip(times, values, strict=True))
    want.extend(zip(*reference.read_until(now), strict=True))
    assert got == want
    source.close()
    taken = probe._k
    clock.sleep_until(now + 1.0)  # closed: it takes nothing more
    assert probe.closed and probe._k == taken


def _pitch_880_onset(path: Path, after_s: float) -> float:
    """When the 880 Hz partial (the target's pitch) first reaches half its final level."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0
    win, hop = 256, 32
    t = np.arange(win) / rate
    probe = np.hanning(win) * np.exp(-2j * np.pi * 880.0 * t)
    starts = np.arange(int(after_s * rate), x.shape[0] - win, hop)
    amp = np.array([abs(np.dot(x[s : s + win], probe)) for s in starts])
    final = float(np.median(amp[-40:]))
    first = int(np.argmax(amp > 0.5 * final))
    return float((starts[first] + win / 2) / rate)


def test_the_simulated_tone_hears_a_squeeze_at_its_sample_not_at_the_next_tick(tmp_path):
    """The control loop ticks every 100 ms here; the squeeze starts 30 ms after a tick. On the
    device the sampler thread publishes it at once and the next audio block plays it: the
    simulated speaker must too (before, the WAV waited for the loop's next read)."""
    clock = SimClock()
    mixer = Mixer(22050)
    speaker = SimulatedSpeaker(mixer, clock, 128, tmp_path / "tone.wav")
    sink = AudioSink(mixer, None, ToneShaper(ToneMapping(220.0, 880.0)))  # type: ignore[arg-type]  # the tone only
    slot = sink.follow_live(RATE_HZ, lambda: Calibration(REST, SQUEEZE))
    step_at = 1.03
    source = publish_live(StepProbe(step_at), slot, clock)
    tick, t = 0.1, 0.0
    while t < 2.0 - 1e-9:
        t = round(t + tick, 9)
        clock.sleep_until(t)
        source.read_until(t)
        sink.feedback(Feedback(t, 10.0, 50.0, True))  # the coach's strength stays low: one cue, one timbre
    speaker.stop()
    onset = _pitch_880_onset(tmp_path / "tone.wav", after_s=0.5)
    assert step_at <= onset < step_at + 0.03, onset  # not at the 1.1 s tick


def test_a_source_that_publishes_by_itself_keeps_doing_so_on_a_simulated_clock():
    """A probe that samples before every audio block and publishes at once (bench/latency.py's,
    as the device's sampler thread does) is not read ahead instead: its slot stays immediate."""

    class PublishingProbe(StepProbe):
        def publish_live(self, slot: LivePressure) -> bool:
            self.slot = slot
            return True

    clock = SimClock()
    slot = LivePressure(RATE_HZ)
    probe = PublishingProbe()
    assert publish_live(probe, slot, clock) is probe
    assert not slot.keeps_time and probe.slot is slot
    slot.push(25.0)
    assert slot.value == 25.0  # published at once, not held for the clock
