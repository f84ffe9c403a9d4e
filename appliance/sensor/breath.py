"""Breathing read from the probe: abdominal pressure rises on the in-breath, falls on the out.

`BreathDetector` finds the breathing rate with a periodic fit on a slow trend, then the
timing with a breath-shaped template, and reports the phase (in/out), the rate, when the
next out-breath begins, and how clear the ripple is (`confidence`). When it is not clear
(a contraction, coughing, irregular or shallow breathing) the coach keeps its own pace.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np


class BreathPhase(Enum):
    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


COARSE_STEPS = 4  # the breath template's first scan, in timing steps


@dataclass(frozen=True)
class BreathEstimate:
    """What the detector believes at time `t`."""

    t: float
    phase: BreathPhase
    confidence: float  # 0..1: share of the ripple the periodic fit explains, damped when faint
    breaths_per_minute: float | None
    ripple_cmh2o: float | None  # peak-to-peak of the fitted breath curve
    next_out_s: float | None  # when the next out-breath begins (session seconds)
    next_in_s: float | None  # when the next in-breath begins

    @property
    def period_s(self) -> float | None:
        return 60.0 / self.breaths_per_minute if self.breaths_per_minute else None


@dataclass(frozen=True)
class BreathSettings:
    """Defaults tuned on simulated profiles (tests/test_breath.py, bench figures in the report)."""

    rate_hz: float = 10.0  # the ripple is slow: 10 Hz keeps the fit cheap on a Pi Zero
    window_s: float = 24.0  # longer than a breath and a half at the slowest rate (4/min)
    weight_tau_s: float = 7.0  # recent breaths count more: rate changes are followed
    min_bpm: float = 4.0
    max_bpm: float = 30.0
    bpm_step: float = 0.25  # refined between grid points by a parabola
    confident_above: float = 0.6
    min_ripple_cmh2o: float = 0.4  # smaller swings are within sensor and body noise
    max_ripple_cmh2o: float = 8.0  # breathing moves the probe a few cmH2O (CLINICAL.md)
    harmonics: int = 1  # picks the rate only; more harmonics overfit a slow breath (bench)
    inhale_fractions: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55)
    timing_step_s: float = 0.05
    timing_tolerance_s: float = 0.4  # breath-to-breath timing wobble that costs 63 % confidence
    refit_s: float = 0.5  # between fits the timing is carried forward (a fit costs ~3 ms)


class BreathDetector:
    """Feed it pressure samples (cmH2O) in time order; ask `estimate()` whenever needed."""

    def __init__(self, settings: BreathSettings | None = None) -> None:
        self.settings = settings or BreathSettings()
        s = self.settings
        self._bin = 1.0 / s.rate_hz
        self._bin_start: float | None = None
        self._bin_sum = 0.0
        self._bin_n = 0
        maxlen = int(s.window_s * s.rate_hz) + 1
        self._t: deque[float] = deque(maxlen=maxlen)
        self._p: deque[float] = deque(maxlen=maxlen)
        self._freqs = np.arange(s.min_bpm, s.max_bpm + 1e-9, s.bpm_step) / 60.0
        # On the bin grid (t = -k bins) a candidate rate's phase is a whole number of Nths of
        # a cycle (N = 2400 with the defaults): cosines and sines from one table of N.
        first, per_cycle = s.min_bpm / s.bpm_step, 60.0 / (s.bpm_step * self._bin)
        self._cycles: np.ndarray | None = None
        self._harmonics_of: tuple[bytes, list[np.ndarray]] | None = None  # (bins, their columns), read only
        if abs(first - round(first)) < 1e-9 and abs(per_cycle - round(per_cycle)) < 1e-6:
            self._cycles = round(first) + np.arange(len(self._freqs))  # Nths of a cycle per bin
            angles = 2 * math.pi * np.arange(round(per_cycle)) / round(per_cycle)
            self._cos, self._sin = np.cos(angles), np.sin(angles)
        self._cached: BreathEstimate | None = None
        self._history: deque[tuple[float, float, float]] = deque()

    def reset(self) -> None:
        """Forget the ripple (e.g. after the probe was re-inserted)."""
        self._t.clear()
        self._p.clear()
        self._bin_start = None
        self._cached = None
        self._history.clear()

    def add(self, times, cmh2o) -> None:
        s_refit = self.settings.refit_s
        for t, p in zip(times, cmh2o, strict=True):
            t = float(t)
            if self._bin_start is None:
                self._bin_start = t
            if t - self._bin_start >= self._bin and self._bin_n:
                self._t.append(self._bin_start + self._bin / 2)
                self._p.append(self._bin_sum / self._bin_n)
                if self._cached is not None and self._t[-1] - self._cached.t >= s_refit:
                    self._cached = None
                self._bin_start += self._bin * math.floor((t - self._bin_start) / self._bin)
                self._bin_sum, self._bin_n = 0.0, 0
            self._bin_sum += float(p)
            self._bin_n += 1

    def estimate(self, now: float | None = None) -> BreathEstimate:
        """The current breath estimate; `now` (default: the last sample) moves the prediction."""
        if self._cached is None:
            self._cached = self._fit()
        est = self._cached
        if now is None or est.breaths_per_minute is None:
            return est
        return self._at(est, now)

    # --- the fit --------------------------------------------------------------------------

    def _fit(self) -> BreathEstimate:
        s = self.settings
        n = len(self._t)
        t_end = self._t[-1] if n else 0.0
        nothing = BreathEstimate(t_end, BreathPhase.UNKNOWN, 0.0, None, None, None, None)
        if n < int(s.window_s * s.rate_hz * 0.6):
            return nothing
        t = np.asarray(self._t) - t_end  # 0 at the newest sample
        y = np.asarray(self._p)
        w = np.exp(t / s.weight_tau_s)
        sw = np.sqrt(w)  # weighted least squares by scaling rows with √w
        # Each unbroken stretch of samples gets its own level: the coach may feed only the
        # relaxed moments between squeezes, and the resting level differs a little each time.
        breaks = np.nonzero(np.diff(t) > 3.0 / s.rate_hz)[0] + 1
        segment = np.zeros(len(t), int)
        for b in breaks:
            segment[b:] += 1
        levels = (segment[:, None] == np.arange(segment[-1] + 1)[None, :]).astype(float)
        trend = np.column_stack([levels, t, t * t])
        # Residual variance after the trend alone: what a breath curve has to explain.
        beta0, *_ = np.linalg.lstsq(trend * sw[:, None], y * sw, rcond=None)
        resid0 = y - trend @ beta0
        var0 = float(np.sum(w * resid0**2))
        if var0 <= 1e-12:
            return nothing
        # All candidate rates at once: weighted normal equations, one small solve each. The
        # trend's block of the normal equations is the same for every rate, and at the
        # solution the weighted residual is y'Wy - beta'X'Wy: no design matrix per rate.
        harmonics = self._harmonics(t)
        n_f, p = len(self._freqs), trend.shape[1]
        m = p + len(harmonics)
        wy = w * y
        trend_w = trend * w[:, None]
        gram = np.empty((n_f, m, m))
        gram[:, :p, :p] = trend.T @ trend_w
        rhs = np.empty((n_f, m))
        rhs[:, :p] = trend.T @ wy
        for i, h in enumerate(harmonics):
            cross = h @ trend_w  # (rates, trend columns)
            gram[:, :p, p + i] = cross
            gram[:, p + i, :p] = cross
            for j in range(i, len(harmonics)):
                gram[:, p + i, p + j] = gram[:, p + j, p + i] = (h * harmonics[j]) @ w
            rhs[:, p + i] = h @ wy
        gram += 1e-9 * np.eye(m)
        betas = np.linalg.solve(gram, rhs[..., None])[..., 0]
        variances = float(y @ wy) - np.sum(betas * rhs, axis=1)
        k = int(np.argmin(variances))
        f = float(self._freqs[k])
        if 0 < k < len(variances) - 1:
            # Between grid rates: the vertex of a parabola through the three best variances, so
            # the period does not hop by a grid step (0.3 s at 6/min) from one fit to the next.
            a, b, c = variances[k - 1], variances[k], variances[k + 1]
            denom = a - 2 * b + c
            if denom > 0:
                step = float(self._freqs[k + 1] - self._freqs[k])
                f += step * 0.5 * (a - c) / denom
        best = (float(variances[k]), f, betas[k])
        _, f, _ = best
        return self._fit_breath_shape(t, y - trend @ beta0, w, var0, f, t_end, trend, y)

    def _harmonics(self, t: np.ndarray) -> list[np.ndarray]:
        """cos and sin of k·2πft for every candidate rate f (rows) and harmonic k."""
        s = self.settings
        bins = np.rint(-t / self._bin)
        if self._cycles is not None and float(np.max(np.abs(t + bins * self._bin))) < 1e-6 * self._bin:
            key = bins.tobytes()
            if self._harmonics_of is not None and self._harmonics_of[0] == key:
                return self._harmonics_of[1]  # the same bins as the last fit (a full, unbroken window)
            n = len(self._cos)
            base = (self._cycles[:, None] * bins.astype(np.int64)[None, :]) % n  # Nths of a cycle
            out = []
            for k in range(1, s.harmonics + 1):
                idx = base if k == 1 else (k * base) % n
                out += [self._cos[idx], -self._sin[idx]]  # t <= 0: the angle is -2π·idx/N
            self._harmonics_of = (key, out)
            return out
        wt = 2 * math.pi * self._freqs[:, None] * t[None, :]
        return [fn(k * wt) for k in range(1, s.harmonics + 1) for fn in (np.cos, np.sin)]

    def _fit_breath_shape(
        self,
        t: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        var0: float,
        f: float,
        t_end: float,
        trend: np.ndarray,
        y_raw: np.ndarray,
    ) -> BreathEstimate:
        """Timing from a breath-shaped template: a half-cosine rise over the in-breath and a
        half-cosine fall over the (longer) out-breath, at the rate the harmonic fit found.

        Fitting the whole shape, rather than looking for the curve's flat top and bottom,
        keeps noise from sliding the transitions about.
        """
        s = self.settings
        period = 1.0 / f
        starts = np.arange(-period, 0.0, s.timing_step_s)  # breath starts (in-breath), rel. t_end
        # Template and slow trend are fitted together: over a window of one or two breaths a
        # trend fitted first would swallow part of the breath. No projected template is formed:
        # with T the trend, W the weights and G = T'WT, a template g's part beyond the trend
        # has amplitude numerator g'W(y - T G⁻¹T'Wy) and weight g'Wg - (g'WT) G⁻¹ (T'Wg).
        trend_w = trend * w[:, None]
        gram_inv = np.linalg.inv(trend.T @ trend_w)
        wy = w * y
        u = wy - trend_w @ (gram_inv @ (trend.T @ wy))
        against = np.column_stack([u, trend_w])
        shapes = _Templates(t, starts, period, s.inhale_fractions, s.timing_step_s, self._bin)

        def scan(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """Scores of templates g (fractions, candidates, samples): best per fraction."""
            proj = g @ against
            num = proj[..., 0]
            d = proj[..., 1:]
            den = (g * g) @ w - np.sum((d @ gram_inv) * d, axis=-1)
            # Pressure rises on the in-breath: only a positive amplitude is a breath.
            score = np.where(num > 0, num * num / np.where(den > 0, den, 1.0), 0.0)
            k = np.argmax(score, axis=1)
            rows = np.arange(len(k))
            return score[rows, k], k, num[rows, k] / den[rows, k]

        # Coarse to fine: the score is smooth in the start time (the template slides), so a
        # scan at four timing steps and a fine scan around its best find the same start at a
        # quarter of the cost (the fit runs every half second on a Pi Zero). Every inhale
        # fraction is scanned at once.
        coarse = np.arange(0, len(starts), COARSE_STEPS)
        _, k, _ = scan(shapes.at(coarse))
        fine = np.clip(coarse[k][:, None] + np.arange(-COARSE_STEPS, COARSE_STEPS + 1)[None, :], 0, len(starts) - 1)
        scores, k, amplitudes = scan(shapes.at(fine))
        i = int(np.argmax(scores))  # the first of equals, as a scan fraction by fraction would
        best = (float(scores[i]), float(starts[fine[i, k[i]]]), float(s.inhale_fractions[i]), float(amplitudes[i]))
        score, start, r, amplitude = best
        explained = min(1.0, score / var0)
        ripple = 2.0 * amplitude
        faint = min(1.0, ripple / s.min_ripple_cmh2o)
        # The recent breath alone always fits a template: ask the same timing to explain
        # the whole window as well, so irregular breathing is not trusted.
        consistent = self._uniform_fit(t, y_raw, trend, start, r, period)
        if ripple > s.max_ripple_cmh2o:
            faint = 0.0  # swings this large are squeezes, coughs or movement, not breath
        # Plain floats: these times become the coach's plan and its events' times.
        self._timing = (float(t_end + start), float(r * period), float(period))
        stable = self._stability(t_end, t_end + start, period)
        est = BreathEstimate(
            t=t_end,
            phase=BreathPhase.UNKNOWN,
            confidence=float(max(0.0, min(explained, consistent)) * faint * stable),
            breaths_per_minute=float(60.0 * f),
            ripple_cmh2o=float(ripple),
            next_out_s=None,
            next_in_s=None,
        )
        return self._at(est, t_end)

    def _stability(self, t_end: float, start_abs: float, period: float) -> float:
        """Did the fit made about one breath ago predict this breath's timing?

        A shape can always be fitted to the last breath; only a rhythm that holds from one
        breath to the next lets the coach time a cue on the coming out-breath.
        """
        s = self.settings
        self._history.append((t_end, start_abs, period))
        while self._history and self._history[0][0] < t_end - 2.0 * period:
            self._history.popleft()
        old = [h for h in self._history if h[0] <= t_end - period]
        if not old:
            return 0.0
        _, old_start, old_period = old[-1]
        shift = (start_abs - old_start) % period
        shift = min(shift, period - shift)
        period_change = abs(period - old_period)
        return math.exp(-((shift + period_change) / s.timing_tolerance_s) ** 2)

    @staticmethod
    def _uniform_fit(
        t: np.ndarray, y: np.ndarray, trend: np.ndarray, start: float, r: float, period: float
    ) -> float:
        """Share of the whole window's variance (beyond the trend) that the timing explains."""
        tau = np.mod(t - start, period)
        rise = r * period
        g = np.where(
            tau < rise, -np.cos(np.pi * tau / rise), np.cos(np.pi * (tau - rise) / (period - rise))
        )
        base, *_ = np.linalg.lstsq(trend, y, rcond=None)
        full, *_ = np.linalg.lstsq(np.column_stack([trend, g]), y, rcond=None)
        var0 = float(np.sum((y - trend @ base) ** 2))
        var1 = float(np.sum((y - np.column_stack([trend, g]) @ full) ** 2))
        return 1.0 - var1 / var0 if var0 > 1e-12 else 0.0

    def _at(self, est: BreathEstimate, now: float) -> BreathEstimate:
        """Phase at `now` and the next transitions, from the fitted breath timing."""
        start, inhale_s, period = self._timing
        cycles = math.floor((now - start) / period)
        this_start = start + cycles * period
        into = now - this_start
        phase = BreathPhase.IN if into < inhale_s else BreathPhase.OUT
        next_in = this_start + period
        next_out = this_start + inhale_s if into < inhale_s else next_in + inhale_s
        return BreathEstimate(
            t=now,
            phase=phase,
            confidence=est.confidence,
            breaths_per_minute=est.breaths_per_minute,
            ripple_cmh2o=est.ripple_cmh2o,
            next_out_s=next_out,
            next_in_s=next_in,
        )


class _Templates:
    """The breath template for each inhale fraction, at each candidate start, at each sample.

    `at(idx)` gives (fractions, *idx.shape, samples) for indices into `starts`. The samples
    sit on the detector's bin grid and the candidates on the timing grid, so a template's
    value depends on the whole number of timing steps between sample and start only: it is
    computed once per step count and gathered (a few hundred cosines instead of tens of
    thousands). Samples off the grid (other settings) get the template computed directly.
    """

    def __init__(self, t: np.ndarray, starts: np.ndarray, period: float,
                 fractions: tuple[float, ...], step: float, bin_s: float) -> None:
        self.t, self.starts, self.period = t, starts, period
        self.rises = np.asarray(fractions, dtype=float) * period
        self._table: np.ndarray | None = None
        if len(t) and len(starts):
            q = round(bin_s / step)
            k = np.rint(-t / (q * step)) if q >= 1 else None
            if k is not None and abs(bin_s - q * step) < 1e-9 * step \
                    and float(np.max(np.abs(t + k * q * step))) < 1e-6 * step \
                    and abs(float(starts[0]) + period) < 1e-9 and k.min() >= 0:
                self._m = (q * k).astype(np.intp)  # steps from each sample back to starts[0], less j
                steps = np.arange(int(self._m.max()) + len(starts))
                self._table = self._shape(np.mod(period - step * steps, period)[None, :])

    def _shape(self, tau: np.ndarray) -> np.ndarray:
        """Half-cosine rise over the in-breath, half-cosine fall over the out-breath;
        `tau` (seconds into the breath) has a first axis for the fractions (or 1)."""
        rise = self.rises.reshape(self.rises.shape + (1,) * (tau.ndim - 1))  # one row per fraction
        return np.where(
            tau < rise,
            -np.cos(np.pi * tau / rise),
            np.cos(np.pi * (tau - rise) / (self.period - rise)),
        )

    def at(self, idx: np.ndarray) -> np.ndarray:
        """Templates at start indices `idx`, (candidates) for every fraction or (fractions,
        candidates) one row each: (fractions, candidates, samples)."""
        table = self._table
        if table is not None:
            if idx.ndim == 1:
                return np.take(table, idx[:, None] + self._m[None, :], axis=1)
            rows = np.arange(len(self.rises))[:, None, None] * table.shape[1]
            return table.ravel()[rows + idx[:, :, None] + self._m[None, None, :]]
        idx = np.broadcast_to(idx, (len(self.rises), idx.shape[-1]))
        tau = np.mod(self.t[None, None, :] - self.starts[idx][:, :, None], self.period)
        return self._shape(tau)
