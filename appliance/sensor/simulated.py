"""A simulated pelvic floor: a patient who follows the coach's cues, imperfectly.

It listens to the coach's `phase` events like a patient listens to the prompts, reacts
after a short delay, rises and falls with realistic time constants, tires over
repetitions, breathes, drifts and is noisy, and now and then gets the technique wrong.
Seeded, so a simulated session is reproducible sample for sample.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from appliance.events import Event, Feedback
from appliance.sensor.base import ProbeStatus


class Fault(Enum):
    LATE_RELEASE = "late_release"  # lets go seconds late, and not completely
    PUSH_DOWN = "push_down"  # bears down instead of lifting: slow broad rise, breath held
    GIVE_UP = "give_up"  # lets go halfway through a hold
    BREATH_HOLD = "breath_hold"  # lifts correctly but stops breathing while holding
    ABDOMINAL = "abdominal"  # tightens the belly with the lift (seen on a second, abdominal channel)


@dataclass(frozen=True)
class PatientProfile:
    """One kind of patient, from the published manometry ranges (CLINICAL.md)."""

    name: str
    mvc_cmh2o: float  # true maximal squeeze above rest
    rest_cmh2o: float  # resting pressure on the probe above atmosphere
    rise_tau_s: float  # time constant of a contraction's rise
    fall_tau_s: float  # time constant of letting go
    reaction_s: float  # mean delay from cue to movement
    effort_ceiling: float  # the largest fraction of MVC they produce in exercises
    target_gain: float  # how closely they match the level asked for (1 = exactly)
    fatigue_per_s: float  # capacity lost per second at full activation
    recovery_per_s: float  # capacity regained per second at rest (fraction of the deficit)
    breath_ripple_cmh2o: float  # intra-abdominal pressure swing with each breath
    breath_irregularity: float  # 0 = metronomic; relative jitter of each breath's length
    noise_cmh2o: float  # sensor and body noise (SD)
    drift_cmh2o_per_min: float  # slow wander of the baseline (probe temperature, position)
    fault_rate: float  # probability that a repetition goes wrong with one of `faults`
    faults: tuple[Fault, ...] = ()
    # (in, out) seconds: she breathes at her own rhythm instead of the coach's pace.
    own_breath_s: tuple[float, float] | None = None


PROFILES: dict[str, PatientProfile] = {
    # Oxford "weak" band (14.6-26.5) lower edge, slow, tires quickly.
    "weak": PatientProfile("weak", 13.0, 28.0, 0.65, 0.6, 0.55, 0.95, 0.9, 0.006, 0.05,
                           1.5, 0.10, 0.35, 0.6, 0.10, (Fault.PUSH_DOWN, Fault.GIVE_UP)),
    # Mean MVC of 288 women: 35.1 cmH2O (Angelo et al. 2017).
    "average": PatientProfile("average", 35.0, 30.0, 0.35, 0.4, 0.45, 1.0, 1.0, 0.003, 0.08,
                              1.8, 0.08, 0.3, 0.4, 0.05, (Fault.LATE_RELEASE, Fault.GIVE_UP)),
    # Oxford "strong" (> 60.6).
    "strong": PatientProfile("strong", 65.0, 32.0, 0.25, 0.3, 0.35, 1.0, 1.05, 0.0015, 0.1,
                             2.0, 0.05, 0.3, 0.3, 0.02, (Fault.LATE_RELEASE,)),
    # Weeks after pelvic surgery: cautious, pain-inhibited, far below their maximum.
    "postop": PatientProfile("postop", 20.0, 26.0, 0.7, 0.7, 0.6, 0.35, 0.8, 0.005, 0.05,
                             1.5, 0.12, 0.35, 0.5, 0.05, (Fault.GIVE_UP,)),
}
# Patients who keep their own breathing rhythm, for cues timed on the breath read from the probe.
PROFILES.update({
    "calm_breather": replace(PROFILES["average"], name="calm_breather", own_breath_s=(3.5, 5.5),
                             breath_irregularity=0.02),
    "quick_breather": replace(PROFILES["average"], name="quick_breather", own_breath_s=(1.8, 2.7),
                              breath_irregularity=0.03),
    "irregular_breather": replace(PROFILES["average"], name="irregular_breather", own_breath_s=(3.0, 4.5),
                                  breath_irregularity=0.4),
})


def profile(name: str, faults: tuple[Fault, ...] = (), fault_rate: float | None = None) -> PatientProfile:
    """A named profile, optionally with faults forced on (`fault_rate` 1 = every repetition)."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown patient profile {name!r} (known: {', '.join(PROFILES)})") from None
    if faults:
        base = replace(base, faults=faults, fault_rate=0.3 if fault_rate is None else fault_rate)
    elif fault_rate is not None:
        base = replace(base, fault_rate=fault_rate)
    return base


class _Random(random.Random):
    """`random.Random`, naming the attribute where `gauss` keeps the second value of its pair."""

    gauss_next: float | None


class SimulatedPelvicFloor:
    """A `PressureSource` and a `Sink`: hears the coach's phases, produces cmH2O samples."""

    def __init__(self, patient: PatientProfile, seed: int = 0, sample_rate_hz: float = 100.0,
                 start: float = 0.0, inhale_s: float = 4.0, exhale_s: float = 6.0) -> None:
        self.patient = patient
        self.sample_rate_hz = sample_rate_hz
        self._dt = 1.0 / sample_rate_hz
        self._rng = _Random(seed)
        self._t = start  # time of the last produced sample
        self._a = 0.0  # muscle activation, fraction of true MVC
        self._capacity = 1.0  # 1 = fresh; falls with fatigue
        self._drift = 0.0
        self._alpha_rise = 1.0 - math.exp(-self._dt / patient.rise_tau_s)
        self._alpha_fall = 1.0 - math.exp(-self._dt / patient.fall_tau_s)
        self._drift_step = patient.drift_cmh2o_per_min / 60.0 * math.sqrt(self._dt) * 8.0
        # What the patient is doing: a plan of (from time, command) segments.
        self._u_from = 0.0  # command at plan start
        self._u_to = 0.0  # command at plan end
        self._plan_start = 0.0
        self._plan_end = 0.0
        self._motion = "none"
        self._fault: Fault | None = None
        self._fault_at = 0.0  # when a give-up happens
        self._breath_holding = False
        # Breathing: the patient breathes along with the coach's pace, with some jitter.
        self._inhale_s = inhale_s
        self._exhale_s = exhale_s
        self._breath_start = start
        if patient.own_breath_s is not None:
            self._inhale_s, self._exhale_s = patient.own_breath_s
        self._breath_len = (self._inhale_s, self._exhale_s)
        self._rep_key: tuple | None = None
        self.true_breath_transitions: list[tuple[float, str]] = []
        self._status = ProbeStatus.OK
        self._push = 0.0  # bearing-down pressure, cmH2O
        # A second channel on the belly, only for a patient who may tense it: the last read's
        # (times, cmH2O), as the probe gives it (appliance.sensor.probe).
        self.abdominal: tuple[list[float], list[float]] | None = (
            ([], []) if Fault.ABDOMINAL in patient.faults else None)
        self._steady: tuple[Any, ...] | None = None  # read_until's terms until the next phase

    # --- Sink: listening to the coach ----------------------------------------------------

    def emit(self, event: Event) -> None:
        self._steady = None  # read_until's terms, worked out again at the next read
        own = self.patient.own_breath_s is not None  # ignores the coach's breathing rhythm
        if event.kind == "setting" and event.data.get("setting") == "pace" and not own:
            self._inhale_s, self._exhale_s = event.data["value"]
        if event.kind != "phase":
            return
        d = event.data
        kind = d["phase"]
        start = d["start"] + max(0.1, self._rng.gauss(self.patient.reaction_s, 0.1))
        end = max(d["end"], start + 0.2)
        level = d.get("level_pct", 0.0) / 100.0
        rep_key = (d.get("exercise"), d.get("rep"))
        if kind.startswith("calibrate"):
            rep_key = (kind, d["start"])  # each of the three maximal squeezes goes right or wrong alone
        if rep_key != self._rep_key:
            self._rep_key = rep_key
            self._fault = None
            if self.patient.faults and self._rng.random() < self.patient.fault_rate:
                self._fault = self._rng.choice(self.patient.faults)
        if kind == "inhale" and not own:
            self._begin_breath(d["start"])
        elif kind == "contract" and d.get("on_exhale") and not own:
            self._breath_start = d["start"] - self._inhale_s
            self._breath_len = (self._inhale_s, self._exhale_s)
        self._motion = d.get("motion", "none")
        self._breath_holding = False
        if kind == "calibrate_squeeze" and level >= 0.999:
            target = 1.0  # a maximal effort: everything they have
        else:
            target = min(level * self.patient.target_gain, self.patient.effort_ceiling)
        if kind in ("contract", "hold", "move", "calibrate_squeeze"):
            self._plan(start, start, target)
            if self._fault is Fault.PUSH_DOWN and kind in ("contract", "hold", "move"):
                self._breath_holding = True
            if self._fault is Fault.BREATH_HOLD and kind in ("hold", "move"):
                self._breath_holding = True
            if self._fault is Fault.GIVE_UP and kind in ("hold", "move"):
                self._fault_at = start + (end - start) * self._rng.uniform(0.3, 0.6)
        elif kind == "release":
            if self._fault is Fault.LATE_RELEASE:
                self._plan(start + 2.0, end + 2.0, max(target, 0.3 * self._u_to))
            else:
                self._plan(start, end, target)
        else:  # inhale, rest, intro, calibrate_rest: relaxed
            if self._fault is Fault.LATE_RELEASE and kind == "rest":
                self._plan(start + 1.5, start + 4.0, 0.0)
            else:
                self._plan(start, start, 0.0)

    def feedback(self, fb: Feedback) -> None:
        return None

    def _plan(self, start: float, end: float, target: float) -> None:
        self._u_from = self._command_at(start)
        self._u_to = target
        self._plan_start = start
        self._plan_end = end

    def _begin_breath(self, t: float) -> None:
        jitter = self.patient.breath_irregularity
        self._breath_start = t
        self._breath_len = (
            self._inhale_s * (1 + self._rng.uniform(-jitter, jitter)),
            self._exhale_s * (1 + self._rng.uniform(-jitter, jitter)),
        )

    def _command_at(self, t: float) -> float:
        if t <= self._plan_start:
            return self._u_from
        if t >= self._plan_end:
            return self._u_to
        frac = (t - self._plan_start) / (self._plan_end - self._plan_start)
        return self._u_from + (self._u_to - self._u_from) * frac

    # --- PressureSource: what the probe reads ---------------------------------------------

    @property
    def status(self) -> ProbeStatus:
        return self._status

    def close(self) -> None:
        return None

    def read_until(self, t: float) -> tuple[list[float], list[float]]:
        """The samples due by `t`, one pass with the state in locals (the model step by step,
        as tests/test_simulated_floor.py's `read_plain` writes it, gives the same numbers)."""
        times: list[float] = []
        values: list[float] = []
        belly: list[float] = []
        dt = self._dt
        now = self._t  # time of the last produced sample
        limit = t + 1e-9
        if now + dt > limit:  # no sample due
            if self.abdominal is not None:
                self.abdominal = (times, belly)
            return times, values
        # The plain model written out: the state in locals, written back at the end; what does
        # not change until the coach's next event (`_steady_terms`) worked out once, the
        # breath's cycle until the next breath. Every expression keeps the plain form's
        # grouping (so its floats), and the random draws come in the same order:
        # random.gauss's Box-Muller pairs, drawn here, one pair per sample for the drift and
        # the noise.
        steady_terms = self._steady
        if steady_terms is None:
            steady_terms = self._steady = self._steady_terms()
        (plan_start, plan_end, u_from, u_to, du, span, bent, pushing, give_up_at, alpha_rise, alpha_fall,
         fatigue, recovery, rest, mvc, push_goal, push_decay, noise, drift_step, holding, held, half_ripple,
         steady, moves, abdominal, tensed_share) = steady_terms
        rng = self._rng
        rnd = rng.random
        pending = rng.gauss_next  # random.gauss's second value of a pair, not yet used
        a, capacity, push_p, drift = self._a, self._capacity, self._push, self._drift
        breath_start = self._breath_start
        inhale, exhale = self._breath_len
        cycle = inhale + exhale
        add_time, add_value = times.append, values.append
        while now + dt <= limit:
            now += dt
            # Command: the plan, with the technique faults bending it.
            if now <= plan_start:
                u = u_from
            elif now >= plan_end:
                u = u_to
            else:
                u = u_from + du * ((now - plan_start) / span)
            push = False
            if bent:  # a fault bends the plan
                push = pushing and u > 0.05
                if give_up_at is not None and now >= give_up_at:
                    u = 0.0
                if push:
                    u = 0.0  # no lift at all: the rise comes from bearing down
            u *= capacity
            a += (u - a) * (alpha_rise if u > a else alpha_fall)
            # Fatigue while working, recovery while resting.
            if a > 0.05:
                c = capacity - fatigue * a * dt
                capacity = c if c > 0.3 else 0.3
            else:
                capacity += (1.0 - capacity) * recovery * dt
            pressure = rest + a * mvc
            # Bearing down: a slow, broad rise of intra-abdominal pressure.
            if push:
                push_p += (push_goal - push_p) * dt / 1.5
            else:
                push_p *= push_decay
            pressure += push_p
            if holding:
                breath = held  # held in: pressure stays up
            else:
                tau = now - breath_start
                if tau >= cycle:  # a new breath: the method draws its length
                    breath = self._breath(now)
                    breath_start = self._breath_start
                    inhale, exhale = self._breath_len
                    cycle = inhale + exhale
                elif tau < inhale:  # diaphragm descends: abdominal pressure rises
                    breath = half_ripple * (1 - _cos(_PI * tau / inhale))
                else:
                    breath = half_ripple * (1 + _cos(_PI * (tau - inhale) / exhale))
            pressure += breath
            pressure += self._motion_artifact(now) if moves else steady
            # rng.gauss(0.0, drift_step), then rng.gauss(0.0, noise): a pair's two values,
            # or the pending one and the first of a new pair.
            x2pi = rnd() * _TWOPI
            g2rad = _sqrt(-2.0 * _log(1.0 - rnd()))
            if pending is None:
                z_drift = _cos(x2pi) * g2rad
                z_noise = _sin(x2pi) * g2rad
            else:
                z_drift = pending
                z_noise = _cos(x2pi) * g2rad
                pending = _sin(x2pi) * g2rad
            drift += (0.0 + z_drift * drift_step) - drift * dt / 120.0
            pressure += drift + (0.0 + z_noise * noise)
            add_time(now)
            add_value(pressure)
            if abdominal:
                tensed = 0.6 * a * mvc if tensed_share else 0.0
                if not holding and now - breath_start >= cycle:  # still behind: another breath
                    breath = self._breath(now)
                    breath_start = self._breath_start
                    inhale, exhale = self._breath_len
                    cycle = inhale + exhale
                rng.gauss_next = pending
                belly.append(10.0 + tensed + 0.3 * breath + rng.gauss(0.0, noise))
                pending = rng.gauss_next
        rng.gauss_next = pending
        self._t = now
        self._a = a
        self._capacity = capacity
        self._push = push_p
        self._drift = drift
        if abdominal:
            self.abdominal = (times, belly)
        return times, values

    def _steady_terms(self) -> tuple[Any, ...]:
        """What `read_until` needs that stays the same until the coach's next event."""
        p = self.patient
        dt = self._dt
        fault = self._fault
        u_from, u_to = self._u_from, self._u_to
        give_up_at = self._fault_at if fault is Fault.GIVE_UP and self._fault_at and u_to > 0 else None
        pushing = fault is Fault.PUSH_DOWN and u_to > 0.05
        return (self._plan_start, self._plan_end, u_from, u_to, u_to - u_from, self._plan_end - self._plan_start,
                pushing or give_up_at is not None, pushing, give_up_at, self._alpha_rise, self._alpha_fall,
                p.fatigue_per_s, p.recovery_per_s, p.rest_cmh2o, p.mvc_cmh2o, 0.45 * p.mvc_cmh2o, 1 - dt / 0.8,
                p.noise_cmh2o, self._drift_step, self._breath_holding, p.breath_ripple_cmh2o * 0.9,
                p.breath_ripple_cmh2o * 0.5, _MOTION_STEADY.get(self._motion, 0.0),
                self._motion in _MOTION_MOVING, self.abdominal is not None, fault is Fault.ABDOMINAL)

    def _breath(self, now: float) -> float:
        if self._breath_holding:
            return self.patient.breath_ripple_cmh2o * 0.9  # held in: pressure stays up
        inhale, exhale = self._breath_len
        tau = now - self._breath_start
        if tau >= inhale + exhale:  # the patient breathes on at their own rhythm
            self._begin_breath(self._breath_start + inhale + exhale)
            self.true_breath_transitions.append((self._breath_start, "in"))
            inhale, exhale = self._breath_len
            self.true_breath_transitions.append((self._breath_start + inhale, "out"))
            tau = now - self._breath_start
        a = self.patient.breath_ripple_cmh2o
        if tau < inhale:  # diaphragm descends: abdominal pressure rises
            return a * 0.5 * (1 - math.cos(math.pi * tau / inhale))
        return a * 0.5 * (1 + math.cos(math.pi * (tau - inhale) / exhale))

    def _motion_artifact(self, now: float) -> float:
        m = self._motion
        if m == "none":
            return 0.0
        if m == "knee_lift":
            return 3.0
        if m == "squat_back":
            return 2.0
        if m == "walk":
            return 1.5 * math.sin(2 * math.pi * 1.8 * now)
        if m == "hop":  # a landing every 0.5 s: a sharp 80 ms spike
            phase = now % 0.5
            return 25.0 * math.sin(math.pi * phase / 0.08) if phase < 0.08 else 0.0
        return 0.0


# `_motion_artifact` of the motions that do not change within a phase, and of those that do.
_MOTION_STEADY = {"none": 0.0, "knee_lift": 3.0, "squat_back": 2.0}
_MOTION_MOVING = frozenset({"walk", "hop"})
_TWOPI = 2.0 * math.pi  # random.TWOPI
_PI, _cos, _sin, _sqrt, _log = math.pi, math.cos, math.sin, math.sqrt, math.log
