"""The live tone: squeeze strength as pitch, with cues for reaching, holding and overshooting.

`ToneShaper` turns the coach's `Feedback` into `ToneParams` (pitch, loudness, cue) at each
control tick; `ToneSynth` turns those into phase-continuous samples inside the audio callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from appliance.events import Feedback

TWO_PI = 2.0 * math.pi
# The fundamental's phase wraps at 4π rather than 2π so that the 1.5x (fifth) partial,
# computed as sin(1.5·φ), stays continuous across the wrap: 1.5·4π is a multiple of 2π.
PHASE_WRAP = 4.0 * math.pi


class ToneCue(Enum):
    """What the tone tells the patient beyond the pitch itself."""

    QUIET = "quiet"  # no contraction asked for: silent (or very soft when always on)
    FOLLOW = "follow"  # plain tone whose pitch is the squeeze
    ON_TARGET = "on_target"  # target reached and held: a soft fifth above, slow gentle tremolo
    OVERSHOOT = "overshoot"  # squeezing well past the target: bright, fast warble
    LET_GO = "let_go"  # released before the coach said so: slow pulsing


@dataclass(frozen=True)
class CueTimbre:
    """How a cue sounds: weights of extra partials and the amplitude modulation."""

    fifth: float = 0.0  # weight of the partial at 1.5x the fundamental
    third_harmonic: float = 0.0  # weight of the partial at 3x (bright, buzzy)
    tremolo_depth: float = 0.0  # 0..1, fraction of the amplitude the LFO takes away
    tremolo_hz: float = 0.0


TIMBRES: dict[ToneCue, CueTimbre] = {
    ToneCue.QUIET: CueTimbre(),
    ToneCue.FOLLOW: CueTimbre(),
    # A fifth above sounds like a consonant chord: a reward, not an alarm.
    ToneCue.ON_TARGET: CueTimbre(fifth=0.45, tremolo_depth=0.2, tremolo_hz=5.0),
    # A third harmonic and a fast warble are unmistakably "too much" without being shrill.
    ToneCue.OVERSHOOT: CueTimbre(third_harmonic=0.5, tremolo_depth=0.5, tremolo_hz=12.0),
    # Slow pulsing, like a call to come back to the target.
    ToneCue.LET_GO: CueTimbre(tremolo_depth=0.9, tremolo_hz=3.0),
}


@dataclass(frozen=True)
class ToneParams:
    """One control tick's instruction to the synthesiser (swapped in whole, never mutated)."""

    freq_hz: float
    amplitude: float
    cue: ToneCue = ToneCue.QUIET


SILENT = ToneParams(freq_hz=220.0, amplitude=0.0, cue=ToneCue.QUIET)


@dataclass(frozen=True)
class ToneMapping:
    """Strength (as a fraction of the target) to pitch on a musical, logarithmic scale.

    At rest the tone sits at `rest_hz`; at the target it reaches `target_hz`; every equal
    step of strength is an equal number of semitones. Above the target the pitch keeps
    rising up to `max_ratio` times the target strength so an overshoot is heard.
    """

    rest_hz: float = 220.0
    target_hz: float = 880.0
    max_ratio: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.rest_hz < self.target_hz:
            raise ValueError(
                f"tone_rest_hz ({self.rest_hz}) must be positive and below "
                f"tone_target_hz ({self.target_hz})"
            )

    @property
    def semitones_to_target(self) -> float:
        return 12.0 * math.log2(self.target_hz / self.rest_hz)

    def ratio(self, strength_pct: float, target_pct: float) -> float:
        if target_pct <= 0:
            return 0.0
        return min(max(strength_pct / target_pct, 0.0), self.max_ratio)

    def pitch_hz(self, strength_pct: float, target_pct: float) -> float:
        """The pitch for `strength_pct` when the target is `target_pct` (both %MVC)."""
        r = self.ratio(strength_pct, target_pct)
        return self.rest_hz * (self.target_hz / self.rest_hz) ** r


@dataclass(frozen=True)
class CueThresholds:
    """Where the cues start and stop, as strength/target ratios (with hysteresis)."""

    target_enter: float = 0.93
    target_leave: float = 0.87
    overshoot_enter: float = 1.2
    overshoot_leave: float = 1.15
    let_go_below: float = 0.5  # after reaching the target, falling under this is letting go


class ToneShaper:
    """Decides pitch, loudness and cue from the coach's feedback, one control tick at a time.

    Runs in the coach's thread; its output (`ToneParams`) is handed to the mixer whole.
    """

    def __init__(
        self,
        mapping: ToneMapping | None = None,
        *,
        amplitude: float = 0.3,
        always_on: bool = False,
        always_on_amplitude: float = 0.08,
        thresholds: CueThresholds | None = None,
    ) -> None:
        self.mapping = mapping or ToneMapping()
        self.amplitude = amplitude
        self.always_on = always_on
        self.always_on_amplitude = always_on_amplitude
        self.thresholds = thresholds or CueThresholds()
        self._cue = ToneCue.QUIET
        self._reached = False  # target reached during the current active stretch
        self._last_target = 100.0

    @property
    def cue(self) -> ToneCue:
        return self._cue

    def update(self, fb: Feedback) -> ToneParams:
        if fb.target_pct > 0:
            self._last_target = fb.target_pct
        if not fb.active:
            self._cue = ToneCue.QUIET
            self._reached = False
            if not self.always_on:
                return ToneParams(self._quiet_freq(fb), 0.0, ToneCue.QUIET)
            freq = self.mapping.pitch_hz(fb.strength_pct, self._last_target)
            return ToneParams(freq, self.always_on_amplitude, ToneCue.QUIET)
        target = fb.target_pct if fb.target_pct > 0 else self._last_target
        r = fb.strength_pct / target
        self._cue = self._next_cue(r)
        return ToneParams(self.mapping.pitch_hz(fb.strength_pct, target), self.amplitude, self._cue)

    def _quiet_freq(self, fb: Feedback) -> float:
        # Keep the pitch where the squeeze is, so the tone fades in at the right note.
        return self.mapping.pitch_hz(fb.strength_pct, self._last_target)

    def _next_cue(self, r: float) -> ToneCue:
        th = self.thresholds
        cue = self._cue
        if r > th.overshoot_enter or (cue is ToneCue.OVERSHOOT and r > th.overshoot_leave):
            self._reached = True
            return ToneCue.OVERSHOOT
        if r >= th.target_enter or (
            cue in (ToneCue.ON_TARGET, ToneCue.OVERSHOOT) and r >= th.target_leave
        ):
            self._reached = True
            return ToneCue.ON_TARGET
        if self._reached and r < th.let_go_below:
            return ToneCue.LET_GO
        if cue is ToneCue.LET_GO and r < th.target_enter:
            return ToneCue.LET_GO
        return ToneCue.FOLLOW


class ToneSynth:
    """Phase-continuous synthesis of the tone, for use inside the audio callback.

    Every block glides pitch, loudness, partial weights and tremolo depth from where the
    previous block ended towards the newest `ToneParams`, so nothing jumps between
    samples. Pitch glides with a one-pole lag of `glide_ms`. All buffers are allocated
    up front (one set per block length seen); `render` allocates no arrays.
    """

    def __init__(self, sample_rate: int, max_block: int = 4096, glide_ms: float = 4.0) -> None:
        self.sample_rate = int(sample_rate)
        self.max_block = int(max_block)
        self.glide_ms = glide_ms
        self._params = SILENT
        self._freq = SILENT.freq_hz
        self._amp = 0.0
        self._fifth = 0.0
        self._third = 0.0
        self._trem_depth = 0.0
        self._trem_hz = 0.0
        self._phase = 0.0
        self._lfo_phase = 0.0
        self._ramps: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._ph = np.zeros(max_block)
        self._tmp = np.zeros(max_block)
        self._env = np.zeros(max_block)
        self._scratch = np.zeros(max_block)
        self.prepare(64)

    # -- control side (any thread) -------------------------------------------------------
    def set_params(self, params: ToneParams) -> None:
        """Hand over new parameters; an attribute swap, safe against the audio thread."""
        self._params = params

    @property
    def params(self) -> ToneParams:
        return self._params

    @property
    def current_freq_hz(self) -> float:
        return self._freq

    @property
    def current_amplitude(self) -> float:
        return self._amp

    def prepare(self, n: int) -> None:
        """Precompute the ramps for blocks of `n` samples (done outside the callback)."""
        if n in self._ramps:
            return
        k = np.arange(1, n + 1, dtype=np.float64)
        ramp = k / n  # 1/n .. 1: the value reached after each sample
        cum_ramp = np.cumsum(ramp)  # integral of the ramp, for the phase of a linear glide
        self._ramps[n] = (k, ramp, cum_ramp)

    def ramp(self, n: int) -> np.ndarray:
        """The precomputed 1/n..1 ramp for blocks of `n` samples (read-only)."""
        return self._ramps[n][1]

    # -- audio side ------------------------------------------------------------------------
    def render(self, out: np.ndarray, gain_start: float = 1.0, gain_end: float = 1.0) -> None:
        """Write the next `len(out)` samples of tone into `out` (float64 or float32).

        `gain_start`/`gain_end` scale the block linearly (the mixer's ducking and volume).
        """
        n = out.shape[0]
        if n > self.max_block:
            for start in range(0, n, self.max_block):
                stop = min(start + self.max_block, n)
                g0 = gain_start + (gain_end - gain_start) * start / n
                g1 = gain_start + (gain_end - gain_start) * stop / n
                self.render(out[start:stop], g0, g1)
            return
        ramps = self._ramps.get(n)
        if ramps is None:  # an unusual block length: one-off preparation
            self.prepare(n)
            ramps = self._ramps[n]
        k, ramp, cum_ramp = ramps
        p = self._params
        timbre = TIMBRES[p.cue]
        sr = self.sample_rate

        # Pitch: one-pole glide towards the new frequency, linear within the block.
        f0 = self._freq
        alpha = math.exp(-n / (self.glide_ms * 1e-3 * sr)) if self.glide_ms > 0 else 0.0
        f1 = p.freq_hz + (f0 - p.freq_hz) * alpha
        w0 = TWO_PI * f0 / sr
        w1 = TWO_PI * f1 / sr
        ph = self._ph[:n]
        tmp = self._tmp[:n]
        env = self._env[:n]
        # phase[k] = phase0 + w0·(k+1) + (w1-w0)·Σ ramp  (exact integral of a linear glide)
        np.multiply(k, w0, out=ph)
        np.multiply(cum_ramp, w1 - w0, out=tmp)
        ph += tmp
        ph += self._phase

        # Amplitude envelope: linear ramp from the previous block's end (times mixer gain).
        a0 = self._amp * gain_start
        a_target = p.amplitude
        a1 = self._amp + (a_target - self._amp) * (1.0 - alpha)
        a1g = a1 * gain_end

        fifth0, third0, depth0 = self._fifth, self._third, self._trem_depth
        fifth1 = fifth0 + (timbre.fifth - fifth0) * (1.0 - alpha)
        third1 = third0 + (timbre.third_harmonic - third0) * (1.0 - alpha)
        depth1 = depth0 + (timbre.tremolo_depth - depth0) * (1.0 - alpha)

        np.sin(ph, out=out)
        if fifth0 > 1e-6 or fifth1 > 1e-6:
            self._add_partial(out, ph, 1.5, fifth0, fifth1, ramp, tmp, env)
        if third0 > 1e-6 or third1 > 1e-6:
            self._add_partial(out, ph, 3.0, third0, third1, ramp, tmp, env)

        # env = a0 + (a1g - a0)·ramp
        np.multiply(ramp, a1g - a0, out=env)
        env += a0
        if depth0 > 1e-6 or depth1 > 1e-6:
            trem_hz = timbre.tremolo_hz if timbre.tremolo_depth > 0 else self._trem_hz
            lw = TWO_PI * trem_hz / sr
            # tremolo gain = 1 - depth·(1 - cos(lfo))/2, depth ramping across the block
            np.multiply(k, lw, out=tmp)
            tmp += self._lfo_phase
            np.cos(tmp, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= 0.5  # the LFO, 0..1
            depth = self._scratch[:n]
            np.multiply(ramp, depth1 - depth0, out=depth)
            depth += depth0
            depth *= tmp
            np.subtract(1.0, depth, out=depth)
            env *= depth
            self._lfo_phase = (self._lfo_phase + lw * n) % TWO_PI
            self._trem_hz = trem_hz
        out *= env

        self._phase = (self._phase + w0 * n + (w1 - w0) * cum_ramp[-1]) % PHASE_WRAP
        self._freq = f1
        self._amp = a1
        self._fifth, self._third, self._trem_depth = fifth1, third1, depth1

    @staticmethod
    def _add_partial(
        out: np.ndarray,
        ph: np.ndarray,
        multiple: float,
        w0: float,
        w1: float,
        ramp: np.ndarray,
        tmp: np.ndarray,
        env: np.ndarray,
    ) -> None:
        np.multiply(ph, multiple, out=tmp)
        np.sin(tmp, out=tmp)
        np.multiply(ramp, w1 - w0, out=env)
        env += w0
        tmp *= env
        out += tmp
