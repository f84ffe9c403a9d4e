"""Feedback from the patient's own squeeze: after a repetition, after an exercise, on asking.

`Rating` is the part of `appliance.coach.session.Session` that says back what was
measured: a few words early in each repetition's rest (held the target or not yet, let
go fully or not, steadier than last time; praise only when earned), a short summary
when an exercise ends, today's figures when the patient asks ("hoe doe ik het"), and the
target adapting within the set: three misses in a row step it down one step for the rest
of the set (not further), three easy ones in a row step it back up, never above one step
over the prescription nor over the exercise's bound (`Exercise.adaptive_target` switches it off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.coach.kinds import SegmentKind
from appliance.coach.plan import GAP_S, Heard, Priority
from appliance.events import EventKind

if TYPE_CHECKING:
    from appliance.coach.plan import Calibration, PhraseTiming, Segment
    from appliance.coach.programme import Exercise, Programme

log = logging.getLogger(__name__)

FEEDBACK_AFTER_REST_S = 1.6  # into the rest: the release has been looked at by then
TARGET_STEP_PCT = 5.0  # one step of the target (%MVC), as the weekly progression steps
MIN_TARGET_PCT = 10.0
MISSES_TO_STEP_DOWN = 3
EASY_TO_STEP_UP = 3
SAY_SAME_EVERY = 3  # the same verdict again only every third repetition
RELEASED_PCT = 15.0  # below this %MVC the floor has let go
REST_AFTER_FEEDBACK_S = 1.5  # the words end this long before the next repetition at least
MAX_REST_EXTENSION_S = 3.0
LONG_REST_S = 8.0  # a rest this long without a word gets one
REST_WORDS = ("cue.keep_breathing", "cue.rest")


@dataclass
class Verdict:
    """How one repetition went, in the words the patient hears."""

    kind: str  # held, almost, not_yet
    hold: bool  # a hold was asked (else: a squeeze to reach)
    held_fraction: float
    released: bool
    steadiness: float | None
    easy: bool


def verdict_of(m: dict, target_pct: float, released: bool) -> Verdict:
    """The verdict on a repetition's metrics (`RepMetrics` fields) against its target."""
    asked = float(m.get("hold_asked_s") or 0.0)
    if asked > 0:
        frac = float(m["held_s"]) / asked
        easy = frac >= 0.95 and float(m.get("mean_hold_pct") or 0.0) >= 1.15 * target_pct
        steadiness = float(m.get("steadiness_pct") or 0.0)
    else:
        frac = float(m.get("peak_pct") or 0.0) / max(target_pct, 1.0)
        easy = frac >= 1.3
        steadiness = None
    kind = "held" if frac >= 0.8 else "almost" if frac >= 0.5 else "not_yet"
    return Verdict(kind, asked > 0, round(frac, 3), released, steadiness, easy)


def _measured(reps: list[dict]) -> list[dict]:
    """The complete repetitions the probe measured (not the daily-life ones done without it)."""
    return [r for r in reps if r["status"] == "complete" and r.get("peak_pct") is not None
            and not str(r["exercise"]).startswith("perfect")]  # the weekly assessment is not training


def feedback_phrase(v: Verdict, steadier: bool) -> str:
    if not v.released:
        return "feedback.release_more"
    if v.kind == "held":
        if steadier:
            return "feedback.steadier"
        return "feedback.held" if v.hold else "feedback.reached"
    if v.kind == "almost":
        return "feedback.almost" if v.hold else "feedback.almost_reached"
    return "feedback.not_yet"


def number_keys(n: int) -> list[str]:
    """Phrase keys that say the whole number n (1..100: exact to 20, then about the ten)."""
    if n <= 10:
        return [f"count.{max(n, 1)}"] if n > 0 else ["number.0"]
    if n <= 20:
        return [f"number.{n}"]
    tens = min(100, int(round(n / 10.0)) * 10)
    return (["number.about"] if tens != n else []) + [f"number.{tens}"]


class Rating:
    """The feedback of `Session` (which owns the state below)."""

    programme: Programme
    calibration: Calibration | None
    timing: PhraseTiming
    reps: list[dict]
    exercise_index: int
    rep: int
    sample_rate_hz: float
    quiet: bool
    _segment: Segment | None
    _heard: list[Heard]
    _faults_in_rep: set[str]
    _strength_pct: float

    if TYPE_CHECKING:  # provided by Session and Planning
        @property
        def exercise(self) -> Exercise | None: ...
        def _emit(self, kind: EventKind, **data: object) -> None: ...
        def _say(self, key: str, at: float, priority: Priority = Priority.ROUTINE) -> None: ...

    def _init_rating(self) -> None:
        self._target_step: dict[int, int] = {}  # exercise index -> steps from the prescription
        self._run: dict[int, tuple[str, int]] = {}  # exercise index -> (misses|easy, how many in a row)
        self._last_verdict: dict[int, tuple[str, int]] = {}  # exercise index -> (phrase, reps since said)
        self._steadiness: dict[int, float] = {}  # exercise index -> the last held repetition's SD
        self._rest_feedback_at: float | None = None
        self._rest_words = 0
        # Today's earlier sessions' repetitions, as stored (the device hands them in), so
        # that "hoe doe ik het" answers with the day's figures, not only this session's.
        self.earlier_today: list[dict] = []

    # --- the target within the set --------------------------------------------------------

    def target_pct(self, index: int | None = None) -> float:
        """The exercise's target now: the prescription's, stepped within this set."""
        i = self.exercise_index if index is None else index
        ex = self.programme.exercises[i]
        steps = self._target_step.get(i, 0)
        if not steps:
            return ex.target_level_pct
        low = min(ex.target_level_pct, max(MIN_TARGET_PCT, ex.target_level_pct - TARGET_STEP_PCT))
        high = min(ex.target_level_pct + TARGET_STEP_PCT, ex.max_target_pct_mvc)
        return round(min(high, max(low, ex.target_level_pct + steps * TARGET_STEP_PCT)), 1)

    def _start_set(self, index: int) -> None:
        """A new set of an exercise: the prescription's target again."""
        self._target_step.pop(index, None)
        self._run.pop(index, None)
        self._last_verdict.pop(index, None)

    def _adapt_target(self, index: int, v: Verdict) -> str | None:
        """Count misses and easy repetitions; step the target; the phrase that says so."""
        ex = self.programme.exercises[index]
        if not ex.adaptive_target:
            return None
        what = "miss" if v.kind != "held" else "easy" if v.easy else ""
        kind, n = self._run.get(index, ("", 0))
        n = n + 1 if what and what == kind else (1 if what else 0)
        self._run[index] = (what, n)
        before = self.target_pct(index)
        steps = self._target_step.get(index, 0)
        if what == "miss" and n >= MISSES_TO_STEP_DOWN:
            self._target_step[index] = steps - 1
        elif what == "easy" and n >= EASY_TO_STEP_UP:
            self._target_step[index] = steps + 1
        else:
            return None
        self._run[index] = ("", 0)
        after = self.target_pct(index)
        if after == before:
            self._target_step[index] = steps
            return None
        reason = "three_misses" if what == "miss" else "easily_met"
        self._emit(EventKind.SETTING, setting="target", value=after, exercise=ex.id, was=before,
                   prescribed=ex.target_level_pct, reason=reason)
        return "adapt.lower" if after < before else "adapt.higher"

    # --- after a repetition -----------------------------------------------------------------

    def _rest_begins(self, start: float) -> None:
        self._rest_feedback_at = start + FEEDBACK_AFTER_REST_S

    def _maybe_rep_feedback(self, seg: Segment, t: float) -> None:
        """Early in the rest: a few words on the repetition that was just done."""
        at = self._rest_feedback_at
        if at is None or t < at or seg.kind is not SegmentKind.REP or self.calibration is None:
            return
        self._rest_feedback_at = None
        assert seg.exercise_index is not None
        index = seg.exercise_index
        if not self.programme.exercises[index].probe:
            return  # a daily-life exercise with the probe out: nothing was measured to judge
        m = seg.recorder.metrics(self.calibration.mvc_cmh2o, 1.0 / self.sample_rate_hz).__dict__
        target = seg.target_pct if seg.target_pct is not None else self.target_pct(index)
        v = verdict_of(m, target, self._strength_pct < RELEASED_PCT)
        prev = self._steadiness.get(index)
        steadier = v.steadiness is not None and prev is not None and prev > 2.0 and v.steadiness < 0.8 * prev
        if v.kind == "held" and v.steadiness is not None:
            self._steadiness[index] = v.steadiness
        adapted = self._adapt_target(index, v)
        if self.quiet and adapted is None:
            return  # she asked for quiet: the tone only
        key = adapted or feedback_phrase(v, steadier)
        last, since = self._last_verdict.get(index, ("", SAY_SAME_EVERY))
        if adapted is None and (self._faults_in_rep or (key == last and since + 1 < SAY_SAME_EVERY)):
            # Said already (or the correction said it): a word to rest on, if the rest is long.
            self._last_verdict[index] = (last, since + 1)
            self._rest_word(seg, t)
            return
        # A changed target is always told (the next squeeze asks for it), even when a
        # correction's explanation already fills the rest: the rest lasts as long as it needs.
        if self._say_in_rest(seg, t, key, must=adapted is not None):
            self._last_verdict[index] = (key, 0)

    def _rest_word(self, seg: Segment, t: float) -> None:
        """'Rust even' or 'blijf rustig ademen' when the rest would be long without a word."""
        last = max((h.end for h in self._heard), default=t)
        nxt = min((p.at for p in seg.prompts[seg.prompt_index:]), default=seg.end)
        if nxt - min(last, t) < LONG_REST_S:
            return
        self._rest_words += 1
        self._say_in_rest(seg, t, REST_WORDS[self._rest_words % len(REST_WORDS)])

    def _say_in_rest(self, seg: Segment, t: float, key: str, must: bool = False) -> bool:
        """Say `key` in the rest, after what is being said and what is still to come in it;
        the rest lasts up to `MAX_REST_EXTENSION_S` longer so that a breath follows it (as
        long as it needs when the phrase `must` be heard)."""
        dur = self.timing.duration(key)
        busy = max((h.end for h in self._heard if h.end > t), default=t)
        at = busy + GAP_S if busy > t else t
        for p in sorted(seg.prompts[seg.prompt_index:], key=lambda p: p.at):
            if p.at < at + dur + GAP_S:
                at = max(at, p.at + self.timing.duration(p.key) + GAP_S)
        rest = seg.phases[-1]
        need = at + dur + REST_AFTER_FEEDBACK_S
        if need - rest.end > MAX_REST_EXTENSION_S and not must:
            return False
        rest.end = max(rest.end, need)
        self._say(key, at)
        return True

    # --- after an exercise, on asking ---------------------------------------------------------

    def _summary_keys(self, index: int) -> list[str]:
        """A short summary of the exercise just done (its complete repetitions)."""
        done = [r for r in _measured(self.reps) if r.get("exercise_index") == index]
        if len(done) < 2:
            return []
        held = sum(1 for r in done if verdict_of(r, float(r["target_pct"]), True).kind == "held")
        frac = held / len(done)
        # An exercise with no hold (awareness: squeeze and let go) is summed up by its squeeze.
        if any(float(r.get("hold_asked_s") or 0.0) > 0 for r in done):
            all_, most, some = "summary.held_all", "summary.held_most", "summary.held_some"
        else:
            all_, most, some = "summary_squeeze.all", "summary_squeeze.most", "summary_squeeze.some"
        return [all_ if frac >= 0.99 else most if frac >= 0.6 else some if frac >= 0.25 else "summary.hard"]

    def _status_keys(self) -> list[str]:
        """Today's figures: repetitions done, how often the target was held, how it goes now."""
        done = _measured(self.earlier_today) + _measured(self.reps)
        if not done:
            return ["status.none_yet"]
        held = sum(1 for r in done if verdict_of(r, float(r["target_pct"]), True).kind == "held")
        frac = held / len(done)
        held_key = ("status_today.held_all" if frac >= 0.99 else "status_today.held_most" if frac >= 0.6
                    else "status_today.held_some" if frac >= 0.25 else "status_today.held_few")
        return ["status_today.today", *number_keys(len(done)), "status_today.reps_done", held_key]
