"""The coach's vocabulary: the session's states, the kinds of its segments and phases.

`SegmentKind` and `SessionPhase` are `StrEnum`s: their members are the very strings
the events, the timeline and the store carry, so comparing with a string keeps working.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from appliance.coach.programme import PhaseKind


class State(Enum):
    IDLE = "idle"
    CALIBRATING = "calibrating"
    EXERCISING = "exercising"
    PAUSED = "paused"
    DONE = "done"


RUNNING = frozenset({State.CALIBRATING, State.EXERCISING})  # a plan is being followed


class SegmentKind(StrEnum):
    """A stretch of the session planned in one go."""

    GREETING = "greeting"  # the session's intro when the calibration is already known
    INTRO = "intro"  # an exercise's title and explanation (or the session's, before calibrating)
    CALIBRATION = "calibration"  # rest, then the reference squeezes
    REP = "rep"  # one repetition of an exercise
    OUTRO = "outro"  # what is said after an exercise's last repetition
    CLOSING = "closing"  # the session's last words


class SessionPhase(StrEnum):
    """A phase of the session's plan: the programme's phase kinds and the session's own."""

    INHALE = PhaseKind.INHALE.value
    CONTRACT = PhaseKind.CONTRACT.value
    HOLD = PhaseKind.HOLD.value
    RELEASE = PhaseKind.RELEASE.value
    REST = PhaseKind.REST.value
    MOVE = PhaseKind.MOVE.value
    CALIBRATE_REST = "calibrate_rest"
    CALIBRATE_SQUEEZE = "calibrate_squeeze"
    CALIBRATE_RELEASE = "calibrate_release"
    INTRO = "intro"  # speech: the session's or an exercise's intro (also the greeting's)
    OUTRO = "outro"
    CLOSING = "closing"

    @classmethod
    def of(cls, kind: PhaseKind) -> SessionPhase:
        """The session's phase for a programme phase kind."""
        return cls(kind.value)


# The phase of a speech segment (a greeting is an intro renamed once planned).
SPEECH_PHASE = {
    SegmentKind.INTRO: SessionPhase.INTRO,
    SegmentKind.OUTRO: SessionPhase.OUTRO,
    SegmentKind.CLOSING: SessionPhase.CLOSING,
}

CONTRACTING = frozenset({SessionPhase.CONTRACT, SessionPhase.HOLD, SessionPhase.MOVE,
                         SessionPhase.RELEASE, SessionPhase.CALIBRATE_SQUEEZE})
HOLDING = frozenset({SessionPhase.HOLD, SessionPhase.MOVE})
RELAXING = frozenset({SessionPhase.REST, SessionPhase.INHALE})
