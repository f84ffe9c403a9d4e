"""Breathing read from the probe's resting ripple: phase, rate, and knowing when it is unclear."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.coach.pacing import BreathFollower
from appliance.sensor.breath import BreathDetector, BreathEstimate, BreathPhase
from appliance.simulation.session import simulate

CONFIDENT = 0.6


def breathing(seconds, inhale_s=4.0, exhale_s=6.0, jitter=0.0, ripple=1.8, noise=0.3, rest=30.0, rate_hz=100.0, seed=0):
    """A resting probe: half-cosine rise on each in-breath, fall on each out-breath (cmH2O)."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, seconds, 1.0 / rate_hz)
    y = np.zeros_like(t)
    transitions = []
    start = 0.0
    while start < seconds:
        i = inhale_s * (1 + rng.uniform(-jitter, jitter))
        e = exhale_s * (1 + rng.uniform(-jitter, jitter))
        transitions += [(start, BreathPhase.IN), (start + i, BreathPhase.OUT)]
        m = (t >= start) & (t < start + i)
        y[m] = ripple * 0.5 * (1 - np.cos(np.pi * (t[m] - start) / i))
        m = (t >= start + i) & (t < start + i + e)
        y[m] = ripple * 0.5 * (1 + np.cos(np.pi * (t[m] - start - i) / e))
        start += i + e
    return t, rest + y + rng.normal(0.0, noise, len(t)), transitions


def follow(t, y, chunk=5):
    """Feed the detector as the control loop would (every 50 ms); the estimate after each read."""
    det = BreathDetector()
    out = []
    for k in range(0, len(t), chunk):
        det.add(t[k : k + chunk], y[k : k + chunk])
        out.append(det.estimate(t[min(k + chunk, len(t)) - 1]))
    return out


@pytest.mark.parametrize(("inhale_s", "exhale_s", "seed"), [(4.0, 6.0, 1), (2.0, 3.0, 2), (6.0, 9.0, 3), (3.0, 4.5, 4)])
def test_clear_ripple_phase_is_found_within_300_ms_of_each_transition(inhale_s, exhale_s, seed):
    t, y, truth = breathing(100.0, inhale_s, exhale_s, jitter=0.02, seed=seed)
    estimates = [e for e in follow(t, y) if 30.0 <= e.t <= 95.0]
    edges = np.array([w for w, _ in truth])
    phases = [p for _, p in truth]

    def true_phase(when):
        return phases[int(np.searchsorted(edges, when, side="right")) - 1]

    # Where the detector is not confident the coach keeps its pace: a fallback, not an error.
    confident = [e for e in estimates if e.confidence > CONFIDENT]
    assert len(confident) >= 0.6 * len(estimates)
    # Where it is, it must say the true phase from 300 ms after each transition on.
    judged = [e for e in confident if np.min(np.abs(edges - e.t)) > 0.3 or true_phase(e.t - 0.3) is true_phase(e.t)]
    wrong = [round(e.t, 2) for e in judged if e.phase is not true_phase(e.t)]
    assert len(wrong) <= 0.02 * len(judged), f"wrong phase at {wrong}"


def test_rate_and_next_out_breath_are_predicted():
    t, y, truth = breathing(80.0, 2.5, 3.5, jitter=0.0, noise=0.2, seed=5)
    fed = t <= 60.0
    t, y = t[fed], y[fed]
    det = BreathDetector()
    for k in range(0, len(t), 25):  # the control loop asks as the samples arrive
        det.add(t[k : k + 25], y[k : k + 25])
        det.estimate()
    est = det.estimate()
    assert est.confidence > CONFIDENT
    assert est.breaths_per_minute == pytest.approx(10.0, abs=0.3)
    assert est.ripple_cmh2o == pytest.approx(1.8, rel=0.2)
    outs = [w for w, p in truth if p is BreathPhase.OUT and w > t[-1]]
    assert est.next_out_s == pytest.approx(outs[0], abs=0.3)
    later = det.estimate(now=t[-1] + 10.0)  # two breaths on: the prediction carries forward
    outs_later = [w for w, p in truth if p is BreathPhase.OUT and w > t[-1] + 10.0]
    assert later.next_out_s == pytest.approx(outs_later[0], abs=0.5)


@pytest.mark.parametrize(
    "case",
    ["irregular", "faint", "no_breath", "contractions"],
)
def test_unclear_ripple_is_not_trusted(case):
    if case == "irregular":
        t, y, _ = breathing(90.0, 3.0, 4.0, jitter=0.4, seed=7)
    elif case == "faint":
        t, y, _ = breathing(90.0, ripple=0.15, noise=0.3, seed=8)
    elif case == "no_breath":
        t, y, _ = breathing(90.0, ripple=0.0, noise=0.3, seed=9)
    else:  # 5 s squeezes of 30 cmH2O every 12 s drown the ripple
        t, y, _ = breathing(90.0, seed=10)
        y = y + 30.0 * ((t % 12.0) < 5.0)
    estimates = follow(t, y)[600:]  # after 30 s
    confident = np.mean([e.confidence > CONFIDENT for e in estimates])
    assert confident < 0.2


def test_before_a_window_of_breathing_the_phase_is_unknown():
    t, y, _ = breathing(5.0)
    det = BreathDetector()
    det.add(t, y)
    est = det.estimate()
    assert est.phase is BreathPhase.UNKNOWN and est.confidence == 0.0


# --- cues on the patient's own breath -------------------------------------------------------


class StubDetector:
    def __init__(self, confidence, next_out_s, bpm=6.0):
        self.est = BreathEstimate(0.0, BreathPhase.IN, confidence, bpm, 1.5, next_out_s, None)

    def estimate(self, now=None):
        return self.est


def test_follower_ends_the_in_breath_on_the_patients_out_breath():
    follower = BreathFollower(StubDetector(0.9, next_out_s=104.0))
    assert follower.inhale_seconds(100.0, paced_s=4.0, min_s=2.5) == pytest.approx(4.0)
    follower = BreathFollower(StubDetector(0.9, next_out_s=103.2))
    assert follower.inhale_seconds(100.0, paced_s=4.0, min_s=2.5) == pytest.approx(3.2)
    assert follower.decisions[-1][1] is True


def test_follower_takes_the_next_out_breath_when_the_first_is_too_soon_for_the_cue():
    follower = BreathFollower(StubDetector(0.9, next_out_s=101.0, bpm=20.0))  # 3 s breaths
    assert follower.inhale_seconds(100.0, paced_s=4.0, min_s=2.5) == pytest.approx(4.0)


@pytest.mark.parametrize(("confidence", "next_out"), [(0.3, 103.0), (0.9, None), (0.9, 109.0)])
def test_follower_keeps_the_paced_rhythm_when_the_breath_is_unclear_or_far(confidence, next_out):
    follower = BreathFollower(StubDetector(confidence, next_out_s=next_out))
    assert follower.inhale_seconds(100.0, paced_s=4.0, min_s=2.5) == 4.0
    assert follower.decisions[-1][1] is False


def cue_errors(patient, seeds=(5,)):
    followed, paced, decisions = [], [], 0
    for seed in seeds:
        result = simulate(patient=patient, seed=seed, max_seconds=600.0, fault_rate=0.0, programme="leaflet")
        outs = np.array([t for t, k in result.floor.true_breath_transitions if k == "out"])
        # Decisions are in clock time, the floor's breaths in session seconds.
        t0 = result.session.t0
        for now, f, s in result.session.breath_follower.decisions:
            (followed if f else paced).append(np.min(np.abs(outs - (now - t0 + s))))
        decisions += len(result.session.breath_follower.decisions)
    return np.array(followed), np.array(paced), decisions


@pytest.mark.parametrize(
    ("patient", "seeds"), [("quick_breather", range(5, 9)), ("calm_breather", range(5, 13))]
)
def test_contract_cues_land_on_a_regular_breathers_out_breath(patient, seeds):
    # Pooled over seeds: the calm breather's breath is clear enough to follow in only 0-3 of
    # a session's 22 decisions in its first ten minutes (how many depends on how her rhythm
    # meets the coach's rests), so one seed is too few to measure how well they land. Since
    # the day plan and the coach's breathing through the holds reshaped those ten minutes,
    # about one decision in 24 is followed (seeds 5-16: 11 of 264), so she needs eight seeds
    # for the four followed cues the bound below asks for.
    followed, paced, _ = cue_errors(patient, seeds=tuple(seeds))
    assert len(followed) >= 4
    assert np.mean(followed <= 0.35) >= 0.8, np.round(followed, 2)
    assert np.median(followed) < np.median(paced)  # paced cues fall anywhere in her breath


def test_an_irregular_breather_gets_the_paced_rhythm():
    followed, _, decisions = cue_errors("irregular_breather")
    assert decisions >= 10
    assert len(followed) <= 0.15 * decisions


def test_the_breath_fit_gathers_the_cosines_it_would_compute():
    """The breath fit gathers its cosines from tables on the bin and timing grids; off those
    grids (or for any window) they must be the cosines the formulas give."""
    from appliance.sensor.breath import _Templates

    det = BreathDetector()
    t = -0.1 * np.r_[np.arange(0, 120), np.arange(150, 240)][::-1]  # a window with a gap
    period = 7.3
    starts = np.arange(-period, 0.0, det.settings.timing_step_s)
    fractions = det.settings.inhale_fractions
    table = _Templates(t, starts, period, fractions, det.settings.timing_step_s, 0.1)
    direct = _Templates(t + 1e-4, starts, period, fractions, det.settings.timing_step_s, 0.1)  # off the grid
    assert table._table is not None and direct._table is None
    idx = np.arange(0, len(starts), 3)
    tau = np.mod(t[None, :] - starts[idx][:, None], period)
    for i, r in enumerate(fractions):
        rise = r * period
        expected = np.where(tau < rise, -np.cos(np.pi * tau / rise), np.cos(np.pi * (tau - rise) / (period - rise)))
        assert np.allclose(table.at(idx)[i], expected, atol=1e-9)
        assert np.allclose(table.at(np.tile(idx, (len(fractions), 1)))[i], expected, atol=1e-9)
        assert np.allclose(direct.at(idx)[i], expected, atol=2e-3)  # shifted by 0.1 ms
    # The rates' cosines are kept per sample from fit to fit: tests/test_breath_fit.py.
