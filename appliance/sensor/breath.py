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
RIDGE = 1e-9  # added to the rate fit's normal equations (keeps them solvable)


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
        # On the bin grid (t = k bins) a candidate rate's phase is a whole number of Nths of a
        # cycle (N = 2400 with the defaults): cosines and sines from one table of N. A sample's
        # harmonic columns are kept in a ring (one column per kept sample) from fit to fit.
        first, per_cycle = s.min_bpm / s.bpm_step, 60.0 / (s.bpm_step * self._bin)
        self._cycles = np.zeros(0, dtype=np.int64)
        self._trig = np.zeros(0)  # cos then sin of the N angles
        self._ring: np.ndarray | None = None  # (cos, sin, cos 2x, sin 2x for every rate, kept samples)
        if abs(first - round(first)) < 1e-9 and abs(per_cycle - round(per_cycle)) < 1e-6:
            self._cycles = round(first) + np.arange(len(self._freqs), dtype=np.int64)  # Nths of a cycle per bin
            angles = 2 * math.pi * np.arange(round(per_cycle)) / round(per_cycle)
            self._trig = np.concatenate([np.cos(angles), np.sin(angles)])
            self._ring = np.zeros((4 * len(self._freqs), maxlen))
        self._ring_n = max(1, round(per_cycle))  # N
        self._ridges: dict[int, np.ndarray] = {}  # RIDGE·I by size
        self._appended = 0  # samples (bins) added since the detector was made: the ring's index
        self._ring_from, self._ring_to = 0, -1  # the samples whose columns the ring holds (none)
        self._ring_t, self._ring_k = 0.0, 0  # the newest of them: its time and bin (modulo N)
        self._off_grid = 0  # the ring is not used while a sample before this one is in the window
        self._cached: BreathEstimate | None = None
        self._history: deque[tuple[float, float, float]] = deque()

    def _ridge(self, p: int) -> np.ndarray:
        ridge = self._ridges.get(p)
        if ridge is None:
            ridge = self._ridges[p] = RIDGE * np.eye(p)
        return ridge

    def reset(self) -> None:
        """Forget the ripple (e.g. after the probe was re-inserted)."""
        self._t.clear()
        self._p.clear()
        self._bin_start = None
        self._cached = None
        self._history.clear()
        self._ring_from, self._ring_to = 0, -1

    def add(self, times, cmh2o) -> None:
        s_refit = self.settings.refit_s
        for t, p in zip(times, cmh2o, strict=True):
            t = float(t)
            if self._bin_start is None:
                self._bin_start = t
            if t - self._bin_start >= self._bin and self._bin_n:
                self._t.append(self._bin_start + self._bin / 2)
                self._p.append(self._bin_sum / self._bin_n)
                self._appended += 1
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
        t_abs = np.fromiter(self._t, float, n)
        t = t_abs - t_end  # 0 at the newest sample
        y = np.fromiter(self._p, float, n)
        w = np.exp(t / s.weight_tau_s)  # weighted least squares throughout
        trend = _trend(t, 3.0 / s.rate_hz)
        trend_w = trend * w[:, None]
        p = trend.shape[1]
        # The same trend unweighted, for the whole-window check; t scaled to the window (the
        # same fit, better conditioned).
        scale = 1.0 / max(1.0, -float(t[0]))
        plain = trend.copy()
        plain[:, -2] *= scale
        plain[:, -1] *= scale * scale
        grams = np.empty((3, p, p))
        np.matmul(trend.T, trend_w, out=grams[0])
        np.add(grams[0], self._ridge(p), out=grams[1])
        np.matmul(plain.T, plain, out=grams[2])
        # The rate fit's normal equations carry a small ridge (1e-9); the template fit's do not.
        gram_inv, ridged_inv, plain_inv = np.linalg.inv(grams)
        # Residual after the trend alone: what a breath curve has to explain.
        resid = y - trend @ (ridged_inv @ (trend_w.T @ y))
        var0 = float(w @ (resid * resid))
        if var0 <= 1e-12:
            return nothing
        if s.harmonics == 1:
            variances = self._rate_variances(t, t_abs, w, trend_w, ridged_inv, resid)
        else:
            variances = self._rate_variances_with_harmonics(t, w, trend, y)
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
        return self._fit_breath_shape(t, resid, w, var0, f, t_end, trend, y, trend_w, gram_inv, (plain, plain_inv))

    def _rate_variances(
        self,
        t: np.ndarray,
        t_abs: np.ndarray,
        w: np.ndarray,
        trend_w: np.ndarray,
        ridged_inv: np.ndarray,
        resid: np.ndarray,
    ) -> np.ndarray:
        """For every candidate rate f, the weighted variance left when cos and sin of 2πft are
        fitted together with the trend (less a part common to all rates: only differences count).

        The normal equations of trend T and harmonics H (ridge ε on both diagonals) are solved
        by eliminating the trend: with A = T'WT + εI, B = H'WT, r the trend-only residual, the
        harmonics explain z'S⁻¹z, z = H'Wr, S = H'WH + εI - B A⁻¹ B'. That needs H'W[T r] and,
        for H'WH, cos² = (1 + cos 2x)/2, sin² = (1 - cos 2x)/2, cos·sin = sin 2x / 2.
        """
        n_f, p, n = len(self._freqs), trend_w.shape[1], len(t)
        cols = np.empty((n, p + 2))
        cols[:, :p] = trend_w
        np.multiply(w, resid, out=cols[:, p])
        cols[:, p + 1] = w
        rows = self._harmonic_rows(t_abs)
        if rows is not None:
            # A rate's phase is free in the fit, so the columns may count time from any origin:
            # the detector's own, on which a sample's columns never change (kept between fits).
            cap = rows.shape[1]
            first_slot = (self._appended - n) % cap  # the ring's column of the oldest sample
            if n == cap:
                cols = np.concatenate((cols[cap - first_slot :], cols[: cap - first_slot]))
            else:
                ringed = np.zeros((cap, p + 2))
                ringed[(first_slot + np.arange(n)) % cap] = cols
                cols = ringed
        else:
            wt = 2 * math.pi * self._freqs[:, None] * t[None, :]
            rows = np.concatenate([np.cos(wt), np.sin(wt), np.cos(2 * wt), np.sin(2 * wt)])
        first = rows[: 2 * n_f] @ cols[:, : p + 1]  # h'WT and h'Wr for cos (rows :n_f) and sin
        half = 0.5 * (rows[2 * n_f :] @ cols[:, p + 1])  # Σ w cos 2x / 2, Σ w sin 2x / 2
        b = first[:, :p]
        # (B A⁻¹ B') for cos·cos, cos·sin, sin·cos, sin·sin, for every rate
        bab = np.einsum("anp,bnp->abn", (b @ ridged_inv).reshape(2, n_f, p), b.reshape(2, n_f, p))
        diagonal = 0.5 * float(cols[:, p + 1].sum()) + RIDGE
        cc = diagonal + half[:n_f] - bab[0, 0]
        cs = half[n_f:] - bab[0, 1]
        ss = diagonal - half[:n_f] - bab[1, 1]
        zc, zs = first[:n_f, p], first[n_f:, p]
        return (cc * zs * zs + ss * zc * zc - 2.0 * cs * zc * zs) / (cs * cs - cc * ss)

    def _rate_variances_with_harmonics(
        self, t: np.ndarray, w: np.ndarray, trend: np.ndarray, y: np.ndarray
    ) -> np.ndarray:
        """`_rate_variances` with more than one harmonic per rate (not the default): every
        rate's normal equations (trend and harmonics, ridge ε) solved whole."""
        wt = 2 * math.pi * self._freqs[:, None] * t[None, :]
        harmonics = [fn(k * wt) for k in range(1, self.settings.harmonics + 1) for fn in (np.cos, np.sin)]
        n_f, p = len(self._freqs), trend.shape[1]
        m = p + len(harmonics)
        wy = w * y
        trend_w = trend * w[:, None]
        gram = np.empty((n_f, m, m))
        gram[:, :p, :p] = trend.T @ trend_w
        rhs = np.empty((n_f, m))
        rhs[:, :p] = trend.T @ wy
        for i, h in enumerate(harmonics):
            gram[:, :p, p + i] = gram[:, p + i, :p] = h @ trend_w
            for j in range(i, len(harmonics)):
                gram[:, p + i, p + j] = gram[:, p + j, p + i] = (h * harmonics[j]) @ w
            rhs[:, p + i] = h @ wy
        gram += RIDGE * np.eye(m)
        betas = np.linalg.solve(gram, rhs[..., None])[..., 0]
        return float(y @ wy) - np.sum(betas * rhs, axis=1)

    def _harmonic_rows(self, t_abs: np.ndarray) -> np.ndarray | None:
        """cos, sin, cos 2x, sin 2x (x = 2πf·t, t counted from a sample of the ring's) of every
        candidate rate f (rows) for every sample kept (columns: a ring indexed by the sample's
        count), or None when the samples are not on the bin grid (the fit then computes them).

        Only the samples added since the last fit get new columns: gathered from one table of
        N angles, as every rate's phase on the bin grid is a whole number of Nths of a cycle.
        """
        ring = self._ring
        if ring is None:
            return None
        n, cap = len(t_abs), ring.shape[1]
        last = self._appended
        first = last - n
        if first < self._off_grid:
            return None
        # Go on from the ring's newest sample when it holds all the window's older ones.
        go_on = self._ring_from <= first < self._ring_to
        start = self._ring_to if go_on else first
        if start < last:
            fresh = t_abs[n - (last - start) :]
            # Bins counted on from the ring's newest sample, or from the first fresh one.
            base_t, base_k = (self._ring_t, self._ring_k) if go_on else (float(fresh[0]), 0)
            steps = (fresh - base_t) / self._bin
            k = np.rint(steps)
            if float(abs(steps - k).max()) >= 1e-6:
                self._off_grid = last  # until these samples have left the window
                self._ring_from, self._ring_to = 0, -1
                return None
            # The angle in Nths of a cycle, doubled for the second harmonic; cos then sin table.
            n_angles = self._ring_n
            once = (self._cycles[:, None] * ((k.astype(np.int64) + base_k) % n_angles)) % n_angles
            twice = once + once
            twice -= (twice >= n_angles) * n_angles
            columns = self._trig[np.concatenate((once, once + n_angles, twice, twice + n_angles))]
            at, to = start % cap, last % cap
            if at < to:
                ring[:, at:to] = columns
            else:
                ring[:, np.arange(start, last) % cap] = columns
            self._ring_t, self._ring_k = float(fresh[-1]), (int(k[-1]) + base_k) % n_angles
            if not go_on:
                self._ring_from = first
        self._ring_to = last
        self._ring_from = max(self._ring_from, last - cap)
        return ring

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
        trend_w: np.ndarray,
        gram_inv: np.ndarray,
        plain: tuple[np.ndarray, np.ndarray],
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
        wy = w * y
        against = np.empty((len(t), trend_w.shape[1] + 1))
        against[:, 0] = wy - trend_w @ (gram_inv @ (trend.T @ wy))
        against[:, 1:] = trend_w
        shapes = _Templates(t, starts, period, s.inhale_fractions, s.timing_step_s, self._bin)

        def scan(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """Scores of templates g (fractions, candidates, samples): best per fraction."""
            n_r, n_c, n = g.shape
            flat = g.reshape(n_r * n_c, n)
            proj = flat @ against
            num = proj[:, 0]
            d = proj[:, 1:]
            den = np.square(flat, out=flat) @ w
            den -= np.einsum("ij,ij->i", d @ gram_inv, d)
            # Pressure rises on the in-breath: only a positive amplitude is a breath.
            score = (np.square(np.maximum(num, 0.0)) / np.where(den > 0, den, 1.0)).reshape(n_r, n_c)
            k = score.argmax(axis=1)
            at = np.arange(0, n_r * n_c, n_c) + k
            return score.ravel()[at], k, num[at] / den[at]

        # Coarse to fine: the score is smooth in the start time (the template slides), so a
        # scan at four timing steps and a fine scan around its best find the same start at a
        # quarter of the cost (the fit runs every half second on a Pi Zero). Every inhale
        # fraction is scanned at once.
        coarse = np.arange(0, len(starts), COARSE_STEPS)
        _, k, _ = scan(shapes.at(coarse))
        around = coarse[k][:, None] + np.arange(-COARSE_STEPS, COARSE_STEPS + 1)
        fine = np.minimum(np.maximum(around, 0), len(starts) - 1)
        scores, k, amplitudes = scan(shapes.at(fine))
        i = int(scores.argmax())  # the first of equals, as a scan fraction by fraction would
        j = int(fine[i, k[i]])
        score, start, r, amplitude = float(scores[i]), float(starts[j]), s.inhale_fractions[i], float(amplitudes[i])
        explained = min(1.0, score / var0)
        ripple = 2.0 * amplitude
        faint = min(1.0, ripple / s.min_ripple_cmh2o)
        # The recent breath alone always fits a template: ask the same timing to explain
        # the whole window as well, so irregular breathing is not trusted.
        consistent = _uniform_fit(*plain, y_raw, shapes.one(i, j))
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
        # The latest fit at least a period ago (fits are kept in time order).
        old = next((h for h in reversed(self._history) if h[0] <= t_end - period), None)
        if old is None:
            return 0.0
        _, old_start, old_period = old
        shift = (start_abs - old_start) % period
        shift = min(shift, period - shift)
        period_change = abs(period - old_period)
        return math.exp(-((shift + period_change) / s.timing_tolerance_s) ** 2)

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


def _trend(t: np.ndarray, gap_s: float) -> np.ndarray:
    """The slow trend's columns: a level for each unbroken stretch of samples, then t and t².

    Each stretch gets its own level: the coach may feed only the relaxed moments between
    squeezes, and the resting level differs a little each time.
    """
    breaks = ((t[1:] - t[:-1]) > gap_s).nonzero()[0] + 1
    edges = [0, *breaks.tolist(), len(t)]
    trend = np.zeros((len(t), len(edges) + 1))
    for j in range(len(edges) - 1):
        trend[edges[j] : edges[j + 1], j] = 1.0
    trend[:, -2] = t
    trend[:, -1] = t * t
    return trend


def _uniform_fit(basis: np.ndarray, basis_inv: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """Share of the whole window's variance beyond the trend (unweighted) that template g explains.

    `basis` holds the trend's columns, `basis_inv` inverts their normal equations: g beyond the
    trend explains (g'r)²/g'g of the trend's residual r.
    """
    both = np.empty((len(y), 2))
    both[:, 0] = y
    both[:, 1] = g
    beyond = both - basis @ (basis_inv @ (basis.T @ both))
    (var0, cross), (_, gg) = beyond.T @ beyond
    if var0 <= 1e-12 or gg <= 1e-12 * float(g @ g):
        return 0.0
    return float(cross * cross / gg / var0)


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
            k = np.rint(t * (-1.0 / (q * step))) if q >= 1 else None
            if k is not None and abs(bin_s - q * step) < 1e-9 * step \
                    and float(np.abs(t + k * (q * step)).max()) < 1e-6 * step \
                    and abs(float(starts[0]) + period) < 1e-9 and k[-1] >= 0:
                self._m = (q * k).astype(np.intp)  # steps from each sample back to starts[0], less j
                # seconds into the breath at each step count: period - step·steps, modulo the period
                back = period - step * np.arange(int(self._m[0]) + len(starts))  # the oldest sample is furthest back
                back -= period * np.floor(back / period)
                self._table = self._shape(back[None, :])
                # Runs of consecutive samples (q steps apart): their templates are strided views.
                edges = [0, *(((self._m[:-1] - self._m[1:]) != q).nonzero()[0] + 1).tolist(), len(t)]
                self._runs = [(a, b, int(self._m[b - 1])) for a, b in zip(edges[:-1], edges[1:], strict=True)]
                self._q = q

    def _shape(self, tau: np.ndarray) -> np.ndarray:
        """Half-cosine rise over the in-breath, half-cosine fall over the out-breath;
        `tau` (seconds into the breath) has a first axis for the fractions (or 1)."""
        rise = self.rises.reshape(self.rises.shape + (1,) * (tau.ndim - 1))  # one row per fraction
        rising = tau < rise
        pi_tau = np.pi * tau
        angle = np.where(rising, pi_tau / rise, (pi_tau - np.pi * rise) / (self.period - rise))
        out = np.cos(angle, out=angle)
        return np.negative(out, out=out, where=rising)

    def at(self, idx: np.ndarray) -> np.ndarray:
        """Templates at start indices `idx`, (candidates) for every fraction or (fractions,
        candidates) one row each: (fractions, candidates, samples)."""
        table = self._table
        if table is not None:
            if idx.ndim == 1:
                if len(idx) > 1 and idx[1] > idx[0] and ((idx[1:] - idx[:-1]) == idx[1] - idx[0]).all():
                    return self._evenly(table, int(idx[0]), int(idx[1] - idx[0]), len(idx))
                return np.take(table, idx[:, None] + self._m[None, :], axis=1)
            rows = np.arange(0, table.size, table.shape[1])[:, None, None]
            return table.ravel()[rows + idx[:, :, None] + self._m[None, None, :]]
        idx = np.broadcast_to(idx, (len(self.rises), idx.shape[-1]))
        tau = np.mod(self.t[None, None, :] - self.starts[idx][:, :, None], self.period)
        return self._shape(tau)

    def one(self, fraction: int, start: int) -> np.ndarray:
        """The template of one inhale fraction at one start, at every sample."""
        if self._table is not None:
            return self._table[fraction, start + self._m]
        return self.at(np.full((len(self.rises), 1), start))[fraction, 0]

    def _evenly(self, table: np.ndarray, first: int, every: int, count: int) -> np.ndarray:
        """`at` for the start indices first, first + every, ...: a run of samples q steps
        apart reads the table at a fixed stride, so each run is copied from a strided view."""
        out = np.empty((table.shape[0], count, len(self.t)))
        item = table.itemsize
        strides = (table.strides[0], every * item, self._q * item)
        for a, b, last in self._runs:
            # The run's newest sample is `last` steps back; its oldest is the view's last.
            view = np.ndarray((table.shape[0], count, b - a), table.dtype, table, (last + first) * item, strides)
            out[:, :, a:b] = view[:, :, ::-1]
        return out
