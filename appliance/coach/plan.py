"""The session's plan: segments of phases and prompts, placed on the session clock.

`Planning` is the part of `appliance.coach.session.Session` that turns the programme,
the pace and the phrase timings into `Segment`s: a repetition, a calibration, speech.
It only plans; running the plan is the session's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from appliance.coach.kinds import CONTRACTING, HOLDING, SPEECH_PHASE, SegmentKind, SessionPhase
from appliance.coach.programme import Exercise, Motion, Phase, PhaseKind, Programme
from appliance.sensor.signal import RepRecorder, oxford_band

if TYPE_CHECKING:
    from appliance.coach.pacing import Pace
    from appliance.voice.phrases import Catalogue

# Calibration (Modified Oxford procedure: best of three maximal contractions held 3-5 s).
CALIBRATION_REST_S = 8.0
CALIBRATION_SQUEEZES = 3
CALIBRATION_SQUEEZE_S = 5.0
CALIBRATION_RECOVER_S = 8.0
GAP_S = 0.35  # silence between two prompts


class PhraseTiming(Protocol):
    def duration(self, key: str) -> float: ...

    def keyword_offset(self, key: str) -> float: ...


@dataclass
class PlannedPhase:
    kind: SessionPhase
    start: float
    end: float
    level_pct: float = 0.0
    on_exhale: bool = False
    motion: Motion = Motion.NONE

    @property
    def asks_contraction(self) -> bool:
        return self.kind in CONTRACTING

    @property
    def holding(self) -> bool:
        return self.kind in HOLDING and self.level_pct > 0


@dataclass
class Prompt:
    at: float
    key: str
    aligned: bool = False  # must start at `at` (its keyword lands on a transition)
    latest: float | None = None  # a flexible prompt may slide until here, else it is dropped


@dataclass
class Segment:
    """A stretch of the session planned in one go: an intro, a calibration, a repetition."""

    kind: SegmentKind
    start: float
    phases: list[PlannedPhase]
    prompts: list[Prompt]
    exercise_index: int | None = None
    rep: int | None = None
    phase_index: int = -1
    prompt_index: int = 0
    recorder: RepRecorder = field(default_factory=RepRecorder)
    probe_fault: bool = False  # the probe failed during this segment: metrics are not the patient's

    @property
    def end(self) -> float:
        return self.phases[-1].end if self.phases else self.start

    @property
    def current(self) -> PlannedPhase | None:
        return self.phases[self.phase_index] if 0 <= self.phase_index < len(self.phases) else None


@dataclass(frozen=True)
class Calibration:
    rest_cmh2o: float
    mvc_cmh2o: float

    @property
    def oxford_band(self) -> str:
        return oxford_band(self.mvc_cmh2o)


def _cue(ph: Phase, first: bool) -> str | None:
    """The phase's cue: the full one on the first repetition, the short one after."""
    return ph.say if first or not ph.say_again else ph.say_again


class Planning:
    """Plans the session's segments (mixed into `Session`, which owns the state below)."""

    programme: Programme
    cat: Catalogue
    timing: PhraseTiming
    pace: Pace
    t0: float
    rep: int
    exercise_index: int
    breath_follower: Any
    _busy_until: float

    @property
    def exercise(self) -> Exercise | None:
        if 0 <= self.exercise_index < len(self.programme.exercises):
            return self.programme.exercises[self.exercise_index]
        return None

    # --- a repetition ---------------------------------------------------------------------

    def _phase_seconds(self, ex: Exercise, ph: Phase) -> float:
        if ph.kind is PhaseKind.INHALE:
            return self.pace.inhale_s
        if ph.breaths:
            return self._breaths_seconds(ph)
        if ph.seconds is not None:
            return ph.seconds
        if ph.kind is PhaseKind.REST:
            return ex.rest_between_reps_s
        return self.pace.exhale_s  # on_exhale without a length: the whole out-breath

    def _breaths_seconds(self, ph: Phase) -> float:
        """A hold of `breaths` breaths: at the patient's own breathing when the probe shows it
        (she breathes freely while holding), else the pace; never over the phase's `max_seconds`."""
        assert ph.breaths is not None
        period = self.pace.breath_s
        detector = getattr(self.breath_follower, "detector", None)
        if detector is not None:
            est = detector.estimate()
            if est.confidence >= 0.75 and est.period_s:
                period = est.period_s
        seconds = ph.breaths * period
        return min(seconds, ph.max_seconds) if ph.max_seconds is not None else seconds

    def _plan_rep(self, t: float) -> Segment:
        ex = self.exercise
        assert ex is not None
        phases: list[PlannedPhase] = []
        aligned: list[Prompt] = []
        flexible: list[Prompt] = []
        start = t
        for i, ph in enumerate(ex.phases):
            dur = self._rep_phase_seconds(ex, i, start)
            phases.append(PlannedPhase(SessionPhase.of(ph.kind), start, start + dur,
                                       round(ph.level * ex.target_level_pct, 1), ph.on_exhale, ph.motion))
            self._place_cue(ph, start, dur, t, aligned, flexible)
            flexible.extend(self._counts_and_cautions(ex, ph, start, dur))
            start += dur
        flexible.extend(self._last_rep_cue(ex, phases))
        prompts = self._fit(aligned, flexible, t)
        return Segment(SegmentKind.REP, t, phases, prompts, self.exercise_index, self.rep)

    def _rep_phase_seconds(self, ex: Exercise, i: int, start: float) -> float:
        """A phase's length; an in-breath before an out-breath cue makes room for it."""
        ph = ex.phases[i]
        dur = self._phase_seconds(ex, ph)
        if ph.kind is PhaseKind.INHALE and i + 1 < len(ex.phases) and ex.phases[i + 1].on_exhale:
            room = self._inhale_room(ex, ph, ex.phases[i + 1], self.rep == 1)
            dur = max(dur, room)
            if self.breath_follower is not None:  # the patient's own out-breath, when clear
                dur = self.breath_follower.inhale_seconds(self.t0 + start, dur, room)
        return dur

    def _place_cue(self, ph: Phase, start: float, dur: float, t: float,
                   aligned: list[Prompt], flexible: list[Prompt]) -> None:
        """The phase's cue: on the transition when it must land there, else in a gap."""
        key = _cue(ph, self.rep == 1)
        if not key:
            return
        if ph.on_exhale or self.cat.keyword_prefix(key) or "^" in self.cat.raw(key):
            aligned.append(Prompt(max(t, start - self.timing.keyword_offset(key)), key, aligned=True))
        else:
            flexible.append(Prompt(start + 0.05, key, latest=start + 0.05 + max(0.5, dur * 0.5)))

    def _counts_and_cautions(self, ex: Exercise, ph: Phase, start: float, dur: float) -> list[Prompt]:
        prompts = []
        if ph.count and ph.seconds:
            for i in range(1, int(ph.seconds) + 1):
                prompts.append(Prompt(start + i - 1, f"count.{i}", latest=start + i - 1 + 0.25))
        for c in ex.cautions:
            if c.phase is ph.kind and self.rep in c.reps:
                prompts.append(Prompt(start + 0.3, c.phrase, latest=start + dur - 0.5))
        return prompts

    def _last_rep_cue(self, ex: Exercise, phases: list[PlannedPhase]) -> list[Prompt]:
        """'The last one' during the rest before an exercise's last repetition."""
        if self.rep == ex.repetitions - 1 and ex.repetitions > 2:
            rest = phases[-1]
            if rest.kind is SessionPhase.REST:
                return [Prompt(rest.start + 0.5, "cue.last_rep", latest=rest.end - 1.0)]
        return []

    def _inhale_room(self, ex: Exercise, inhale: Phase, contract: Phase, first: bool) -> float:
        """An in-breath long enough for its own cue and the lead of the out-breath cue."""
        own, nxt = _cue(inhale, first), _cue(contract, first)
        need = GAP_S
        if own:
            need += 0.05 + self.timing.duration(own)
        if nxt:
            need += self.timing.keyword_offset(nxt)
        return need

    def _fit(self, aligned: list[Prompt], flexible: list[Prompt], t: float) -> list[Prompt]:
        """Place prompts without overlap: aligned ones where they must be, the rest in gaps."""
        placed: list[tuple[float, float, Prompt]] = []
        busy = max(self._busy_until, t)
        for p in sorted(aligned, key=lambda p: p.at):
            start = max(p.at, busy) if p.at < busy and not placed else p.at
            if placed and start < placed[-1][1]:
                start = placed[-1][1]  # two aligned prompts too close: the later one waits
            end = start + self.timing.duration(p.key)
            placed.append((start, end, Prompt(start, p.key, aligned=True)))
        for p in sorted(flexible, key=lambda p: p.at):
            dur = self.timing.duration(p.key)
            at = max(p.at, busy)
            for s, e, _ in sorted(placed, key=lambda x: x[0]):
                if at < e + GAP_S * (not p.key.startswith("count.")) and at + dur > s - 0.05:
                    at = max(at, e + (0.05 if p.key.startswith("count.") else GAP_S))
            if p.latest is not None and at > p.latest:
                continue  # no room: a count or caution is better skipped than late
            placed.append((at, at + dur, Prompt(at, p.key)))
        placed.sort(key=lambda x: x[0])
        if placed:
            self._busy_until = max(self._busy_until, max(e for _, e, _ in placed))
        return [p for _, _, p in placed]

    # --- speech and calibration -----------------------------------------------------------

    def _plan_speech(self, kind: SegmentKind, keys: Sequence[str], t: float, tail_s: float = 0.8) -> Segment:
        prompts = []
        at = max(t, self._busy_until) + 0.2
        for key in keys:
            prompts.append(Prompt(at, key))
            at += self.timing.duration(key) + GAP_S
        self._busy_until = at
        end = max(at + tail_s, t + 0.5)
        return Segment(kind, t, [PlannedPhase(SPEECH_PHASE[kind], t, end)], prompts, self.exercise_index)

    def _calibration_phrase(self, key: str) -> str:
        """The maximal calibration's phrase, or its gentle form when the programme asks for one."""
        gentle = f"{key}_gentle"
        if self.programme.reference_squeeze_pct < 100.0 and self.cat.has(gentle):
            return gentle
        return key

    def _plan_calibration(self, t: float) -> Segment:
        # With a known MVC (the clinic's, or measured earlier) only the rest pressure is
        # measured: the probe's zero moves with every insertion, the strength does not.
        rest_only = self.programme.known_mvc_cmh2o is not None
        intro = "calibrate.intro_rest" if rest_only else self._calibration_phrase("calibrate.intro")
        speech = self._plan_speech(SegmentKind.INTRO, [intro], t, tail_s=0.2)
        t = speech.end
        phases = [PlannedPhase(SessionPhase.CALIBRATE_REST, t, t + CALIBRATION_REST_S)]
        prompts = speech.prompts + [Prompt(t + 0.1, "calibrate.rest")]
        start = t + CALIBRATION_REST_S
        for i in range(0 if rest_only else CALIBRATION_SQUEEZES):
            self._plan_squeeze(start, i, phases, prompts)
            start += CALIBRATION_SQUEEZE_S + CALIBRATION_RECOVER_S
        self._busy_until = max(self._busy_until, start)
        return Segment(SegmentKind.CALIBRATION, speech.start, speech.phases + phases, prompts)

    def _plan_squeeze(self, start: float, i: int, phases: list[PlannedPhase], prompts: list[Prompt]) -> None:
        """The i-th reference squeeze (from `start`) and its recovery, with their prompts."""
        squeeze_key = self._calibration_phrase("calibrate.squeeze")
        again_key = self._calibration_phrase("calibrate.again")
        released = start + CALIBRATION_SQUEEZE_S
        phases.append(PlannedPhase(SessionPhase.CALIBRATE_SQUEEZE, start, released,
                                   self.programme.reference_squeeze_pct))
        phases.append(PlannedPhase(SessionPhase.CALIBRATE_RELEASE, released, released + CALIBRATION_RECOVER_S))
        squeeze_at = start - self.timing.keyword_offset(squeeze_key)
        if i:
            again_at = squeeze_at - GAP_S - self.timing.duration(again_key)
            prompts.append(Prompt(again_at, again_key))
        prompts.append(Prompt(squeeze_at, squeeze_key))
        prompts.append(Prompt(released + 0.05, "calibrate.squeeze_release"))
