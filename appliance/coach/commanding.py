"""What the patient can say, in which state: the session's command table.

`COMMANDS` maps (state, command) to a handler; every pair that is not in it answers
"not now" (`session.not_now`) and is refused. A handler returns whether the command
was accepted; it may still refuse (the slowest pace, the loudest volume...).
`Commanding` holds the handlers and is mixed into `appliance.coach.session.Session`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from appliance.coach.kinds import RUNNING, SegmentKind, State
from appliance.coach.plan import BREATH_CUES
from appliance.commands import Command
from appliance.events import EventKind

if TYPE_CHECKING:
    from appliance.coach.pacing import Pace
    from appliance.coach.plan import Calibration, PhraseTiming, Segment
    from appliance.coach.programme import Exercise, Programme
    from appliance.voice.phrases import Catalogue

log = logging.getLogger(__name__)

VOLUME_STEP, MIN_VOLUME, MAX_VOLUME = 0.1, 0.2, 1.0
TONE_VOLUME_STEP, MIN_TONE_VOLUME, MAX_TONE_VOLUME = 0.1, 0.1, 1.0


class Commanding:
    """The command handlers of `Session` (which owns the state they change)."""

    state: State
    pace: Pace
    volume: float
    tone_volume: float
    quiet: bool
    programme: Programme
    cat: Catalogue
    timing: PhraseTiming
    calibration: Calibration | None
    more_phrase: str | None
    exercise_index: int
    reps: list[dict]
    _paused_from: State | None
    _segment: Segment | None
    _busy_until: float
    _calib_rest: list[float]
    _calib_peaks: list[float]
    _exercise_done: set[int]

    if TYPE_CHECKING:  # provided by Session and Planning
        @property
        def exercise(self) -> Exercise | None: ...
        def session_time(self, now: float | None = None) -> float: ...
        def _say_now(self, key: str, span: float | None = None) -> None: ...
        def _answer_start(self, seg: Segment, at: float, span: float) -> tuple[float, bool]: ...
        def _say_now_all(self, keys: Sequence[str]) -> None: ...
        def _status_keys(self) -> list[str]: ...
        def _emit(self, kind: EventKind, **data: object) -> None: ...
        def _abort_segment(self, t: float) -> None: ...
        def _end(self, status: str) -> None: ...
        def _begin(self, seg: Segment) -> None: ...
        def _plan_rep(self, t: float) -> Segment: ...
        def _plan_calibration(self, t: float) -> Segment: ...
        def _plan_speech(self, kind: SegmentKind, keys: Sequence[str], t: float,
                         tail_s: float = 0.8) -> Segment: ...
        def _next_exercise_intro(self, t: float) -> None: ...

    def _command(self, cmd: Command) -> bool:
        handler = COMMANDS.get((self.state, cmd), Commanding._not_now)
        return handler(self, cmd, self.session_time())

    # --- answers that change nothing ------------------------------------------------------

    def _not_now(self, cmd: Command, t: float) -> bool:
        self._say_now("session.not_now")
        return False

    def _already_running(self, cmd: Command, t: float) -> bool:
        self._say_now("session.already_running")
        return False

    def _already_paused(self, cmd: Command, t: float) -> bool:
        self._say_now("session.paused")
        return False

    def _help(self, cmd: Command, t: float) -> bool:
        self._say_now("session.help")
        return True

    def _status(self, cmd: Command, t: float) -> bool:
        """Today's figures, then how the last repetitions went."""
        keys = self._status_keys()
        trend = self._status_phrase()
        self._say_now_all(keys if trend == "status.none_yet" else [*keys, trend])
        return True

    def _status_phrase(self) -> str:
        recent = [r for r in self.reps[-3:] if r["status"] == "complete"]
        if not recent:
            return "status.none_yet"
        held = sum(r["held_s"] for r in recent) / max(1e-9, sum(r["hold_asked_s"] for r in recent))
        peak = sum(r["peak_pct"] / max(1.0, r["target_pct"]) for r in recent) / len(recent)
        if held >= 0.8 or (peak >= 0.95 and not any(r["hold_asked_s"] for r in recent)):
            return "status.good"
        if peak >= 0.7:
            return "status.almost"
        return "status.low"

    # --- settings (any state) -------------------------------------------------------------

    def _pace(self, cmd: Command, t: float) -> bool:
        slower = cmd is Command.SLOWER
        new = self.pace.slower() if slower else self.pace.faster()
        if new is None:
            self._say_now("session.slowest" if slower else "session.fastest")
            return False
        self.pace = new
        self._emit(EventKind.SETTING, setting="pace", value=[new.inhale_s, new.exhale_s])
        self._say_now("session.slower" if slower else "session.faster")
        return True

    def _volume(self, cmd: Command, t: float) -> bool:
        return self._step_setting("volume", cmd is Command.LOUDER, VOLUME_STEP, MIN_VOLUME, MAX_VOLUME, "session")

    def _tone_volume(self, cmd: Command, t: float) -> bool:
        return self._step_setting("tone_volume", cmd is Command.TONE_LOUDER, TONE_VOLUME_STEP,
                                  MIN_TONE_VOLUME, MAX_TONE_VOLUME, "tone")

    def _step_setting(self, setting: str, louder: bool, step: float, lowest: float, highest: float,
                      phrases: str) -> bool:
        """One step of the session's `setting` (`volume`, `tone_volume`) within its bounds,
        stored as a `setting` event and said; at a bound it stays and the patient hears so
        (`<phrases>.loudest` / `.softest`)."""
        value: float = getattr(self, setting)
        new = round(min(highest, max(lowest, value + (step if louder else -step))), 2)
        if new == value:
            self._say_now(f"{phrases}.loudest" if louder else f"{phrases}.softest")
            return False
        setattr(self, setting, new)
        self._emit(EventKind.SETTING, setting=setting, value=new)
        self._say_now(f"{phrases}.louder" if louder else f"{phrases}.softer")
        return True

    def _quiet(self, cmd: Command, t: float) -> bool:
        """Tone only (or words again): the breath cues still planned are left out."""
        self.quiet = not self.quiet
        seg = self._segment
        if self.quiet and seg is not None:
            seg.prompts[seg.prompt_index:] = [p for p in seg.prompts[seg.prompt_index:]
                                              if not p.key.startswith(BREATH_CUES)]
        self._emit(EventKind.SETTING, setting="quiet", value=self.quiet)
        self._say_now("quiet.on" if self.quiet else "quiet.off")
        return True

    def _what_now(self, cmd: Command, t: float) -> bool:
        key = self._current_instruction()
        seg = self._segment
        if seg is not None and self.state is not State.PAUSED:
            _, cue_first = self._answer_start(seg, t, self.timing.duration(key))
            if cue_first:  # the next phase's cue comes before it would end: that cue answers
                log.info("what-now answer %s left to the phase cue that comes first", key)
                return True
        self._say_now(key)
        return True

    def _current_instruction(self) -> str:
        """What the patient is asked to do now, in its short form."""
        seg, ex = self._segment, self.exercise
        if self.state is State.PAUSED:
            return "session.paused"
        if seg is None or seg.current is None:
            return "session.help" if self.state is State.IDLE else "cue.rest"
        if seg.kind is SegmentKind.REP and ex is not None and seg.phase_index < len(ex.phases):
            ph = ex.phases[seg.phase_index]
            key = ph.say_again or ph.say
            if key:
                return key
            return INSTRUCTION_OF.get(seg.current.kind.value, "cue.rest")
        if seg.kind is SegmentKind.CALIBRATION:
            return INSTRUCTION_OF.get(seg.current.kind.value, "calibrate.rest")
        return ex.title if ex is not None else "session.help"

    # --- starting, pausing, stopping ------------------------------------------------------

    def _later(self, cmd: Command, t: float) -> bool:
        self._say_now("session.later")
        self._emit(EventKind.SESSION, state="snoozed")
        return True

    def _start(self, cmd: Command, t: float) -> bool:
        self._emit(EventKind.SESSION, state="started", programme=self.programme.id, lang=self.cat.lang)
        # The voice's and the tone's levels (the patient's own, when remembered).
        self._emit(EventKind.SETTING, setting="volume", value=self.volume)
        self._emit(EventKind.SETTING, setting="tone_volume", value=self.tone_volume)
        self._segment = None
        intro = self._plan_speech(SegmentKind.INTRO, ["session.start", *self.programme.intro], t, tail_s=0.3)
        if self.calibration is None:
            self.state = State.CALIBRATING
            cal = self._plan_calibration(intro.end)
            cal.prompts[:0] = intro.prompts
            cal.phases[:0] = intro.phases
            cal.start = t
            self._begin(cal)
        else:
            self.state = State.EXERCISING
            self._emit(EventKind.CALIBRATION, rest_cmh2o=self.calibration.rest_cmh2o,
                       mvc_cmh2o=self.calibration.mvc_cmh2o, oxford_band=self.calibration.oxford_band)
            intro.kind = SegmentKind.GREETING
            self._begin(intro)
        return True

    def _pause(self, cmd: Command, t: float) -> bool:
        self._abort_segment(t)
        self._paused_from = self.state
        self.state = State.PAUSED
        self._emit(EventKind.SESSION, state="paused")
        self._say_now("session.paused")
        return True

    def _resume(self, cmd: Command, t: float) -> bool:
        self.state = self._paused_from or State.EXERCISING
        self._emit(EventKind.SESSION, state="resumed")
        self._say_now("session.resumed")
        if self.state is State.CALIBRATING:
            self._calib_rest, self._calib_peaks = [], []
            self._begin(self._plan_calibration(self._busy_until))
        elif self.exercise is None:
            self._next_exercise_intro(self._busy_until)
        else:
            self._begin(self._plan_rep(self._busy_until + 0.3))
        return True

    def _stop(self, cmd: Command, t: float) -> bool:
        self._abort_segment(t)
        self._say_now("session.stopped")
        self._end("stopped")
        return True

    # --- moving through the programme -----------------------------------------------------

    def _paused_in_calibration(self) -> bool:
        """The programme cannot be moved through before the calibration is done."""
        return self.state is State.PAUSED and self._paused_from is State.CALIBRATING

    def _past_the_prescription(self, cmd: Command) -> bool:
        """'Next' on the last exercise when the day's plan allows no more (post-op weeks)."""
        return (bool(self.more_phrase) and cmd is Command.NEXT and self.state is State.EXERCISING
                and self.exercise_index >= len(self.programme.exercises) - 1)

    def _move(self, cmd: Command, t: float) -> bool:
        if self._paused_in_calibration():
            return self._not_now(cmd, t)
        if self._past_the_prescription(cmd):
            assert self.more_phrase is not None
            self._say_now(self.more_phrase)
            return False
        if cmd is Command.REPEAT:
            return self._repeat(t)
        self._abort_segment(t)
        self.state = State.EXERCISING
        if cmd is Command.NEXT:
            self._skip_exercise()
        elif self.exercise_index == 0:
            self._say_now("session.first_exercise")
        else:
            self._say_now("session.back")
            self.exercise_index -= 1
        self._next_exercise_intro(self._busy_until)
        return True

    def _skip_exercise(self) -> None:
        ex = self.exercise
        if ex is not None and self.exercise_index not in self._exercise_done:
            self._emit(EventKind.EXERCISE, exercise=ex.id, index=self.exercise_index, state="skipped")
        self._say_now("session.skip")
        self.exercise_index = min(self.exercise_index + 1, len(self.programme.exercises))

    def _repeat(self, t: float) -> bool:
        if self.exercise is None or (self._segment is None and self.state is not State.PAUSED):
            self._say_now("session.nothing_to_repeat")
            return False
        self._abort_segment(t)
        self.state = State.EXERCISING
        self._say_now("session.repeat")
        self._begin(self._plan_rep(self._busy_until + 0.3))
        return True


Handler = Callable[[Commanding, Command, float], bool]

# The short instruction of a phase whose own cue is silent ("wat moet ik doen").
INSTRUCTION_OF = {
    "inhale": "cue.breathe_in", "contract": "cue.exhale_contract", "hold": "cue.hold",
    "move": "cue.feel_hold", "release": "cue.release", "rest": "cue.rest",
    "calibrate_rest": "calibrate.rest", "calibrate_squeeze": "calibrate.squeeze",
    "calibrate_release": "calibrate.squeeze_release",
}


def _in(states: frozenset[State] | set[State], commands: tuple[Command, ...], handler: Handler
        ) -> dict[tuple[State, Command], Handler]:
    return {(s, c): handler for s in states for c in commands}


_EVERY_STATE = frozenset(State)
_ON_THE_WAY = RUNNING | {State.PAUSED}  # a session that has started and not ended

# (state, command) -> handler; any other pair answers "not now" and is refused.
COMMANDS: Mapping[tuple[State, Command], Handler] = {
    **_in(_EVERY_STATE, (Command.HELP,), Commanding._help),
    **_in(_EVERY_STATE, (Command.STATUS,), Commanding._status),
    **_in(_EVERY_STATE, (Command.SLOWER, Command.FASTER), Commanding._pace),
    **_in(_EVERY_STATE, (Command.LOUDER, Command.SOFTER), Commanding._volume),
    **_in(_EVERY_STATE, (Command.TONE_LOUDER, Command.TONE_SOFTER), Commanding._tone_volume),
    **_in(_EVERY_STATE, (Command.QUIET,), Commanding._quiet),
    **_in(_EVERY_STATE, (Command.WHAT_NOW,), Commanding._what_now),
    (State.IDLE, Command.START): Commanding._start,
    (State.IDLE, Command.LATER): Commanding._later,
    **_in({State.PAUSED}, (Command.START, Command.RESUME), Commanding._resume),
    **_in(RUNNING, (Command.START, Command.RESUME), Commanding._already_running),
    **_in(RUNNING, (Command.PAUSE,), Commanding._pause),
    (State.PAUSED, Command.PAUSE): Commanding._already_paused,
    **_in(_ON_THE_WAY, (Command.STOP,), Commanding._stop),
    **_in({State.EXERCISING, State.PAUSED}, (Command.NEXT, Command.PREVIOUS, Command.REPEAT),
          Commanding._move),
}
