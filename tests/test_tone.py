"""The live tone, judged by ear-by-analysis: pitch, smoothness and cues in rendered samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.events import Feedback
from appliance.voice.tone import (
    TIMBRES,
    ToneCue,
    ToneMapping,
    ToneParams,
    ToneShaper,
    ToneSynth,
)

SR = 22050
BLOCK = 64
TICK_S = 0.01  # the coach's control tick in these tests


def measure_pitch(x: np.ndarray, sr: int = SR) -> float:
    """Fundamental by FFT peak with parabolic interpolation on the log spectrum."""
    w = x * np.hanning(x.shape[0])
    n = 1 << (int(math.ceil(math.log2(x.shape[0]))) + 2)  # zero-pad for resolution
    spec = np.abs(np.fft.rfft(w, n))
    k = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    delta = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + delta) * sr / n


def band_amplitude(x: np.ndarray, freq: float, sr: int = SR) -> float:
    """Amplitude of the component at `freq` (a lock-in: correlate with a complex tone)."""
    t = np.arange(x.shape[0]) / sr
    w = np.hanning(x.shape[0])
    z = np.sum(x * w * np.exp(-2j * np.pi * freq * t))
    return float(2 * abs(z) / np.sum(w))


def render_feedback(shaper: ToneShaper, strengths, target=60.0, active=True, synth=None):
    """Render the tone for a strength trajectory given per control tick; returns samples."""
    synth = synth or ToneSynth(SR)
    per_tick = int(round(TICK_S * SR))
    out = []
    buf = np.zeros(BLOCK)
    pending = 0
    for i, s in enumerate(strengths):
        act = active(i) if callable(active) else active
        synth.set_params(shaper.update(Feedback(i * TICK_S, float(s), target, act)))
        pending += per_tick
        while pending >= BLOCK:
            synth.render(buf)
            out.append(buf.copy())
            pending -= BLOCK
    return np.concatenate(out), synth


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.3, 1.5])
def test_pitch_follows_the_semitone_mapping_within_one_percent(fraction):
    mapping = ToneMapping(220.0, 880.0)
    shaper = ToneShaper(mapping)
    target = 60.0
    x, _ = render_feedback(shaper, [fraction * target] * 60, target=target)
    steady = x[int(0.1 * SR) :]  # past the glide
    expected = 220.0 * 4.0**fraction  # two octaves per unit of strength/target
    assert measure_pitch(steady) == pytest.approx(expected, rel=0.01)


def test_equal_strength_steps_are_equal_musical_intervals():
    mapping = ToneMapping(200.0, 800.0)
    semis = [12 * math.log2(mapping.pitch_hz(s, 50.0) / 200.0) for s in (0, 10, 20, 30, 40, 50)]
    steps = np.diff(semis)
    assert np.allclose(steps, steps[0]) and steps[0] == pytest.approx(24 / 5)


def test_pitch_stops_rising_at_the_overshoot_ceiling():
    mapping = ToneMapping(220.0, 880.0, max_ratio=1.5)
    assert mapping.pitch_hz(500.0, 50.0) == pytest.approx(mapping.pitch_hz(75.0, 50.0))
    assert mapping.pitch_hz(-20.0, 50.0) == pytest.approx(220.0)


def test_rest_pitch_at_or_above_target_pitch_is_refused():
    with pytest.raises(ValueError, match="tone_rest_hz"):
        ToneMapping(900.0, 880.0)


def _max_slope_bound(x_amp: float, f_max: float, extra: float = 0.0) -> float:
    # |d/dn a·sin(φ)| ≤ a·ω per sample; `extra` covers the amplitude's own ramp.
    return x_amp * 2 * math.pi * f_max / SR + extra


def test_pitch_sweep_has_no_jump_larger_than_the_tones_own_slope():
    shaper = ToneShaper(ToneMapping(220.0, 880.0), amplitude=0.3)
    target = 60.0
    # 0 → 85 % of the target and back, in jerky 10 ms steps (a real probe is noisy).
    rng = np.random.default_rng(1)
    up = np.linspace(0, 0.85 * target, 80)
    path = np.concatenate([up, up[::-1]]) + rng.normal(0, 1.5, 160)
    path = np.clip(path, 0, 0.87 * target)  # stay below the target cue: plain tone only
    x, _ = render_feedback(shaper, path, target=target)
    f_max = 220.0 * 4.0 ** (0.87 + 0.01)
    bound = _max_slope_bound(0.3, f_max, extra=0.3 / BLOCK)
    jumps = np.abs(np.diff(x))
    assert jumps.max() <= bound
    # and the bound is tight enough to catch a click: the tone does use most of it
    assert jumps.max() > 0.4 * bound


def test_switching_the_tone_on_and_off_does_not_click():
    shaper = ToneShaper(amplitude=0.3)
    active = lambda i: 20 <= i < 60  # noqa: E731 - a contraction asked for 0.2–0.6 s
    x, _ = render_feedback(shaper, [30.0] * 80, target=60.0, active=active)
    f = 220.0 * 4.0**0.5
    assert np.abs(np.diff(x)).max() <= _max_slope_bound(0.3, f, extra=0.3 / BLOCK)
    assert np.abs(x[: int(0.19 * SR)]).max() == 0.0  # silent before the contraction
    assert np.abs(x[int(0.7 * SR) :]).max() < 1e-4  # and after it


def test_phase_stays_continuous_over_hours_of_wrapping():
    synth = ToneSynth(SR)
    synth.set_params(ToneParams(987.0, 0.3, ToneCue.ON_TARGET))
    buf = np.zeros(BLOCK)
    prev = None
    worst = 0.0
    for _ in range(20000):  # ~58 s, thousands of phase wraps
        synth.render(buf)
        if prev is not None:
            worst = max(worst, abs(buf[0] - prev))
        prev = buf[-1]
    # fundamental + fifth (0.45) at full tremolo: the slope of a sum is at most the sum
    bound = 0.3 * (1 + 0.45 * 1.5) * 2 * math.pi * 987.0 / SR * 1.05
    assert worst <= bound


def _cue_windows(x: np.ndarray, window_s: float = 0.05):
    n = int(window_s * SR)
    for start in range(0, x.shape[0] - n, n):
        seg = x[start : start + n]
        yield start / SR, (start + n) / SR, seg


def test_target_cue_sounds_exactly_while_the_target_is_held():
    target = 60.0
    shaper = ToneShaper(ToneMapping(220.0, 880.0), amplitude=0.3)
    # rise over 1 s, hold at the target 1.0–2.5 s, fall back over 0.5 s
    rise = np.linspace(0, 0.8 * target, 100)
    hold = np.full(150, target)
    fall = np.linspace(0.8 * target, 0.0, 50)
    x, _ = render_feedback(shaper, np.concatenate([rise, hold, fall]), target=target)
    held_from, held_to = 1.0, 2.5
    for t0, t1, seg in _cue_windows(x):
        f0 = measure_pitch(seg)
        fifth = band_amplitude(seg, 1.5 * f0) / max(band_amplitude(seg, f0), 1e-9)
        if held_from + 0.02 <= t0 and t1 <= held_to:
            assert fifth > 0.3, f"no target cue at {t0:.2f}-{t1:.2f} s"
        elif t1 <= held_from or t0 >= held_to + 0.02:
            assert fifth < 0.02, f"target cue outside the hold at {t0:.2f}-{t1:.2f} s"


def test_overshoot_sounds_bright_and_warbling():
    shaper = ToneShaper(amplitude=0.3)
    x, _ = render_feedback(shaper, [60.0 * 1.35] * 100, target=60.0)
    seg = x[int(0.2 * SR) :]
    f0 = 220.0 * 4.0**1.35
    assert measure_pitch(seg) == pytest.approx(f0, rel=0.01)
    assert band_amplitude(seg, 3 * f0) / band_amplitude(seg, f0) > 0.3
    assert band_amplitude(seg, 1.5 * f0) / band_amplitude(seg, f0) < 0.02
    env = _envelope(seg)
    assert env.min() < 0.7 * env.max()  # the warble takes a clear bite out of the level
    assert _modulation_hz(env) == pytest.approx(TIMBRES[ToneCue.OVERSHOOT].tremolo_hz, abs=1.0)


def test_letting_go_before_the_release_pulses_slowly():
    target = 60.0
    shaper = ToneShaper(amplitude=0.3)
    path = [target] * 50 + [0.2 * target] * 150  # reached the target, then dropped early
    x, _ = render_feedback(shaper, path, target=target)
    assert shaper.cue is ToneCue.LET_GO
    env = _envelope(x[int(0.8 * SR) :])
    assert env.min() < 0.2 * env.max()
    assert _modulation_hz(env) == pytest.approx(TIMBRES[ToneCue.LET_GO].tremolo_hz, abs=0.5)


def test_no_let_go_cue_for_a_patient_who_never_reached_the_target():
    shaper = ToneShaper()
    for s in [10, 20, 30, 10, 0]:
        shaper.update(Feedback(0.0, s, 60.0, True))
    assert shaper.cue is ToneCue.FOLLOW


def test_cue_does_not_flicker_on_the_target_edge():
    shaper = ToneShaper()
    cues = [shaper.update(Feedback(0.0, 60.0 * r, 60.0, True)).cue for r in (0.95, 0.9, 0.92, 0.89)]
    assert cues == [ToneCue.ON_TARGET] * 4


def test_silent_when_no_contraction_is_asked_for():
    shaper = ToneShaper()
    assert shaper.update(Feedback(0.0, 40.0, 60.0, False)).amplitude == 0.0


def test_always_on_is_soft_and_still_follows_the_squeeze():
    shaper = ToneShaper(amplitude=0.3, always_on=True, always_on_amplitude=0.05)
    shaper.update(Feedback(0.0, 10.0, 60.0, True))
    p = shaper.update(Feedback(0.01, 30.0, 0.0, False))
    assert 0 < p.amplitude <= 0.05
    assert p.freq_hz == pytest.approx(440.0)  # 30 of the last target 60: one octave up


def _envelope(x: np.ndarray, hop: int = 64) -> np.ndarray:
    n = x.shape[0] // hop
    return np.sqrt(2) * np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))


def _modulation_hz(env: np.ndarray, hop: int = 64) -> float:
    e = env - env.mean()
    spec = np.abs(np.fft.rfft(e * np.hanning(e.shape[0]), 8 * e.shape[0]))
    k = int(np.argmax(spec[1:])) + 1
    return k * (SR / hop) / (8 * e.shape[0])


def test_the_tone_does_not_depend_on_how_the_stream_is_cut_into_blocks():
    """A WAV rendered in big blocks must equal the speaker's 64-sample callbacks."""
    changes = [  # (sample where the coach's tick lands, params from then on)
        (0, ToneParams(300.0, 0.3, ToneCue.FOLLOW)),
        (2205, ToneParams(700.0, 0.3, ToneCue.ON_TARGET)),
        (4410, ToneParams(1000.0, 0.3, ToneCue.OVERSHOOT)),
        (6615, ToneParams(250.0, 0.3, ToneCue.LET_GO)),
        (8820, ToneParams(250.0, 0.0, ToneCue.QUIET)),
    ]
    total = 11025

    def run(block):
        synth = ToneSynth(SR)
        x = np.zeros(total)
        bounds = [c[0] for c in changes[1:]] + [total]
        pos = 0
        for (_start, params), stop in zip(changes, bounds, strict=True):
            synth.set_params(params)
            while pos < stop:
                n = min(block, stop - pos)
                synth.render(x[pos : pos + n])
                pos += n
        return x

    small, large = run(64), run(4096)
    assert np.abs(small - large).max() < 1e-5  # under a 16-bit step (3e-5): inaudible, unstorable
    assert np.abs(small).max() > 0.25  # and there was a tone to compare


class Slot:
    """The live pressure as the sensor side leaves it (appliance.sensor.live.LivePressure)."""

    def __init__(self, value: float | None = None) -> None:
        self.value = value
        self.count = 0


def test_the_pitch_follows_the_squeeze_within_a_block_without_waiting_for_the_coach():
    mapping = ToneMapping(220.0, 880.0)
    shaper = ToneShaper(mapping)
    synth, slot = ToneSynth(SR), Slot(20.0)  # rest 20, MVC 40 cmH2O, target 50 %: 20 cmH2O above rest
    synth.slot = slot
    # One coach tick: the squeeze is at 30 % of the target; no other tick follows.
    synth.set_params(shaper.update(Feedback(0.0, 15.0, 50.0, True), calibration=(20.0, 40.0)))
    x = np.zeros(BLOCK * 40)
    for i in range(0, x.shape[0], BLOCK):
        synth.render(x[i : i + BLOCK])
    assert measure_pitch(x[BLOCK * 10 :]) == pytest.approx(220.0, rel=0.01)  # the slot: at rest
    slot.value = 20.0 + 0.5 * 20.0  # the sampler: half the target, between two ticks
    synth.render(x[:BLOCK])  # the very next block moves: within its 3 ms, 90 % of the octave
    assert 12 * math.log2(synth.current_freq_hz / 220.0) > 0.9 * 12
    synth.render(x[:BLOCK])
    assert synth.current_freq_hz == pytest.approx(440.0, rel=0.01)
    for i in range(0, x.shape[0], BLOCK):
        synth.render(x[i : i + BLOCK])
    assert measure_pitch(x) == pytest.approx(440.0, rel=0.01)


def test_the_cue_stays_the_coachs_while_the_pitch_is_live():
    shaper = ToneShaper(ToneMapping(220.0, 880.0))
    params = shaper.update(Feedback(0.0, 48.0, 50.0, True), calibration=(20.0, 40.0))
    assert params.cue is ToneCue.ON_TARGET and params.live is not None
    assert params.live.hz(20.0 + 40.0 * 0.5) == pytest.approx(880.0)  # rest + MVC·target: the target pitch
    quiet = shaper.update(Feedback(0.01, 48.0, 50.0, False), calibration=(20.0, 40.0))
    assert quiet.amplitude == 0.0 and quiet.live is None  # nothing asked: silent, the coach says so


def test_a_stalled_sampler_hands_the_pitch_back_to_the_coachs_ticks():
    from appliance.coach.plan import Calibration
    from appliance.device.wiring import CONTROL_TICK_S
    from appliance.voice.audio import Mixer
    from appliance.voice.output import LIVE_STALE_S, AudioSink

    mixer = Mixer(SR)
    sink = AudioSink(mixer, None, ToneShaper())  # type: ignore[arg-type]  # the tone only
    slot = sink.follow_live(200.0, lambda: Calibration(20.0, 40.0))
    slot.push(30.0)
    sink.feedback(Feedback(0.0, 25.0, 50.0, True))
    assert mixer.tone.params.live is not None
    # Counted in seconds, whatever the tick: 100 ms at the 5 ms stim tick and the 20 ms one.
    for tick in (0.005, CONTROL_TICK_S):
        t0 = mixer_t = 0.0
        slot.push(30.0)
        sink.feedback(Feedback(t0, 25.0, 50.0, True))
        while mixer_t + tick <= LIVE_STALE_S:
            mixer_t += tick
            sink.feedback(Feedback(mixer_t, 25.0, 50.0, True))
            assert mixer.tone.params.live is not None  # within 100 ms: still the live pitch
        sink.feedback(Feedback(LIVE_STALE_S + tick, 25.0, 50.0, True))
        assert mixer.tone.params.live is None  # no new sample for 100 ms: the tick's pitch again
    slot.push(30.0)
    sink.feedback(Feedback(1.0, 25.0, 50.0, True))
    assert mixer.tone.params.live is not None
