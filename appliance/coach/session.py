"""The coach: one training session as a state machine over the programme's phases.

It is the only place that decides. Samples and commands come in; phases, prompts,
repetition metrics and live feedback go out to the sinks (speech, tone, store,
timeline, stimulation, the simulated patient). Commands never raise: a command that
makes no sense now gets a short spoken answer.

The parts by idea: the vocabulary (states, segment and phase kinds) in
`appliance.coach.kinds`, planning segments in `appliance.coach.plan`, the command
table and its handlers in `appliance.coach.commanding`; running the plan, the samples,
stimulation and the output are here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import date, tzinfo

from appliance.clock import Clock
from appliance.coach.commanding import MAX_VOLUME, MIN_VOLUME, VOLUME_STEP, Commanding
from appliance.coach.correcting import CORRECTIONS, Correcting
from appliance.coach.kinds import RUNNING, SegmentKind, SessionPhase, State
from appliance.coach.measuring import MIN_MVC_CMH2O, Measuring, _peak_of_mean
from appliance.coach.pacing import Pace
from appliance.coach.plan import (
    CALIBRATION_RECOVER_S,
    CALIBRATION_REST_S,
    CALIBRATION_SQUEEZE_S,
    CALIBRATION_SQUEEZES,
    GAP_S,
    Calibration,
    PhraseTiming,
    PlannedPhase,
    Planning,
    Priority,
    Prompt,
    Segment,
)
from appliance.coach.programme import Motion, Programme
from appliance.coach.rating import Rating
from appliance.commands import Command
from appliance.events import Event, EventKind, Feedback, Sink
from appliance.sensor.base import ProbeStatus
from appliance.stim import STIM_EXERCISE_ID, StimContext, StimController, StimState
from appliance.voice.phrases import Catalogue

__all__ = [  # the names other modules import from here
    "CALIBRATION_RECOVER_S", "CALIBRATION_REST_S", "CALIBRATION_SQUEEZE_S", "CALIBRATION_SQUEEZES",
    "GAP_S", "MAX_VOLUME", "MIN_VOLUME", "MIN_MVC_CMH2O", "VOLUME_STEP", "WARNING_REPEAT_S",
    "Calibration", "PhraseTiming", "PlannedPhase", "Prompt", "Segment", "Session", "State",
]

log = logging.getLogger(__name__)

WARNING_REPEAT_S = 30.0  # the same technique warning at most this often
# The tone's own gain: alone (between prompts) it sits some 10 dB below the voice, and
# ducked under speech some 22 dB below it (tests/test_heard.py; at 1.0 the tone was 5 dB
# above the voice, at 0.25 only 4-5 dB below it).
DEFAULT_TONE_VOLUME = 0.15
# Segments of words alone: the control loop may tick slowly through them (`may_tick_slowly`).
SPOKEN_SEGMENTS = (SegmentKind.GREETING, SegmentKind.INTRO, SegmentKind.OUTRO, SegmentKind.CLOSING)


class Session(Planning, Measuring, Commanding, Correcting, Rating):
    """One session of a programme for one patient.

    Drive it with `tick(now, times, values)` at the control rate and `command(cmd)`
    whenever the patient says something. `now` is the clock's monotonic time.
    """

    def __init__(
        self,
        programme: Programme,
        catalogue: Catalogue,
        clock: Clock,
        sinks: Sequence[Sink] = (),
        timing: PhraseTiming | None = None,
        pace: Pace | None = None,
        sample_rate_hz: float = 100.0,
        calibration: Calibration | None = None,
        volume: float = 0.8,
        tone_volume: float = DEFAULT_TONE_VOLUME,
    ) -> None:
        from appliance.voice.phrases import EstimatedTiming

        self.programme = programme
        self.cat = catalogue
        self.clock = clock
        self.sinks = list(sinks)
        self.timing = timing or EstimatedTiming(catalogue)
        self.pace = pace or Pace()
        self.volume = volume
        self.tone_volume = tone_volume  # the live tone's own volume (0..1), apart from the voice
        self.sample_rate_hz = sample_rate_hz
        self.calibration = calibration
        self.state = State.IDLE
        self.t0 = clock.now()
        self.exercise_index = 0
        self.rep = 1
        self.reps: list[dict] = []  # every stored repetition's event data
        self._segment: Segment | None = None
        self._paused_from: State | None = None
        self._init_measuring(sample_rate_hz)
        self._busy_until = 0.0  # when the last scheduled prompt finishes
        self._last_warning: dict[str, float] = {}
        self._init_correcting()
        self._init_rating()
        self._exercise_done: set[int] = set()
        self._init_wiring()
        self._emit(EventKind.SESSION, state="ready")
        self._say_now("session.welcome")

    def _init_wiring(self) -> None:
        """Set by the wiring after construction (appliance.device.wiring), and the outcome."""
        self._out_breath: float | None = None  # the repetition's first out-breath (planning)
        self.quiet = False  # "stil": tone only, no breath cues or feedback in the holds
        # Said instead of moving on when the patient asks for more than the programme allows
        # (the post-operative weeks: appliance.patient.prescription.DayPlan.more_phrase).
        self.more_phrase: str | None = None
        self.outcome: str | None = None
        self.tz: tzinfo | None = None  # the patient's time zone: stimulation counts local days
        # The stimulation line (appliance.stim), attached with attach_stim(); it decides
        # on/off itself, the session only feeds it and speaks its cues.
        self.stim: StimController | None = None
        self.probe_status: ProbeStatus | None = None  # set by the control loop each tick
        # appliance.coach.pacing.BreathFollower: cues on the patient's breath (None = paced).
        self.breath_follower = None
        self._stim_exercise: int | None = None
        # The control loop's tick where nothing happens between the plan's moments
        # (`may_tick_slowly`); None: always the control tick. Set by the wiring.
        self.idle_tick_s: float | None = None

    # --- public ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state is State.DONE

    @property
    def probe_ok(self) -> bool:
        """The probe is inserted and reading sane: a stimulation interlock (unknown is not ok)."""
        return self.probe_status is ProbeStatus.OK

    @property
    def biofeedback(self) -> bool:
        """Whether the live tone may follow the probe: not when it reads nothing sane.

        A saturated probe still shows a squeeze (too strong), so its tone stays.
        """
        return self.probe_status in (None, ProbeStatus.OK, ProbeStatus.SATURATED)

    @property
    def strength_pct(self) -> float:
        return self._strength_pct

    @property
    def needs_fast_tick(self) -> bool:
        """Whether the control loop must tick at its fast rate: while the stimulation exercise
        is on (or the line is high), so every interlock is checked as often as specified."""
        stim = self.stim
        if stim is None:
            return False
        if self._stim_exercise is not None or stim.line_high:
            return True
        ex = self.exercise
        return ex is not None and ex.id == STIM_EXERCISE_ID

    @property
    def may_tick_slowly(self) -> bool:
        """Whether the control loop may tick every `idle_tick_s` until the plan's next moment
        (`next_due`): no phase asks for a squeeze (so the tone is silent and no cue can
        change) and it is not the stimulation exercise. That is the words (welcome, an
        exercise's introduction, the words after it, the closing), the in-breaths, the rests
        between squeezes and the calibration's rest. Every sample still reaches the coach
        and the observers at the next tick (a rest's relaxation is judged on all of them),
        prompts and phases come on their time, and a command waits up to `idle_tick_s`."""
        if self.idle_tick_s is None or self.needs_fast_tick:
            return False
        seg = self._segment
        if seg is None:
            return True
        phase = seg.current
        if phase is None:
            return seg.kind in SPOKEN_SEGMENTS
        return not phase.asks_contraction

    def next_due(self) -> float | None:
        """Session time of the plan's next moment: a prompt, a phase, the segment's end or the
        words after a repetition (None: nothing planned). The control loop ticks then, so
        what the plan says happens on time whatever the control rate."""
        seg = self._segment
        if seg is None:
            return None
        due = seg.prompts[seg.prompt_index].at if seg.prompt_index < len(seg.prompts) else math.inf
        if self.state in RUNNING:
            if seg.phase_index + 1 < len(seg.phases):
                due = min(due, seg.phases[seg.phase_index + 1].start)
            due = min(due, seg.end)
            if self._rest_feedback_at is not None:
                due = min(due, self._rest_feedback_at)
        return None if due == math.inf else float(due)  # plain: a plan time may be numpy's

    def session_time(self, now: float | None = None) -> float:
        return (self.clock.now() if now is None else now) - self.t0

    def tick(self, now: float, times: Iterable[float] = (), values: Iterable[float] = ()) -> None:
        """Take the newest samples, move the plan on to `now`, tell the sinks."""
        try:
            self._tick(now, times, values)
        except BaseException:
            if self.stim is not None:  # whatever broke, the stimulation line goes low
                self.stim.shutdown(self.session_time(now), "coach_exception")
            raise

    def command(self, cmd: Command, source: str = "voice") -> bool:
        """Act on a command; returns whether it was accepted. Never raises.

        What each command does in each state is `appliance.coach.commanding.COMMANDS`.
        """
        if self.stim is not None:  # any command or button press drops the stim line first
            self.stim.command(self.session_time(), cmd, source)
        try:
            accepted = self._command(cmd)
        except Exception:  # a coach bug must not end the patient's session silently
            log.exception("command %s failed", cmd)
            accepted = False
        self._emit(EventKind.COMMAND, command=cmd.value, source=source, accepted=accepted)
        return accepted

    def observe_warning(self, warning: str, phrase: str) -> None:
        """A technique or probe warning from the signal side.

        A fault of the repetition that is on is corrected at once (`Correcting`); anything
        else (the probe, a fault seen outside a repetition) is spoken at most every 30 s.
        """
        seg = self._correctable() if warning in CORRECTIONS else None
        if seg is not None:
            self._correct(warning, seg)
            return
        t = self.session_time()
        if t - self._last_warning.get(warning, -1e9) < WARNING_REPEAT_S:
            return
        if self._probe_out():
            return  # a daily-life exercise: the probe is out on purpose
        self._last_warning[warning] = t
        self._emit(EventKind.WARNING, warning=warning, phrase=phrase)
        self._say_now(phrase)

    def _probe_out(self) -> bool:
        """The patient took the probe out: in a daily-life exercise, or in the words before one."""
        if self.state is not State.EXERCISING:
            return False
        i = self.exercise_index
        if self._segment is not None and self._segment.kind is SegmentKind.OUTRO:
            i += 1  # the outro that asks for the probe out leads into the next exercise
        exercises = self.programme.exercises
        return 0 <= i < len(exercises) and not exercises[i].probe

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    # --- one tick -------------------------------------------------------------------------

    def _tick(self, now: float, times: Iterable[float], values: Iterable[float]) -> None:
        t = now - self.t0
        self._take_samples(times, values)
        self._follow_plan(t)
        if self.stim is not None:
            self._tick_stim(t)
        self._give_feedback(t)

    def _follow_plan(self, t: float) -> None:
        """Enter the phases whose time has come, say the prompts due, finish the segment."""
        seg = self._segment
        if seg is None:
            return
        if self.state not in RUNNING:  # welcome/outro speech while idle or done
            self._fire_prompts(seg, t)
            return
        while seg is self._segment and seg.phase_index + 1 < len(seg.phases) \
                and seg.phases[seg.phase_index + 1].start <= t:
            self._enter_phase(seg, seg.phase_index + 1)
        self._fire_prompts(seg, t)
        if seg is self._segment and self.state is State.EXERCISING:
            self._maybe_rep_feedback(seg, t)
        if seg is self._segment and t >= seg.end:
            self._finish_segment(seg, t)

    def _give_feedback(self, t: float) -> None:
        """The live tone's input; a repetition guided without biofeedback is marked."""
        seg = self._segment
        phase = seg.current if seg is not None and self.state is not State.PAUSED else None
        # No tone in a daily-life exercise: the probe is out.
        active = bool(phase and phase.asks_contraction) and self._uses_probe(seg)
        target = phase.level_pct if phase and phase.kind is not SessionPhase.CALIBRATE_SQUEEZE else 0.0
        feedback_ok = self.biofeedback
        if not feedback_ok and seg is not None and seg.kind is SegmentKind.REP:
            seg.probe_fault = True  # this repetition was guided without biofeedback
        fb = Feedback(t, self._strength_pct if feedback_ok else 0.0, target,
                      active and self.state is State.EXERCISING and feedback_ok, self._pressure)
        for sink in self.sinks:
            sink.feedback(fb)

    # --- running the plan -----------------------------------------------------------------

    def _begin(self, seg: Segment) -> None:
        self._segment = seg
        if seg.kind is SegmentKind.REP:
            self._faults_in_rep = set()
        t = self.session_time()
        if seg.phases and seg.phases[0].start <= t:
            self._enter_phase(seg, 0)
        self._fire_prompts(seg, t)

    def _enter_phase(self, seg: Segment, index: int) -> None:
        seg.phase_index = index
        ph = seg.phases[index]
        if seg.kind is SegmentKind.REP and ph.kind is SessionPhase.CONTRACT and seg.recorder.contract_at is None:
            seg.recorder.contract_at = ph.start
        if ph.kind is SessionPhase.CALIBRATE_SQUEEZE:
            self._calib_window = []
        if index > 0 and seg.phases[index - 1].kind is SessionPhase.CALIBRATE_SQUEEZE and self._calib_window:
            self._calib_peaks.append(_peak_of_mean(self._calib_window, int(0.25 * self.sample_rate_hz)))
        if ph.kind is SessionPhase.REST:
            self._rest_tail = []
            if seg.kind is SegmentKind.REP:
                self._rest_begins(ph.start)
        self._emit_at(ph.start, EventKind.PHASE, **self._phase_data(seg, ph))

    def _phase_data(self, seg: Segment, ph: PlannedPhase) -> dict:
        """A `phase` event's fields (docs/interfaces.md)."""
        data: dict = dict(phase=ph.kind.value, start=round(ph.start, 3), end=round(ph.end, 3),
                          level_pct=ph.level_pct)
        if seg.exercise_index is not None and self.exercise is not None \
                and seg.kind in (SegmentKind.REP, SegmentKind.INTRO):
            data["exercise"] = self.programme.exercises[seg.exercise_index].id
        elif seg.kind is SegmentKind.CALIBRATION:
            data["exercise"] = "calibration"
        if seg.rep is not None:
            data["rep"] = seg.rep
        if ph.on_exhale:
            data["on_exhale"] = True
        if ph.motion is not Motion.NONE:
            data["motion"] = ph.motion.value
        return data

    def _fire_prompts(self, seg: Segment, t: float) -> None:
        while seg.prompt_index < len(seg.prompts) and seg.prompts[seg.prompt_index].at <= t + 1e-9:
            p = seg.prompts[seg.prompt_index]
            seg.prompt_index += 1
            if p.priority is Priority.ROUTINE and self._during_correction(p.at, self.timing.duration(p.key)):
                log.warning("prompt %s at %.2f s dropped: a correction is being said", p.key, p.at)
                continue
            self._say(p.key, p.at, p.priority)

    def _finish_segment(self, seg: Segment, t: float) -> None:
        self._fire_prompts(seg, seg.end + 1e9)  # anything left (rounding) is said now
        AFTER_SEGMENT[seg.kind](self, seg, t)

    def _after_calibration(self, seg: Segment, t: float) -> None:
        self._finish_calibration()
        self._next_exercise_intro(t)

    def _after_intro(self, seg: Segment, t: float) -> None:
        ex = self.exercise
        assert ex is not None
        self.rep = 1
        self._start_set(self.exercise_index)
        self._emit(EventKind.EXERCISE, exercise=ex.id, index=self.exercise_index, state="started")
        self._begin(self._plan_rep(t))

    def _after_rep(self, seg: Segment, t: float) -> None:
        self._record_rep(seg, "complete", t)
        ex = self.exercise
        assert ex is not None
        if self.rep < ex.repetitions:
            self.rep += 1
            self._begin(self._plan_rep(t))
            return
        self._exercise_done.add(self.exercise_index)
        self._emit(EventKind.EXERCISE, exercise=ex.id, index=self.exercise_index, state="finished")
        outro = [*self._summary_keys(self.exercise_index), *ex.outro]
        if outro:
            self._begin(self._plan_speech(SegmentKind.OUTRO, outro, t))
        else:
            self._after_outro(seg, t)

    def _after_outro(self, seg: Segment, t: float) -> None:
        self.exercise_index += 1
        self._next_exercise_intro(t)

    def _after_greeting(self, seg: Segment, t: float) -> None:
        self._next_exercise_intro(t)

    def _after_closing(self, seg: Segment, t: float) -> None:
        self._end("done")

    def _next_exercise_intro(self, t: float) -> None:
        self.state = State.EXERCISING
        ex = self.exercise
        while ex is not None and ex.id == STIM_EXERCISE_ID and (
                self.stim is None or self.stim.refusal(self.local_day())):
            self.exercise_index += 1  # no stim today: the exercise is left out, unannounced
            ex = self.exercise
        if ex is None:
            self._begin(self._plan_speech(SegmentKind.CLOSING, ["session.done", *self.programme.outro], t,
                                          tail_s=1.0))
            return
        self.rep = 1
        self._begin(self._plan_speech(SegmentKind.INTRO, [ex.title, *ex.intro], t))

    def _abort_segment(self, t: float) -> None:
        """Leave the current segment; a repetition already contracting is kept (partial
        before its rest, complete in it)."""
        seg = self._segment
        if seg is not None and seg.kind is SegmentKind.REP:
            cur = seg.current
            if seg.recorder.contract_at is not None and cur is not None:
                self._record_rep(seg, "complete" if cur.kind is SessionPhase.REST else "partial", t)
        self._segment = None
        self._busy_until = t

    def _end(self, status: str) -> None:
        if self.stim is not None:
            self.stim.shutdown(self.session_time(), f"session_{status}")
        self.state = State.DONE
        self.outcome = status  # "done", "stopped"...: how the session ended
        self._segment = None
        self._emit(EventKind.SESSION, state=status)

    # --- stimulation ----------------------------------------------------------------------

    def local_day(self) -> date:
        """Today in the prescription's time zone (`tz`, set by the wiring), else the device's."""
        return self.clock.wall().astimezone(self.tz).date()

    def attach_stim(self, controller: StimController) -> None:
        """Run the stim exercise with this controller: its events go to the sinks."""
        self.stim = controller
        controller.bind(lambda e: self._emit_at(e.t, e.kind, **e.data), self.timing.keyword_offset)

    def _tick_stim(self, t: float) -> None:
        stim = self.stim
        assert stim is not None
        seg = self._segment
        ex = self.exercise
        in_exercise = (ex is not None and ex.id == STIM_EXERCISE_ID
                       and self.state in (State.EXERCISING, State.PAUSED))
        running = in_exercise and self.state is State.EXERCISING and seg is not None \
            and seg.kind is SegmentKind.REP
        if running and self._stim_exercise != self.exercise_index:
            self._stim_exercise = self.exercise_index  # pauses and repeats stay one stim session
            stim.begin(t, self.local_day())
        elif not in_exercise and self._stim_exercise is not None:
            self._stim_exercise = None
            stim.end(t)
        cue = stim.tick(t, StimContext(running, self.probe_ok, self._strength_pct))
        if cue is not None:
            self._say(cue.phrase, t)  # at once: the patient's 3 s to say stop start now
            self._busy_until = max(self._busy_until, t + self.timing.duration(cue.phrase))
        if running and stim.finished:
            assert seg is not None and ex is not None
            self._stim_over(stim, seg, ex.repetitions, t)

    def _stim_over(self, stim: StimController, seg: Segment, repetitions: int, t: float) -> None:
        """The controller ended the stim exercise (locked, stopped or its time is up)."""
        if stim.state is StimState.LOCKED:
            self._say_now("stim.unavailable")
        elif stim.reason != "session_limit":
            self._say_now("stim.stopped")
        self.rep = repetitions  # the whole exercise is over, not just this frame
        self._finish_segment(seg, t)

    # --- output ---------------------------------------------------------------------------

    def _say(self, key: str, at: float, priority: Priority = Priority.ROUTINE) -> None:
        self._note_heard(key, at, priority)
        extra = {"priority": "correction"} if priority is Priority.CORRECTION else {}
        self._emit_at(at, EventKind.SAY, phrase=key, text=self.cat.text(key), lang=self.cat.lang,
                      at=round(at, 3), duration_s=round(self.timing.duration(key), 3), **extra)

    def _say_now_all(self, keys: Sequence[str]) -> None:
        """Parts of one sentence (words and numbers), one after the other, from now."""
        if not keys:
            return
        self._say_now(keys[0], span=sum(self.timing.duration(k) for k in keys) + 0.08 * (len(keys) - 1))
        at = self._heard[-1].end
        for key in keys[1:]:
            at += 0.08
            self._say(key, at)
            at += self.timing.duration(key)
        self._busy_until = max(self._busy_until, at)

    def _say_now(self, key: str, span: float | None = None) -> None:
        t = max(self.session_time(), 0.0)
        at = max(t, self._busy_until if self._busy_until - t < 1.0 else t)
        at = self._after_correction(at)
        if self._segment is not None and self.state is not State.PAUSED:  # heard whole (plan.py)
            at = self._answer_at(self._segment, at, self.timing.duration(key) if span is None else span)
        self._busy_until = max(self._busy_until, at + self.timing.duration(key))
        self._say(key, at)

    def _emit(self, kind: EventKind, **data) -> None:
        self._emit_at(self.session_time(), kind, **data)

    def _emit_at(self, t: float, kind: EventKind, **data) -> None:
        event = Event(max(t, 0.0), kind, data)
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # one broken consumer must not stop the coaching
                log.exception("sink %s failed on %s", type(sink).__name__, kind)


# What follows a segment once its last phase is over.
AFTER_SEGMENT: dict[SegmentKind, Callable[[Session, Segment, float], None]] = {
    SegmentKind.CALIBRATION: Session._after_calibration,
    SegmentKind.INTRO: Session._after_intro,
    SegmentKind.REP: Session._after_rep,
    SegmentKind.OUTRO: Session._after_outro,
    SegmentKind.GREETING: Session._after_greeting,
    SegmentKind.CLOSING: Session._after_closing,
}
