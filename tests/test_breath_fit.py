"""The breath fit's shortcuts give the fit written out plainly: same rate, timing, ripple and trust.

The detector eliminates the trend from the rate fit's normal equations, keeps each sample's
harmonic columns from fit to fit, and gathers its breath templates from tables. The reference
below fits every candidate rate and every template with its own least squares, as the
detector is described: where the two differ beyond rounding, the shortcut changed the estimate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.sensor.breath import COARSE_STEPS, BreathDetector, BreathEstimate, BreathPhase, BreathSettings


def _template(t: np.ndarray, start: float, rise: float, period: float) -> np.ndarray:
    tau = np.mod(t - start, period)
    return np.where(tau < rise, -np.cos(np.pi * tau / rise), np.cos(np.pi * (tau - rise) / (period - rise)))


def _weighted_residual(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sw = np.sqrt(w)
    beta, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
    return beta, y - x @ beta


class ReferenceDetector(BreathDetector):
    """The same detector with the fit written out plainly (one least squares per candidate)
    once `plain` is set; before, its own fits (so both keep the same breath-to-breath history)."""

    plain = False

    def _fit(self) -> BreathEstimate:
        if not self.plain:
            return super()._fit()
        s = self.settings
        n = len(self._t)
        t_end = self._t[-1] if n else 0.0
        nothing = BreathEstimate(t_end, BreathPhase.UNKNOWN, 0.0, None, None, None, None)
        if n < int(s.window_s * s.rate_hz * 0.6):
            return nothing
        t = np.array(self._t) - t_end
        y = np.array(self._p)
        w = np.exp(t / s.weight_tau_s)
        segment = np.cumsum(np.r_[0, np.diff(t) > 3.0 / s.rate_hz])
        levels = (segment[:, None] == np.arange(segment[-1] + 1)[None, :]).astype(float)
        trend = np.column_stack([levels, t, t * t])
        _, resid = _weighted_residual(trend, y, w)
        var0 = float(np.sum(w * resid**2))
        if var0 <= 1e-12:
            return nothing
        # Every rate: trend, cos and sin fitted together, with the fit's ridge of 1e-9 on the
        # normal equations; what is left is the residual plus the ridge's penalty.
        variances = []
        for f in self._freqs:
            waves = [fn(2 * math.pi * k * f * t) for k in range(1, s.harmonics + 1) for fn in (np.cos, np.sin)]
            x = np.column_stack([trend, *waves])
            gram = x.T @ (x * w[:, None]) + 1e-9 * np.eye(x.shape[1])
            beta = np.linalg.solve(gram, x.T @ (w * y))
            variances.append(float(np.sum(w * (y - x @ beta) ** 2) + 1e-9 * beta @ beta))
        k = int(np.argmin(variances))
        f = float(self._freqs[k])
        if 0 < k < len(variances) - 1:
            a, b, c = variances[k - 1], variances[k], variances[k + 1]
            if a - 2 * b + c > 0:
                f += float(self._freqs[k + 1] - self._freqs[k]) * 0.5 * (a - c) / (a - 2 * b + c)
        period = 1.0 / f
        starts = np.arange(-period, 0.0, s.timing_step_s)

        def fitted(j: int, r: float) -> tuple[float, float]:
            """Score (variance the template explains beyond the trend) and amplitude."""
            g = _template(t, float(starts[j]), r * period, period)
            beta, rest = _weighted_residual(np.column_stack([trend, g]), resid, w)
            amplitude = float(beta[-1])
            return (var0 - float(np.sum(w * rest**2)) if amplitude > 0 else 0.0), amplitude

        best = None
        for r in s.inhale_fractions:
            coarse = range(0, len(starts), COARSE_STEPS)
            c = max(coarse, key=lambda j: (fitted(j, r)[0], -j))  # the first of equals
            fine = [min(max(c + d, 0), len(starts) - 1) for d in range(-COARSE_STEPS, COARSE_STEPS + 1)]
            j = max(fine, key=lambda j: (fitted(j, r)[0], -j))
            score, amplitude = fitted(j, r)
            if best is None or score > best[0]:
                best = (score, float(starts[j]), r, amplitude)
        assert best is not None
        score, start, r, amplitude = best
        explained = min(1.0, score / var0)
        ripple = 2.0 * amplitude
        faint = min(1.0, ripple / s.min_ripple_cmh2o)
        g = _template(t, start, r * period, period)
        plain = np.ones_like(w)
        _, rest0 = _weighted_residual(trend, y, plain)
        _, rest1 = _weighted_residual(np.column_stack([trend, g]), y, plain)
        var_plain = float(np.sum(rest0**2))
        consistent = 1.0 - float(np.sum(rest1**2)) / var_plain if var_plain > 1e-12 else 0.0
        if ripple > s.max_ripple_cmh2o:
            faint = 0.0
        self._timing = (float(t_end + start), float(r * period), float(period))
        stable = self._stability(t_end, t_end + start, period)
        est = BreathEstimate(t_end, BreathPhase.UNKNOWN, float(max(0.0, min(explained, consistent)) * faint * stable),
                             float(60.0 * f), float(ripple), None, None)
        return self._at(est, t_end)


def resting(seconds: float, bpm: float, inhale: float, ripple: float, noise: float, seed: int,
            pauses: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A resting probe at 200 Hz: breaths with a little wobble, sensor noise, a slow drift, and
    `pauses` stretches the coach leaves out (a squeeze between rests), each at its own level."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, seconds, 0.005) + rng.uniform(0.0, 0.1)
    period = 60.0 / bpm * (1 + 0.03 * np.sin(2 * np.pi * t / 37.0))
    phase = np.cumsum(0.005 / period) + rng.uniform()
    tau = np.mod(phase, 1.0)
    y = np.where(tau < inhale, 0.5 * (1 - np.cos(np.pi * tau / inhale)),
                 0.5 * (1 + np.cos(np.pi * (tau - inhale) / (1 - inhale))))
    p = 30.0 + ripple * y + rng.normal(0.0, noise, len(t)) + 0.01 * t
    keep = np.ones(len(t), bool)
    for _ in range(pauses):
        a = rng.uniform(5.0, seconds - 15.0)
        keep &= ~((t >= a) & (t < a + rng.uniform(1.0, 8.0)))
        p[t >= a] += rng.normal(0.0, 0.5)  # the resting level after a squeeze differs a little
    return t[keep], p[keep]


def both_follow(t: np.ndarray, p: np.ndarray, detector_settings: BreathSettings | None = None, last_s: float = 6.0):
    """Feed the detector and the reference as the control loop does (every 20 ms); the pairs
    of estimates at each fit in the last `last_s` seconds (the reference fits plainly there)."""
    fast, plain = BreathDetector(detector_settings), ReferenceDetector(detector_settings)
    pairs = []
    for k in range(0, len(t), 4):
        fast.add(t[k : k + 4], p[k : k + 4])
        plain.add(t[k : k + 4], p[k : k + 4])
        plain.plain = t[k] > t[-1] - last_s
        before = fast._cached
        a, b = fast.estimate(), plain.estimate()
        if plain.plain and a is not before:
            pairs.append((a, b))
    return pairs


def assert_same_estimate(a: BreathEstimate, b: BreathEstimate) -> None:
    """Same rate, ripple and trust; the same breath timing (when a breath starts, a period apart).

    The predicted next in- and out-breath may differ by a whole breath where the fit's start
    falls on the estimate's own time within rounding: there both readings are right.
    """
    assert (a.breaths_per_minute is None) == (b.breaths_per_minute is None)
    if a.breaths_per_minute is None or b.breaths_per_minute is None:
        return
    # Rounding moves the rate by about 1e-14 of itself; leaving out the rate fit's ridge, by 1e-9.
    assert a.breaths_per_minute == pytest.approx(b.breaths_per_minute, rel=1e-10)
    assert a.ripple_cmh2o == pytest.approx(b.ripple_cmh2o, rel=1e-8, abs=1e-12)
    assert a.confidence == pytest.approx(b.confidence, abs=1e-8)
    period = 60.0 / b.breaths_per_minute
    for mine, theirs in ((a.next_in_s, b.next_in_s), (a.next_out_s, b.next_out_s)):
        assert mine is not None and theirs is not None
        apart = abs(mine - theirs)
        assert min(apart, abs(apart - period)) < 1e-7
        if apart < 1e-7:
            continue
        assert min(abs(mine - a.t), abs(theirs - a.t)) < 1e-7  # only on the estimate's own time
    if abs(a.next_in_s - b.next_in_s) < 1e-7 and abs(a.next_out_s - b.next_out_s) < 1e-7:
        assert a.phase is b.phase


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bpm=st.floats(5.0, 24.0),
    inhale=st.floats(0.3, 0.55),
    ripple=st.floats(0.8, 4.0),
    noise=st.floats(0.0, 0.3),
    pauses=st.integers(0, 3),
    seed=st.integers(0, 2**31),
)
def test_the_quick_breath_fit_reads_a_breath_as_the_plain_fit_does(bpm, inhale, ripple, noise, pauses, seed):
    t, p = resting(45.0, bpm, inhale, ripple, noise, seed, pauses)
    pairs = both_follow(t, p)
    assert len(pairs) >= 5
    assert any(a.breaths_per_minute is not None for a, _ in pairs)
    for a, b in pairs:
        assert_same_estimate(a, b)


@pytest.mark.parametrize("other", [BreathSettings(bpm_step=0.35), BreathSettings(harmonics=2)])
def test_other_rate_fits_are_read_as_the_plain_fit_reads_them(other):
    """A rate grid with no whole number of table angles per bin (cosines computed, not kept),
    and a rate fit with a second harmonic (every rate's equations solved whole)."""
    assert (BreathDetector(other)._ring is None) == (other.bpm_step != BreathSettings().bpm_step)
    t, p = resting(40.0, 9.0, 0.4, 1.8, 0.2, seed=3, pauses=1)
    pairs = both_follow(t, p, other, last_s=3.0)
    assert pairs and all(a.breaths_per_minute is not None for a, _ in pairs)
    for a, b in pairs:
        assert_same_estimate(a, b)


def test_the_kept_harmonic_columns_are_the_cosines_of_the_samples_times():
    """Columns kept from fit to fit (across a pause, and after a reset) are cos and sin of
    2πft and 2·2πft for every rate f, from one common origin in time per rate."""
    det = BreathDetector()
    t, p = resting(70.0, 10.0, 0.4, 1.8, 0.2, seed=1, pauses=2)
    for k in range(0, len(t), 4):
        det.add(t[k : k + 4], p[k : k + 4])
        det.estimate()
        if k == len(t) // 2:
            det.reset()
    times = np.array(det._t)
    assert det._ring is not None and len(times) == det._ring.shape[1]
    assert np.max(np.diff(times)) > 0.5  # the window holds a pause
    ring = det._ring
    cols = (det._appended - len(times) + np.arange(len(times))) % ring.shape[1]
    n_f = len(det._freqs)
    cos, sin, cos2, sin2 = (ring[i * n_f : (i + 1) * n_f, cols] for i in range(4))
    # The angle at each sample less 2πft is the same for all samples (one origin per rate).
    offset = np.angle((cos + 1j * sin) * np.exp(-2j * np.pi * det._freqs[:, None] * times[None, :]))
    spread = np.angle(np.exp(1j * (offset - offset[:, :1])))
    assert np.max(np.abs(spread)) < 1e-8
    assert np.allclose(cos2, np.cos(2 * np.arctan2(sin, cos)), atol=1e-9)
    assert np.allclose(sin2, np.sin(2 * np.arctan2(sin, cos)), atol=1e-9)
