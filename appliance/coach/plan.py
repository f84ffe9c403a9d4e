"""The session's plan: segments of phases and prompts, placed on the session clock.

`Planning` is the part of `appliance.coach.session.Session` that turns the programme,
the pace and the phrase timings into `Segment`s: a repetition, a calibration, speech.
It only plans; running the plan is the session's.

Prompts have a `Priority`. A correction outranks the routine cues: once it starts it is
heard whole (`Planning._make_room`): routine cues that would start during it are delayed
or dropped, and a cue aligned on a breath or a transition moves the rest of the segment
on (the phase lasts a little longer) rather than speaking over it. An answer to the patient
is heard whole too (`Planning._answer_at`): counts in its way are left out, routine cues
wait, and it waits for a phase cue or correction it would run into.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
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
MIN_HOLD_TO_BREATH_S = 1.5  # a hold before a squeeze on the out-breath lasts at least this
# A correction waits at most this long for a routine prompt to finish: with the 0.1 s gap it
# still starts within a second of the detection (a breath cue of ~1.4 s, caught 0.55 s in,
# ended 0.81 s later: at 0.8 the two were said over each other).
MAX_WAIT_S = 0.9
BREATH_CUES = ("breath.", "breath_counted.")  # key prefixes of the cues breathing with the patient


class Priority(IntEnum):
    """Who yields to whom when two prompts would overlap."""

    ROUTINE = 0  # the programme's cues, counts, cautions, answers
    CORRECTION = 1  # a correction of what the patient is doing now: never cut off


@dataclass(frozen=True)
class Heard:
    """A prompt as it was handed to the speaker: when it starts and ends."""

    start: float
    end: float
    key: str
    priority: Priority = Priority.ROUTINE


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
    priority: Priority = Priority.ROUTINE


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
    target_pct: float | None = None  # a repetition's target (%MVC) as planned

    @property
    def end(self) -> float:
        return self.phases[-1].end if self.phases else self.start

    @property
    def current(self) -> PlannedPhase | None:
        return self.phases[self.phase_index] if 0 <= self.phase_index < len(self.phases) else None

    def shift_from(self, at: float, delta: float) -> None:
        """Move every phase not yet entered that starts at or after `at`, and the prompts
        still to come from `at`, `delta` seconds later; the phase before them lasts longer."""
        first = None
        for i, ph in enumerate(self.phases):
            if i > self.phase_index and ph.start >= at - 1e-9:
                if first is None:
                    first = i
                ph.start += delta
                ph.end += delta
        if first is not None and first > 0:
            self.phases[first - 1].end += delta
        for p in self.prompts[self.prompt_index:]:
            if p.at >= at - 1e-9:
                p.at += delta


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
    quiet: bool
    _busy_until: float
    _segment: Segment | None
    _out_breath: float | None

    if TYPE_CHECKING:  # provided by Rating
        def target_pct(self, index: int | None = None) -> float: ...

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
        target = self.target_pct()
        self._out_breath = None  # the rep's first out-breath: the breath cues keep its rhythm
        for i, ph in enumerate(ex.phases):
            dur = self._rep_phase_seconds(ex, i, start)
            if ph.on_exhale and self._out_breath is None:
                self._out_breath = start
            phases.append(PlannedPhase(SessionPhase.of(ph.kind), start, start + dur,
                                       round(ph.level * target, 1), ph.on_exhale, ph.motion))
            self._place_cue(ph, start, dur, t, aligned, flexible)
            flexible.extend(self._counts_and_cautions(ex, ph, start, dur))
            flexible.extend(self._breath_cues(ph, start, dur))
            start += dur
        flexible.extend(self._last_rep_cue(ex, phases))
        prompts = self._fit(aligned, flexible, t)
        return Segment(SegmentKind.REP, t, phases, prompts, self.exercise_index, self.rep, target_pct=target)

    def _rep_phase_seconds(self, ex: Exercise, i: int, start: float) -> float:
        """A phase's length; an in-breath before an out-breath cue makes room for it, and a
        hold before a squeeze on the out-breath (ex4's floors) lasts until the next one."""
        ph = ex.phases[i]
        dur = self._phase_seconds(ex, ph)
        nxt = ex.phases[i + 1] if i + 1 < len(ex.phases) else None
        if ph.kind is PhaseKind.HOLD and nxt is not None and nxt.on_exhale and self._out_breath is not None:
            breath = self.pace.breath_s
            k = max(1, math.ceil((start + MIN_HOLD_TO_BREATH_S - self._out_breath) / breath))
            return self._out_breath + k * breath - start
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

    def _breath_cues(self, ph: Phase, start: float, dur: float) -> list[Prompt]:
        """Breathing with the patient through a hold: in and out on her rhythm (from the
        repetition's first out-breath), the breaths of a hold counted in breaths."""
        if ph.kind not in (PhaseKind.HOLD, PhaseKind.MOVE) or self.quiet:
            return []
        if ph.breaths:
            return self._counted_breath_cues(ph.breaths, start, dur)
        breath, inhale = self.pace.breath_s, self.pace.inhale_s
        origin = self._out_breath if self._out_breath is not None else start - inhale
        first = origin + breath - inhale  # the next in-breath after the out-breath
        while first < start + 0.5:
            first += breath
        prompts: list[Prompt] = []
        n = 0
        at = first
        while at < start + dur - 1.5:
            n += 1
            key = f"breath.in_{n}" if ph.breaths and n <= 5 else "breath.in_hold"
            prompts.append(Prompt(at, key, latest=at + 1.5))
            out = at + inhale
            if out < start + dur - 1.5:
                prompts.append(Prompt(out, "breath.out_hold", latest=out + 0.8))
            at += breath
        return prompts

    def _counted_breath_cues(self, breaths: int, start: float, dur: float) -> list[Prompt]:
        """A hold of `breaths` breaths, each in-breath counted and an out-breath between two,
        on the hold's own breath: its length over its breaths (the patient's free breathing,
        or shorter when the hold is capped, e.g. three breaths within 10 s). A short breath
        gets the short out-cue; a count that would run past the hold is left out."""
        period = dur / breaths
        inhale = period * self.pace.inhale_s / self.pace.breath_s
        out_key = "breath.out_hold"
        if self.timing.duration(out_key) + GAP_S > period - inhale:
            out_key = "breath_counted.out"
        lead = min(1.0, 0.3 * period)
        prompts: list[Prompt] = []
        for i in range(breaths):
            at = start + lead + i * period
            key = f"breath.in_{i + 1}" if i < 5 else "breath.in_hold"
            prompts.append(Prompt(at, key, latest=min(at + 1.5, start + dur - self.timing.duration(key))))
            if i + 1 < breaths:  # the out-breath before the next count, not after the last
                prompts.append(Prompt(at + inhale, out_key, latest=at + period))
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
        # Breathing with the patient first (it is timed on her breath), then the rest in gaps.
        for p in sorted(flexible, key=lambda p: (not p.key.startswith(BREATH_CUES), p.at)):
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

    # --- priorities -------------------------------------------------------------------------

    def _make_room(self, seg: Segment, start: float, end: float) -> list[str]:
        """Let a correction said from `start` to `end` be heard whole; returns the keys dropped.

        Prompts to come that would start before it ends: counts are dropped; other routine
        cues move after it if they fit before the next aligned cue (else are dropped); the
        first aligned cue in the way moves after it with the rest of the segment.
        """
        clear = end + GAP_S
        pending = sorted(seg.prompts[seg.prompt_index:], key=lambda p: p.at)
        kept: list[Prompt] = []
        dropped: list[str] = []
        for i, p in enumerate(pending):
            dur = self.timing.duration(p.key)
            if p.at >= clear - 1e-9 or p.at + dur <= start - 0.05 or p.priority is Priority.CORRECTION:
                kept.append(p)
                continue
            if p.aligned:
                delta = clear - p.at
                seg.prompts = seg.prompts[:seg.prompt_index] + kept + pending[i:]
                seg.shift_from(p.at, delta)
                if self._busy_until > p.at:
                    self._busy_until += delta
                kept = []
                break
            nxt = next((q for q in pending[i + 1:] if q.aligned), None)
            too_late = p.latest is not None and clear > p.latest + 1.0
            in_the_way = nxt is not None and clear + dur + 0.05 > nxt.at
            if p.key.startswith("count.") or too_late or in_the_way:
                dropped.append(p.key)
                continue
            p.at = clear
            clear += dur + GAP_S
            kept.append(p)
        else:
            seg.prompts = seg.prompts[:seg.prompt_index] + kept
        seg.prompts[seg.prompt_index:] = sorted(seg.prompts[seg.prompt_index:], key=lambda p: p.at)
        self._end_after(seg, end, clear)
        return dropped

    def _end_after(self, seg: Segment, end: float, clear: float) -> None:
        """The next repetition begins after a correction ending at `end` and the cues it
        moved (up to `clear`): a caution moved past the rest's end was said over the next
        repetition's "breathe in"."""
        heard_until = max([end] + [p.at + self.timing.duration(p.key) for p in seg.prompts[seg.prompt_index:]
                                   if not p.aligned and p.at < clear])
        last = seg.phases[-1] if seg.phases else None
        if last is not None and seg.kind is SegmentKind.REP and last.end < heard_until + GAP_S:
            last.end = heard_until + GAP_S
        self._busy_until = max(self._busy_until, heard_until)

    def _answer_start(self, seg: Segment, at: float, span: float) -> tuple[float, bool]:
        """When an answer asked for now (`span` seconds of speech) can be heard whole: never
        over a sentence being said (it waits for its end); in a repetition from then if it
        ends before the next aligned cue or correction, else right after that cue; in the
        calibration after the sentences planned in its way. Returns the start and whether
        such a planned cue comes first (it may answer instead)."""
        moved = False
        heard = [(h.start, h.end) for h in getattr(self, "_heard", ())]
        in_the_way = [p for p in seg.prompts[seg.prompt_index:]
                      if seg.kind is SegmentKind.CALIBRATION or p.aligned or p.priority is Priority.CORRECTION]
        if seg.kind is not SegmentKind.REP and seg.kind is not SegmentKind.CALIBRATION:
            in_the_way = []  # a speech segment's sentences make room for it (`_answer_at`)
        for _ in range(len(in_the_way) + len(heard) + 1):
            planned = [(p.at, p.at + self.timing.duration(p.key)) for p in in_the_way]
            blocking = [(a, b, k < len(planned)) for k, (a, b) in enumerate(planned + heard)
                        if a < at + span + GAP_S and b > at - 0.05]
            if not blocking:
                break
            _, end, is_planned = min(blocking)
            at = max(at, end + GAP_S)
            moved = moved or is_planned
        return at, moved

    def _answer_at(self, seg: Segment, at: float, span: float) -> float:
        """Place an answer so that nothing planned speaks over it: at `_answer_start`; in a
        repetition the counts in its way left out and the other routine cues after it
        (`_make_room`); in an intro, outro or closing the sentences still to come after it."""
        at, _ = self._answer_start(seg, at, span)
        if seg.kind is SegmentKind.REP:
            self._make_room(seg, at, at + span)
        elif seg.kind is not SegmentKind.CALIBRATION:
            self._speech_after(seg, at, at + span)
        return at

    def _speech_after(self, seg: Segment, start: float, end: float) -> None:
        """A speech segment's sentences still to come that would start before `end` (+ the
        gap) move on, with the rest of the segment: an answer or warning is said between two
        sentences, as a physiotherapist would, not over one."""
        pending = [p for p in seg.prompts[seg.prompt_index:] if p.at + self.timing.duration(p.key) > start - 0.05]
        if not pending:
            return
        first = min(p.at for p in pending)
        delta = end + GAP_S - first
        if delta <= 0:
            return
        for p in pending:
            p.at += delta
        for i, ph in enumerate(seg.phases):
            if i > seg.phase_index and ph.start >= first - 1e-9:
                ph.start += delta
            if ph.end >= first - 1e-9:
                ph.end += delta
        if self._busy_until >= first - 1e-9:
            self._busy_until += delta

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
