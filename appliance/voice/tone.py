"""The live tone: squeeze strength as pitch, with cues for reaching, holding and overshooting.

`ToneShaper` turns the coach's `Feedback` into `ToneParams` (pitch, loudness, cue) at each
control tick; `ToneSynth` turns those into phase-continuous samples inside the audio callback.

The coach decides what the tone means (whether it sounds, the target, the cue); the pitch
itself need not wait for the coach. When the session's wiring gives the synth a live
pressure slot (`appliance.sensor.live.LivePressure`, written by the sensor side at every
sample) and the coach's `ToneParams` carry a `LivePitch` (the calibration and the target in
cmH2O), the audio callback reads the newest smoothed pressure at every block and the pitch
follows it within a block, between control ticks (bench/latency.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import chain
from typing import NamedTuple, Protocol

import numpy as np

from appliance.events import Feedback

TWO_PI = 2.0 * math.pi
# The fundamental's phase wraps at 4π rather than 2π so that the 1.5x (fifth) partial,
# computed as sin(1.5·φ), stays continuous across the wrap: 1.5·4π is a multiple of 2π.
PHASE_WRAP = 4.0 * math.pi
# Blocks up to this long (the sound card's) take their phase to float32 for the sine as it
# is (at most 4π + 64·ω, under 50 rad: off by < 4e-6 rad); longer ones wrap it first.
SHORT_BLOCK = 64


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
class LivePitch:
    """What the coach's target means in pressure: the pitch of a probe reading, between ticks.

    `rest_cmh2o` is the patient's rest, `target_cmh2o` the rise above rest that is the
    target (MVC · target %). Same semitone scale as `ToneMapping.pitch_hz`.
    """

    rest_cmh2o: float
    target_cmh2o: float
    mapping: ToneMapping

    def hz(self, cmh2o: float) -> float:
        m = self.mapping
        r = min(max((cmh2o - self.rest_cmh2o) / self.target_cmh2o, 0.0), m.max_ratio)
        return m.rest_hz * (m.target_hz / m.rest_hz) ** r


class ToneParams(NamedTuple):
    """One control tick's instruction to the synthesiser (swapped in whole, never mutated).

    With `live`, the pitch comes from the synth's live pressure slot (the newest sample),
    and `freq_hz` (the pitch at the tick) is used only while the slot has nothing. A named
    tuple, not a frozen dataclass: one is made at every control tick, and a tuple is made
    in half the time.
    """

    freq_hz: float
    amplitude: float
    cue: ToneCue = ToneCue.QUIET
    live: LivePitch | None = None


class PressureSlot(Protocol):
    """The newest smoothed probe pressure (cmH2O), None before the first sample."""

    @property
    def value(self) -> float | None: ...


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
                f"tone_rest_hz ({self.rest_hz}) must be positive and below tone_target_hz ({self.target_hz})"
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
        self._live: LivePitch | None = None  # the last one, kept while calibration and target stay

    @property
    def cue(self) -> ToneCue:
        return self._cue

    def update(self, fb: Feedback, calibration: tuple[float, float] | None = None) -> ToneParams:
        """The tone for this tick. With `calibration` (rest, MVC in cmH2O) an active tone's
        pitch follows the live pressure between ticks (`LivePitch`); the cue stays the coach's."""
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
        live = None
        if calibration is not None and calibration[1] > 0:
            live = self._live
            target_cmh2o = calibration[1] * target / 100.0
            if live is None or live.rest_cmh2o != calibration[0] or live.target_cmh2o != target_cmh2o:
                live = self._live = LivePitch(calibration[0], target_cmh2o, self.mapping)
        return ToneParams(self.mapping.pitch_hz(fb.strength_pct, target), self.amplitude, self._cue, live)

    def _quiet_freq(self, fb: Feedback) -> float:
        # Keep the pitch where the squeeze is, so the tone fades in at the right note.
        return self.mapping.pitch_hz(fb.strength_pct, self._last_target)

    def _next_cue(self, r: float) -> ToneCue:
        th = self.thresholds
        cue = self._cue
        if r > th.overshoot_enter or (cue is ToneCue.OVERSHOOT and r > th.overshoot_leave):
            self._reached = True
            return ToneCue.OVERSHOOT
        if r >= th.target_enter or (cue in (ToneCue.ON_TARGET, ToneCue.OVERSHOOT) and r >= th.target_leave):
            self._reached = True
            return ToneCue.ON_TARGET
        if self._reached and r < th.let_go_below:
            return ToneCue.LET_GO
        if cue is ToneCue.LET_GO and r < th.target_enter:
            return ToneCue.LET_GO
        return ToneCue.FOLLOW


class ToneSynth:
    """Phase-continuous synthesis of the tone, for use inside the audio callback.

    Loudness, partial weights and tremolo depth glide towards the newest `ToneParams`
    with a per-sample one-pole lag (`glide_ms`), so nothing clicks; the pitch glides with
    its own, shorter lag (`pitch_glide_ms`): just enough to smooth the sensor's 5 ms steps,
    not so much that the squeeze is heard late. The output does not depend on how the
    stream is cut into blocks: a WAV rendered in large blocks equals the speaker's
    64-sample callbacks. All tables are computed up front; `render` allocates no arrays.

    `slot` (set by the session's wiring, any object with a `value`) is the live pressure:
    while the params carry a `LivePitch`, each block's pitch is read from it.
    """

    def __init__(self, sample_rate: int, max_block: int = 4096, glide_ms: float = 4.0,
                 pitch_glide_ms: float = 1.0) -> None:
        self.sample_rate = int(sample_rate)
        self.max_block = int(max_block)
        self.glide_ms = glide_ms
        self.pitch_glide_ms = pitch_glide_ms
        self.slot: PressureSlot | None = None
        self._params = SILENT
        self._freq = SILENT.freq_hz
        self._amp = 0.0
        self._fifth = 0.0
        self._third = 0.0
        self._trem_depth = 0.0
        self._trem_hz = 0.0
        self._phase = 0.0
        self._lfo_phase = 0.0
        self._asleep = True  # silent since the last sounding block: see `_wake`
        self._hz_of: tuple = (None, None, 0.0)  # (live pitch, pressure, its pitch): the last one
        self._timbre_of: tuple = (None, TIMBRES[ToneCue.QUIET])
        k = np.arange(1, self.max_block + 1, dtype=np.float64)
        self._k = k  # 1..max_block
        self._lag = _lag_table(k, glide_ms, self.sample_rate)  # what is left of a step after k samples
        self._plag = _lag_table(k, pitch_glide_ms, self.sample_rate)  # the same for the pitch
        self._plag_sum = np.cumsum(self._plag)  # its running sum: the phase of the glide
        # The same tables as Python floats (the same numbers), for `plan_run`'s scalar steps.
        self._lag_f: list[float] = self._lag.tolist()
        self._plag_f: list[float] = self._plag.tolist()
        self._plag_sum_f: list[float] = self._plag_sum.tolist()
        self._ph = np.zeros(self.max_block)
        self._tmp = np.zeros(self.max_block)
        self._env = np.zeros(self.max_block)
        self._scratch = np.zeros(self.max_block)
        self._x32 = np.zeros(self.max_block, dtype=np.float32)  # see _sin32

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

    def is_silent(self) -> bool:
        """Nothing sounds now and nothing is asked to (the mixer may skip the tone)."""
        return self._amp == 0.0 and self._params.amplitude == 0.0

    def target_hz(self, params: ToneParams) -> float:
        """The pitch asked for now: from the live pressure when the params say so."""
        live, slot = params.live, self.slot
        if live is not None and slot is not None:
            value = slot.value
            if value is not None:
                if value != self._hz_of[1] or live is not self._hz_of[0]:  # a new sample (not every block)
                    self._hz_of = (live, value, live.hz(value))
                return self._hz_of[2]
        return params.freq_hz

    def _timbre(self, params: ToneParams) -> CueTimbre:
        """`TIMBRES[params.cue]`, looked up once per params (an Enum's hash is Python code)."""
        if params is not self._timbre_of[0]:
            self._timbre_of = (params, TIMBRES[params.cue])
        return self._timbre_of[1]

    def skip_silent(self, n: int) -> None:
        """Let `n` silent samples pass without rendering them: the tone sleeps (nothing moves)."""
        self._asleep = True

    def _wake(self, hz: float, timbre: CueTimbre) -> None:
        """The first sounding block after silence: pitch and timbre start where they are asked
        to be (the loudness still fades in from nothing, so nothing clicks); the phase goes on
        from where it stopped. Silence itself costs nothing, block after block."""
        self._asleep = False
        self._freq = hz
        self._fifth, self._third = timbre.fifth, timbre.third_harmonic
        self._trem_depth = timbre.tremolo_depth
        if timbre.tremolo_depth > 0:
            self._trem_hz = timbre.tremolo_hz

    def prepare(self, n: int) -> None:
        """Nothing to precompute per block length any more; kept for the mixer's API."""
        return None

    def ramp_into(self, out: np.ndarray, start: float, end: float) -> None:
        """`out[k] = start + (end - start)·(k+1)/n`: a linear ramp reaching `end` at the last sample."""
        n = out.shape[0]
        np.multiply(self._k[:n], (end - start) / n, out=out)
        out += start

    def _glide_into(self, out: np.ndarray, start: float, target: float) -> None:
        """`out[k]` = the one-pole lag from `start` towards `target` after k+1 samples."""
        n = out.shape[0]
        np.multiply(self._lag[:n], start - target, out=out)
        out += target

    # -- audio side ------------------------------------------------------------------------
    def render(self, out: np.ndarray, gain_start: float = 1.0, gain_end: float = 1.0) -> None:
        """Write the next `len(out)` samples of tone into `out` (float64).

        `gain_start`/`gain_end` scale the block linearly (the mixer's ducking and volume).

        Called 344 times a second at the device's 64-sample blocks, where numpy's per-call
        cost outweighs the arithmetic: a weight, loudness or tremolo depth that has settled
        is a scalar, not a glide table (the same numbers: the glide of a settled value is
        that value exactly), so a steady hold costs about half the calls of a changing one.
        """
        n = out.shape[0]
        if n > self.max_block:
            for start in range(0, n, self.max_block):
                stop = min(start + self.max_block, n)
                g0 = gain_start + (gain_end - gain_start) * start / n
                g1 = gain_start + (gain_end - gain_start) * stop / n
                self.render(out[start:stop], g0, g1)
            return
        if n == 0:
            return
        p = self._params
        amp, amp_t = self._amp, p.amplitude
        # Most of a session no contraction is asked for: silence costs one fill.
        if amp == 0.0 and amp_t == 0.0:
            out.fill(0.0)
            self._asleep = True
            return
        timbre_of = self._timbre_of  # `_timbre(p)` and `target_hz(p)` without the calls when nothing changed
        timbre = timbre_of[1] if timbre_of[0] is p else self._timbre(p)
        sr = self.sample_rate
        lag_end = self._lag[n - 1]
        hz = p.freq_hz if p.live is None else self.target_hz(p)
        if self._asleep:
            self._wake(hz, timbre)
        w0 = TWO_PI * self._freq / sr
        wt = TWO_PI * hz / sr

        ph = self._ph[:n]
        tmp = self._tmp[:n]
        k = self._k[:n]
        # Phase of a one-pole pitch glide, exactly: φ[k] = φ0 + ωt·(k+1) + (ω0-ωt)·Σlag
        np.multiply(k, wt, out=ph)
        if w0 != wt:
            np.multiply(self._plag_sum[:n], w0 - wt, out=tmp)
            ph += tmp
        ph += self._phase
        if n > SHORT_BLOCK:  # the phase runs far past 4π within a long block: wrap it for float32
            wraps = self._scratch[:n]
            np.multiply(ph, 1.0 / PHASE_WRAP, out=wraps)
            np.floor(wraps, out=wraps)
            wraps *= PHASE_WRAP
            ph -= wraps
        _sin32(ph, out, self._x32[:n])

        fifth0, third0, depth0 = self._fifth, self._third, self._trem_depth
        if fifth0 > 1e-6 or timbre.fifth > 0:
            self._add_partial(out, ph, 1.5, fifth0, timbre.fifth, tmp)
        if third0 > 1e-6 or timbre.third_harmonic > 0:
            self._add_partial(out, ph, 3.0, third0, timbre.third_harmonic, tmp)

        tremolo = depth0 > 1e-6 or timbre.tremolo_depth > 0
        steady = amp == amp_t and gain_start == gain_end
        if steady and not tremolo:
            out *= amp * gain_start  # steady loudness: one multiply
            self._advance(n, w0, wt, timbre, lag_end)
            return
        env = self._env[:n]
        if tremolo:
            # The LFO's dip, 1 - h·(1 - cos(LFO phase)) with h half the depth: 0..1 deep.
            trem_hz = timbre.tremolo_hz if timbre.tremolo_depth > 0 else self._trem_hz
            lw = TWO_PI * trem_hz / sr
            np.multiply(k, lw, out=tmp)
            tmp += self._lfo_phase
            _cos32(tmp, tmp, self._x32[:n])
            np.subtract(1.0, tmp, out=tmp)
            if depth0 == timbre.tremolo_depth:
                tmp *= 0.5 * depth0
            else:
                depth = self._scratch[:n]
                self._glide_into(depth, 0.5 * depth0, 0.5 * timbre.tremolo_depth)
                tmp *= depth
            np.subtract(1.0, tmp, out=tmp)
            self._lfo_phase = (self._lfo_phase + lw * n) % TWO_PI
            self._trem_hz = trem_hz
            if steady:
                tmp *= amp * gain_start
                out *= tmp
                self._advance(n, w0, wt, timbre, lag_end)
                return
        self._glide_into(env, amp, amp_t)
        if gain_start != gain_end:
            g = self._scratch[:n]
            self.ramp_into(g, gain_start, gain_end)
            env *= g
        elif gain_start != 1.0:
            env *= gain_start
        if tremolo:
            env *= tmp
        out *= env
        self._advance(n, w0, wt, timbre, lag_end)

    def _advance(self, n: int, w0: float, wt: float, timbre: CueTimbre, lag_end: float) -> None:
        """Move the glides on by `n` samples; snap to the target once inaudibly close."""
        # Called for every block of the audio callback: what has settled is left alone.
        p = self._params
        if w0 == wt:
            self._phase = (self._phase + wt * n) % PHASE_WRAP
        else:
            self._phase = (self._phase + wt * n + (w0 - wt) * self._plag_sum[n - 1]) % PHASE_WRAP
            target_hz = wt * self.sample_rate / TWO_PI
            self._freq = _settle(self._freq, target_hz, self._plag[n - 1], 1e-7 * target_hz)
        if self._amp != p.amplitude:
            self._amp = _settle(self._amp, p.amplitude, lag_end, 1e-7)
        if self._fifth != timbre.fifth:
            self._fifth = _settle(self._fifth, timbre.fifth, lag_end, 1e-7)
        if self._third != timbre.third_harmonic:
            self._third = _settle(self._third, timbre.third_harmonic, lag_end, 1e-7)
        if self._trem_depth != timbre.tremolo_depth:
            self._trem_depth = _settle(self._trem_depth, timbre.tremolo_depth, lag_end, 1e-7)

    # -- offline (appliance.voice.audio.Mixer.plan_block): the same block, samples later ----------
    def plan(self, n: int, gain_start: float, gain_end: float, silent: bool = False) -> tuple | None:
        """What `render(out[:n], gain_start, gain_end)` (or `skip_silent(n)` with `silent`)
        would do to this synth, done now, and the block's figures for `render_planned`.

        The state moves on exactly as `render` moves it (same arithmetic, same order), so
        phase, glides and `current_*` are the same after either; the samples come later, for
        many blocks at once. The figures: (phase, ω0, ωt, amp, amp target, fifth, its
        target, third, its target, tremolo depth, its target, LFO ω, LFO phase), with the
        partials and tremolo zeroed where `render` leaves them out; None for a silent block.
        """
        if silent or (self._amp == 0.0 and self._params.amplitude == 0.0):
            self._asleep = True
            return None
        return self.plan_run((n,))[0]

    def plan_run(self, sizes: Sequence[int]) -> list[tuple]:
        """`plan(n, ...)` for each block of `sizes` in turn, in one call: the figures of each
        block, up to (not including) the first one the tone would be silent for (its loudness
        and its target both zero: `plan` would return None there, and the mixer's silent path
        takes over).

        For the offline renderer's stretches of the tone alone, where nothing `plan` reads
        changes between the blocks (the params, the live slot's value: no other code runs
        between them). `plan` is this for one block. The state after each block is
        `_advance`'s own expressions (render's step), evaluated in the same order on the
        same numbers, so the samples are bit for bit what `render` writes block by block.
        """
        figures: list[tuple] = []
        p = self._params
        amp_t = p.amplitude
        amp = self._amp
        if not sizes or (amp == 0.0 and amp_t == 0.0):
            return figures
        timbre = self._timbre(p)
        sr = self.sample_rate
        hz = self.target_hz(p)
        if self._asleep:
            self._wake(hz, timbre)
        wt = TWO_PI * hz / sr
        target_hz = wt * sr / TWO_PI
        close_hz = 1e-7 * target_hz
        t_fifth, t_third, t_depth = timbre.fifth, timbre.third_harmonic, timbre.tremolo_depth
        lag, plag, plag_sum = self._lag_f, self._plag_f, self._plag_sum_f
        phase, freq, fifth, third, depth = self._phase, self._freq, self._fifth, self._third, self._trem_depth
        lfo_phase, trem_hz = self._lfo_phase, self._trem_hz
        append = figures.append
        for n in sizes:
            if amp == 0.0 and amp_t == 0.0:
                break
            w0 = TWO_PI * freq / sr
            f0, ft = (fifth, t_fifth) if fifth > 1e-6 or t_fifth > 0 else (0.0, 0.0)
            h0, ht = (third, t_third) if third > 1e-6 or t_third > 0 else (0.0, 0.0)
            if depth > 1e-6 or t_depth > 0:
                trem_hz = timbre.tremolo_hz if t_depth > 0 else trem_hz
                lw = TWO_PI * trem_hz / sr
                lfo = lfo_phase
                lfo_phase = (lfo + lw * n) % TWO_PI
                append((phase, w0, wt, amp, amp_t, f0, ft, h0, ht, depth, t_depth, lw, lfo))
            else:
                append((phase, w0, wt, amp, amp_t, f0, ft, h0, ht, 0.0, 0.0, 0.0, 0.0))
            # `_advance`, step for step
            lag_end = lag[n - 1]
            if w0 == wt:
                phase = (phase + wt * n) % PHASE_WRAP
            else:
                phase = (phase + wt * n + (w0 - wt) * plag_sum[n - 1]) % PHASE_WRAP
                freq = _settle(freq, target_hz, plag[n - 1], close_hz)
            if amp != amp_t:
                amp = _settle(amp, amp_t, lag_end, 1e-7)
            if fifth != t_fifth:
                fifth = _settle(fifth, t_fifth, lag_end, 1e-7)
            if third != t_third:
                third = _settle(third, t_third, lag_end, 1e-7)
            if depth != t_depth:
                depth = _settle(depth, t_depth, lag_end, 1e-7)
        self._phase, self._freq, self._amp = phase, freq, amp
        self._fifth, self._third, self._trem_depth = fifth, third, depth
        self._lfo_phase, self._trem_hz = lfo_phase, trem_hz
        return figures

    def render_planned(self, out: np.ndarray, lengths: np.ndarray, figures: list[tuple | None],
                       gains: np.ndarray) -> None:
        """The samples of blocks planned by `plan`, all at once: `out` (float64) is their
        concatenation, block i `lengths[i]` long with gains `gains[i]` = (start, end).

        Each sample is computed with the arithmetic `render` uses for it, element by
        element, so the result is bit for bit what `render` wrote block by block; a
        partial or tremolo that `render` leaves out is here a zero weight, which adds
        exactly nothing.
        """
        loud = [i for i, f in enumerate(figures) if f is not None]
        rows = [f for f in figures if f is not None]
        if not loud:
            out.fill(0.0)
            return
        # Only the blocks that sound (silent ones are zeros, as `render` writes them), one
        # column each, padded to the longest: sample k of every block is row k, so each
        # numpy call runs along a row of blocks (long), not along a block (64 samples).
        fig = np.fromiter(chain.from_iterable(rows), np.float64,
                          13 * len(loud)).reshape(len(loud), 13).T.copy()
        n_loud = lengths[loud]
        width = int(n_loud.max())
        k, lag, lag_sum = self._k[:width, None], self._lag[:width, None], self._plag_sum[:width, None]
        phase, w0, wt, amp, amp_t, _, _, _, _, _, _, lw, lfo = fig
        g = gains[loud]
        g0, g1 = g[:, 0], g[:, 1]
        ph = k * wt
        ph += lag_sum * (w0 - wt)
        ph += phase
        long = n_loud > SHORT_BLOCK
        if long.any():  # as `render` wraps a long block's phase
            wraps = np.floor(ph[:, long] * (1.0 / PHASE_WRAP))
            wraps *= PHASE_WRAP
            ph[:, long] -= wraps
        y = np.sin(ph.astype(np.float32)).astype(np.float64)
        # A glide that has settled (start == target) is its target exactly, as in `render`:
        # a row of numbers then, not a (samples x blocks) table.
        for col, multiple in ((5, 1.5), (7, 3.0)):
            used = (fig[col] != 0.0) | (fig[col + 1] != 0.0)
            if used.any():
                w_start, w_target = fig[col][used], fig[col + 1][used]
                p_used = ph if used.all() else ph[:, used]
                tmp = np.sin((p_used * multiple).astype(np.float32)).astype(np.float64)
                tmp *= w_target if (w_start == w_target).all() else lag * (w_start - w_target) + w_target
                if used.all():
                    y += tmp
                else:
                    y[:, used] += tmp
        if (amp == amp_t).all() and (g0 == g1).all():
            env = (amp_t * g0)[None, :]
        else:
            env = lag * (amp - amp_t) + amp_t
            ramp = k * ((g1 - g0) / n_loud)
            ramp += g0
            env *= ramp
        used = (fig[9] != 0.0) | (fig[10] != 0.0)
        if used.any():
            h0, h_t = 0.5 * fig[9][used], 0.5 * fig[10][used]  # half the depth, as `render` glides it
            trem = k * lw[used]
            trem += lfo[used]
            trem = np.cos(trem.astype(np.float32)).astype(np.float64)
            np.subtract(1.0, trem, out=trem)
            trem *= h_t if (h0 == h_t).all() else lag * (h0 - h_t) + h_t
            np.subtract(1.0, trem, out=trem)
            if used.all():
                trem *= env
                env = trem
            else:
                env = np.broadcast_to(env, y.shape).copy()
                env[:, used] *= trem
        y *= env
        if (n_loud == width).all():
            valid = y.T.ravel()
        else:
            valid = y.T[np.arange(width) < n_loud[:, None]]
        if len(loud) == len(figures):
            out[:] = valid
        else:
            is_loud = np.zeros(len(figures), bool)
            is_loud[loud] = True
            out.fill(0.0)
            out[np.repeat(is_loud, lengths)] = valid

    def _add_partial(self, out: np.ndarray, ph: np.ndarray, multiple: float, weight0: float,
                     weight_target: float, tmp: np.ndarray) -> None:
        np.multiply(ph, multiple, out=tmp)
        _sin32(tmp, tmp, self._x32[: tmp.shape[0]])
        if weight0 == weight_target:
            tmp *= weight0
        else:
            w = self._env[: tmp.shape[0]]
            self._glide_into(w, weight0, weight_target)
            tmp *= w
        out += tmp


def _sin32(x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """`out = sin(x)` computed in float32 (`scratch`): numpy's float32 sine is vectorised
    (SIMD), its float64 one is not, and is 50 times slower on a second of samples. A phase
    below 20 rad in float32 is off by under 1e-6 rad: a hundredth of a 16-bit step. The
    offline renderer takes the same path (`astype(float32)`), so the two agree bit for bit."""
    scratch[...] = x  # casting copies by assignment: np.copyto is a Python-level wrapper
    np.sin(scratch, out=scratch)
    out[...] = scratch


def _cos32(x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """`out = cos(x)` in float32, as `_sin32`."""
    scratch[...] = x
    np.cos(scratch, out=scratch)
    out[...] = scratch


def _lag_table(k: np.ndarray, glide_ms: float, sample_rate: int) -> np.ndarray:
    """`decay**k`: what is left of a step after k samples of a one-pole lag of `glide_ms`."""
    decay = math.exp(-1.0 / (glide_ms * 1e-3 * sample_rate)) if glide_ms > 0 else 0.0
    return np.asarray(decay**k, dtype=np.float64)


def _settle(value: float, target: float, lag: float, close: float) -> float:
    """One-pole step towards `target`; exactly `target` once within `close` of it."""
    value = target + (value - target) * lag
    return target if abs(value - target) <= close else value
