"""Corrections in the moment: a fault the probe shows is answered while the repetition is on.

`Correcting` is the part of `appliance.coach.session.Session` that turns an observation
from the signal side (`appliance.sensor.technique`: push-down, breath-hold, the belly
helping, letting go early, a late or incomplete release) into a short spoken correction.
It starts within a second of the detection and is never cut off (`Planning._make_room`).
Never two sentences at once: a sentence being said that ends too late for that is let
finish, and the correction follows it if the fault still matters then (the squeeze, the
hold or the rest it is about is still on, within `MAX_CORRECTION_WAIT_S`); else it is left
out, and the timeline's warning says so (`said` false, `reason`).
Repeated faults escalate gently: the short cue first, the explanation once (the second
time), then the short cues again, alternating so the same sentence is not heard every rep.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from appliance.coach.kinds import SegmentKind, SessionPhase, State
from appliance.coach.plan import GAP_S, MAX_WAIT_S, Heard, PlannedPhase, Priority, Prompt
from appliance.events import EventKind
from appliance.stim import STIM_EXERCISE_ID

if TYPE_CHECKING:
    from appliance.coach.plan import PhraseTiming, Segment
    from appliance.coach.programme import Exercise

log = logging.getLogger(__name__)

# fault -> (cue, the cue said another way, the explanation said once)
CORRECTIONS: dict[str, tuple[str, str, str]] = {
    "push_down": ("correct.push_down", "correct.push_down_again", "correct.push_down_explain"),
    "breath_hold": ("correct.breathe", "correct.breathe_again", "correct.breathe_explain"),
    "abdominal": ("correct.abdomen", "correct.abdomen_again", "correct.abdomen_explain"),
    "let_go": ("correct.let_go", "correct.let_go_again", "correct.let_go_explain"),
    "late_release": ("correct.late_release", "correct.late_release_again", "correct.late_release_explain"),
}
MAX_CORRECTION_WAIT_S = 3.0  # a correction behind another sentence is dropped rather than later
SQUEEZING = frozenset({SessionPhase.CONTRACT, SessionPhase.HOLD, SessionPhase.MOVE})
# fault -> the phases in which its correction still means something, said late
STILL_MATTERS: dict[str, frozenset[SessionPhase]] = {
    "push_down": SQUEEZING,
    "breath_hold": SQUEEZING,
    "abdominal": SQUEEZING,
    "let_go": frozenset({SessionPhase.HOLD, SessionPhase.MOVE}),
    "late_release": frozenset({SessionPhase.REST}),
}
MIN_PHASE_LEFT_S = 1.0  # a late correction starts at least this long before its phase ends
HEARD_KEPT = 32


def _lets_finish(start: float, t: float) -> bool:
    """Whether a correction detected at `t` and starting at `start` only let a sentence about
    to end finish (within `MAX_WAIT_S` and the 0.1 s after it), rather than wait for it."""
    return start - t <= MAX_WAIT_S + 0.1 + 1e-9


def correction_phrase(fault: str, n: int) -> str:
    """The n-th (1-based) correction of `fault` this session: cue, explanation, then cues."""
    cue, again, explain = CORRECTIONS[fault]
    if n == 2:
        return explain
    return cue if n % 2 == 1 else again


class Correcting:
    """The corrections of `Session` (which owns the state below)."""

    state: State
    timing: PhraseTiming
    _segment: Segment | None
    _busy_until: float
    _heard: list[Heard]
    _faults: dict[str, int]
    _faults_in_rep: set[str]

    if TYPE_CHECKING:  # provided by Session and Planning
        @property
        def exercise(self) -> Exercise | None: ...
        def session_time(self, now: float | None = None) -> float: ...
        def _emit(self, kind: EventKind, **data: object) -> None: ...
        def _say(self, key: str, at: float, priority: Priority = Priority.ROUTINE) -> None: ...
        def _make_room(self, seg: Segment, start: float, end: float) -> list[str]: ...

    def _init_correcting(self) -> None:
        self._heard = []
        self._faults = {}  # fault -> how often it was corrected this session
        self._faults_in_rep = set()  # faults corrected in the repetition that is on

    def _correctable(self) -> Segment | None:
        """The repetition that is on, if a correction may be spoken in it now."""
        seg = self._segment
        ex = self.exercise
        if self.state is not State.EXERCISING or seg is None or seg.kind is not SegmentKind.REP:
            return None
        if ex is None or ex.id == STIM_EXERCISE_ID:  # the stim controller keeps its own time
            return None
        return seg

    def _correct(self, fault: str, seg: Segment) -> None:
        """Say the correction of `fault` now, or as soon as the speaker is free: within a
        second, or after the sentence being said if the fault still matters then."""
        t = max(self.session_time(), 0.0)
        n = self._faults.get(fault, 0) + 1
        key = correction_phrase(fault, n)
        start, said = self._correction_start(t, fault, seg)
        if start is None:
            assert said is not None
            reason = "correction" if said.priority is Priority.CORRECTION else "speaking"
            log.info("correction %s dropped: %s is being said and it would come too late", fault, said.key)
            self._emit(EventKind.WARNING, warning=fault, phrase=key, detected=round(t, 3), said=False,
                       reason=reason, over=said.key)
            return
        self._faults[fault] = n
        self._faults_in_rep.add(fault)
        rest = self._rest_ahead(seg, start)
        explain = None
        if n == 2 and rest is not None:  # the explanation waits for the rest; the cue is now
            explain, key = key, CORRECTIONS[fault][1]
        end = start + self.timing.duration(key)
        dropped = self._make_room(seg, start, end)
        extra: dict[str, object] = {"dropped": dropped} if dropped else {}
        if said is not None and not _lets_finish(start, t):
            extra["waited_for"] = said.key  # said after a sentence longer than the wait
        self._emit(EventKind.WARNING, warning=fault, phrase=key, detected=round(t, 3), said=True,
                   escalation="explain" if n == 2 else "cue", **extra)
        self._say(key, start, Priority.CORRECTION)
        if explain is not None and rest is not None:
            self._explain_in_rest(seg, rest, explain, end)

    def _rest_ahead(self, seg: Segment, t: float) -> PlannedPhase | None:
        """The repetition's rest, if it is still to come."""
        last = seg.phases[-1] if seg.phases else None
        if last is not None and last.kind is SessionPhase.REST and last.start > t:
            return last
        return None

    def _explain_in_rest(self, seg: Segment, rest: PlannedPhase, key: str, after: float) -> None:
        """The explanation early in the repetition's rest; the rest lasts as long as it needs."""
        at = max(rest.start + 0.3, after + GAP_S)
        end = at + self.timing.duration(key)
        self._make_room(seg, at, end)
        seg.prompts.append(Prompt(at, key, priority=Priority.CORRECTION))
        seg.prompts[seg.prompt_index:] = sorted(seg.prompts[seg.prompt_index:], key=lambda p: p.at)
        rest.end = max(rest.end, end + 2.0)  # a breath after it before the next repetition

    def _correction_start(self, t: float, fault: str, seg: Segment) -> tuple[float | None, Heard | None]:
        """When a correction may start, and the sentence it follows (or that left it out):
        now; right after what is being said if that ends within `MAX_WAIT_S`; else after it
        if the fault still matters then (`_still_matters`). Never over another sentence."""
        busy = [h for h in self._heard if h.end > t]
        if not busy:
            return t, None
        last = max(busy, key=lambda h: h.end)
        behind_correction = any(h.priority is Priority.CORRECTION for h in busy)
        start = last.end + (GAP_S if behind_correction else 0.1)
        if _lets_finish(start, t):
            return start, last  # a sentence about to end is let finish
        if start - t <= MAX_CORRECTION_WAIT_S and self._still_matters(fault, seg, start):
            return start, last
        return None, last

    def _still_matters(self, fault: str, seg: Segment, at: float) -> bool:
        """Whether the correction of `fault` still means something said from `at`: the
        repetition is in a phase it is about, with at least `MIN_PHASE_LEFT_S` of it to come
        (no 'hold on' as the hold ends)."""
        phases = STILL_MATTERS.get(fault, frozenset())
        ph = next((p for p in seg.phases if p.start <= at < p.end), None)
        return ph is not None and ph.kind in phases and ph.end - at >= MIN_PHASE_LEFT_S

    def _note_heard(self, key: str, start: float, priority: Priority) -> None:
        self._heard.append(Heard(start, start + self.timing.duration(key), key, priority))
        del self._heard[:-HEARD_KEPT]

    def _during_correction(self, at: float, duration: float) -> bool:
        """Whether a prompt said from `at` for `duration` would overlap a correction."""
        return any(h.priority is Priority.CORRECTION and at < h.end and at + duration > h.start
                   for h in self._heard)

    def _after_correction(self, at: float) -> float:
        """The earliest a routine prompt said 'now' may start: after any correction."""
        ends = [h.end for h in self._heard if h.priority is Priority.CORRECTION and h.end > at]
        return max(ends) + GAP_S if ends else at
