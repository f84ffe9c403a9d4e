"""From raw pressure to what the coach needs: smoothed strength, contractions, rep metrics.

The smoother is a One Euro filter (Casiez et al. 2012): heavy smoothing at rest, little
lag while the pressure moves, so the live tone is both calm and quick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

HELD_FRACTION = 0.8  # "at target" means within 20 % of the level asked: breath ripple alone moves ±5 %MVC


class OneEuroFilter:
    """Adaptive low-pass filter; `min_cutoff_hz` sets rest jitter, `beta` the speed-up.

    `__call__` filters one sample, `run` a block of them: the same arithmetic in the same
    order, so both give the same floats (tests/test_signal.py holds them to the textbook form).
    """

    def __init__(self, rate_hz: float, min_cutoff_hz: float = 1.5, beta: float = 0.2,
                 d_cutoff_hz: float = 1.0) -> None:
        self.rate_hz = rate_hz
        self.min_cutoff_hz = min_cutoff_hz
        self.beta = beta
        self._te = 1.0 / rate_hz  # the sample period, as the textbook's alpha divides by it
        self._a_d = self._alpha(d_cutoff_hz)
        self._x: float | None = None
        self._dx = 0.0

    def _alpha(self, cutoff_hz: float) -> float:
        tau = 1.0 / (_TWO_PI * cutoff_hz)
        return 1.0 / (1.0 + tau / self._te)

    def reset(self) -> None:
        self._x = None
        self._dx = 0.0

    def __call__(self, x: float) -> float:
        prev = self._x
        if prev is None:
            self._x = x
            return x
        d = self._dx
        d += self._a_d * ((x - prev) * self.rate_hz - d)
        self._dx = d
        # _alpha(cutoff), written out: this runs at every sample.
        a = 1.0 / (1.0 + (1.0 / (_TWO_PI * (self.min_cutoff_hz + self.beta * abs(d)))) / self._te)
        out = prev + a * (x - prev)
        self._x = out
        return out

    def run(self, xs: Iterable[float]) -> list[float]:
        """Filter a block of samples in order: `[self(x) for x in xs]`, without a call per sample."""
        prev = self._x
        if prev is None:
            return [self(x) for x in xs]  # the first sample passes as it is
        d, a_d, rate, min_cutoff, beta, te = self._dx, self._a_d, self.rate_hz, self.min_cutoff_hz, self.beta, self._te
        out: list[float] = []
        append = out.append
        for x in xs:
            d += a_d * ((x - prev) * rate - d)
            prev = prev + 1.0 / (1.0 + (1.0 / (_TWO_PI * (min_cutoff + beta * abs(d)))) / te) * (x - prev)
            append(prev)
        self._x = prev
        self._dx = d
        return out


_TWO_PI = 2 * math.pi  # as `2 * math.pi * f` groups it: (2 * math.pi) * f


class ContractionDetector:
    """Onset/offset of a contraction with hysteresis, in % of MVC.

    Onset when strength rises above `on_pct`; offset only once it has stayed below
    `off_pct` for `min_off_s`, so breath ripple, footsteps and noise around a
    threshold do not chatter.
    """

    def __init__(self, on_pct: float = 15.0, off_pct: float = 8.0, min_off_s: float = 0.4) -> None:
        if off_pct >= on_pct:
            raise ValueError("off threshold must be below the on threshold")
        self.on_pct = on_pct
        self.off_pct = off_pct
        self.min_off_s = min_off_s
        self.active = False
        self.onsets: list[float] = []
        self.offsets: list[float] = []
        self._below_since: float | None = None

    def update(self, t: float, strength_pct: float) -> bool | None:
        """Feed one value; returns True at an onset, False at an offset, None otherwise."""
        if not self.active:
            if strength_pct >= self.on_pct:
                self.active = True
                self._below_since = None
                self.onsets.append(t)
                return True
            return None
        if strength_pct > self.off_pct:
            self._below_since = None
            return None
        if self._below_since is None:
            self._below_since = t
        if t - self._below_since >= self.min_off_s:
            self.active = False
            self.offsets.append(self._below_since)
            self._below_since = None
            return False
        return None


@dataclass(frozen=True)
class RepMetrics:
    """How one repetition went, in the clinic's terms."""

    peak_cmh2o: float  # highest squeeze above the rest baseline
    peak_pct: float  # the same as % of MVC
    time_to_peak_s: float  # from the contract cue until 90 % of the peak is reached (a plateau's argmax is noise)
    held_s: float  # seconds at or above 80 % of the level asked for (the tolerance band), in hold/move phases
    hold_asked_s: float  # seconds of hold/move asked for
    steadiness_pct: float  # standard deviation of strength during the holds (%MVC); lower is steadier
    release_complete: bool  # let go 1.5 s into the rest: within 2.5 cmH2O of rest, or < 10 %MVC and < 1/4 of the peak
    onset_s: float | None  # from the contract cue to the detected onset
    mean_hold_pct: float  # mean strength during the holds
    contractions: int = 0  # separate contractions seen (more than one: let go and started again)
    # The highest pressure came with a movement (knee lift, squat), not the squeeze: belly
    # pressure from the legs. The peak above is then the highest outside the movement.
    artefact: bool = False


# A movement's peak this far above the squeeze's own (%MVC) is the belly, not the floor: the
# patient is asked to keep the level while the leg moves, not to squeeze harder.
ARTEFACT_MARGIN_PCT = 5.0

# The release is judged when the coach looks at it (appliance.sensor.technique: 1.5 s into the
# rest, the last half second's mean; still up by more than 2.5 cmH2O and a quarter of the
# squeeze = not let go), so the stored `release_complete` and the spoken "Laat helemaal los."
# agree; the stored one also counts 10 %MVC or more as not let go, but never within 2.5 cmH2O
# of rest: a weak floor's MVC of 13 cmH2O put a calm breath's 1.5 cmH2O ripple above 10 %.
# At the end of the rest, as before, a late release had always come down by then.
RELEASE_LOOK_S = 1.5
RELEASE_WINDOW_S = 0.5
RELEASE_MAX_PCT = 10.0
RELEASE_STILL_MIN_CMH2O = 2.5
RELEASE_STILL_FRACTION = 0.25


@dataclass
class RepRecorder:
    """Collects one repetition's strength samples with the phase each belongs to."""

    contract_at: float | None = None
    t: list[float] = field(default_factory=list)
    pct: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)  # level asked for (0 when not holding)
    relaxing: list[bool] = field(default_factory=list)
    moving: list[bool] = field(default_factory=list)  # in a move phase (knee lift, squat)
    contractions: int = 0  # onsets counted by the session's ContractionDetector

    def add(self, t: float, pct: float, hold_target_pct: float, relaxing: bool, moving: bool = False) -> None:
        self.t.append(t)
        self.pct.append(pct)
        self.target.append(hold_target_pct)
        self.relaxing.append(relaxing)
        self.moving.append(moving)

    def add_block(self, t: list[float], pct: list[float], hold_target_pct: float, relaxing: bool,
                  moving: bool = False) -> None:
        """`add` for each (t, pct) pair, all in the same phase."""
        n = len(t)
        self.t.extend(t)
        self.pct.extend(pct)
        self.target.extend([hold_target_pct] * n)
        self.relaxing.extend([relaxing] * n)
        self.moving.extend([moving] * n)

    def _peak_index(self) -> tuple[int, bool]:
        """The squeeze's peak and whether a higher one during movement was an artefact."""
        peak_i = max(range(len(self.pct)), key=self.pct.__getitem__)
        still = [i for i, m in enumerate(self.moving) if not m]
        if not self.moving[peak_i] or not still:
            return peak_i, False
        still_i = max(still, key=self.pct.__getitem__)
        if self.pct[peak_i] - self.pct[still_i] > ARTEFACT_MARGIN_PCT:
            return still_i, True
        return peak_i, False

    def _released(self, start: float, peak_pct: float, mvc_cmh2o: float, dt: float) -> bool:
        """Let go by RELEASE_LOOK_S into the rest (the relaxed samples after the squeeze's last)."""
        last_active = max((i for i, r in enumerate(self.relaxing) if not r), default=None)
        if last_active is None or self.t[last_active] < start:
            return False
        rest = list(zip(self.t[last_active + 1:], self.pct[last_active + 1:], strict=True))
        if not rest:
            return False
        look = rest[0][0] + RELEASE_LOOK_S
        window = [p for t, p in rest if t <= look + 1e-9][-max(1, round(RELEASE_WINDOW_S / dt)):]
        still = sum(window) / len(window)
        still_cmh2o = still * mvc_cmh2o / 100.0
        if still_cmh2o <= RELEASE_STILL_MIN_CMH2O:
            return True  # within a breath's ripple of the resting pressure, however weak the MVC
        return still < RELEASE_MAX_PCT and still_cmh2o <= RELEASE_STILL_FRACTION * peak_pct * mvc_cmh2o / 100.0

    def _reach(self, level: float, start: float, default: float) -> float:
        """When the strength first reaches `level` after `start`."""
        return next((t for t, p in zip(self.t, self.pct, strict=True) if t >= start and p >= level), default)

    def metrics(self, mvc_cmh2o: float, dt: float, onset_pct: float = 15.0) -> RepMetrics:
        if not self.pct:
            return RepMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False, None, 0.0)
        start = self.contract_at if self.contract_at is not None else self.t[0]
        peak_i, artefact = self._peak_index()
        peak_pct = self.pct[peak_i]
        held = asked = 0.0
        hold_vals: list[float] = []
        for p, tgt in zip(self.pct, self.target, strict=True):
            if tgt > 0:
                asked += dt
                hold_vals.append(p)
                if p >= HELD_FRACTION * tgt:
                    held += dt
        if hold_vals:
            mean = sum(hold_vals) / len(hold_vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in hold_vals) / len(hold_vals))
        else:
            mean = sd = 0.0
        onset = next((t - start for t, p in zip(self.t, self.pct, strict=True)
                      if t >= start and p >= onset_pct), None)
        release_complete = self._released(start, peak_pct, mvc_cmh2o, dt)
        return RepMetrics(
            peak_cmh2o=round(peak_pct * mvc_cmh2o / 100.0, 2),
            peak_pct=round(peak_pct, 1),
            time_to_peak_s=round(max(0.0, self._reach(0.9 * peak_pct, start, self.t[peak_i]) - start), 2),
            held_s=round(held, 2),
            hold_asked_s=round(asked, 2),
            steadiness_pct=round(sd, 2),
            release_complete=release_complete,
            onset_s=None if onset is None else round(onset, 2),
            mean_hold_pct=round(mean, 1),
            contractions=self.contractions,
            artefact=artefact,
        )


def oxford_band(mvc_cmh2o: float) -> str:
    """Modified Oxford band by manometric squeeze (Angelo et al. 2017)."""
    if mvc_cmh2o < 7.5:
        return "none"
    if mvc_cmh2o <= 14.5:
        return "very_weak"
    if mvc_cmh2o <= 26.5:
        return "weak"
    if mvc_cmh2o <= 41.5:
        return "moderate"
    if mvc_cmh2o <= 60.5:
        return "good"
    return "strong"
