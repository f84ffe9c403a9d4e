"""The coach: one training session as a state machine over the programme's phases.

It is the only place that decides. Samples and commands come in; phases, prompts,
repetition metrics and live feedback go out to the sinks (speech, tone, store,
timeline, stimulation, the simulated patient). Commands never raise: a command that
makes no sense now gets a short spoken answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, tzinfo
from enum import Enum
from typing import Protocol

from appliance.clock import Clock
from appliance.coach.pacing import Pace
from appliance.coach.programme import Exercise, Motion, PhaseKind, Programme
from appliance.commands import Command
from appliance.events import Event, Feedback, Sink
from appliance.sensor.base import ProbeStatus
from appliance.sensor.signal import ContractionDetector, OneEuroFilter, RepRecorder, oxford_band
from appliance.stim import STIM_EXERCISE_ID, StimContext, StimController, StimState
from appliance.voice.phrases import Catalogue

log = logging.getLogger(__name__)


class State(Enum):
    IDLE = "idle"
    CALIBRATING = "calibrating"
    EXERCISING = "exercising"
    PAUSED = "paused"
    DONE = "done"


class PhraseTiming(Protocol):
    def duration(self, key: str) -> float: ...

    def keyword_offset(self, key: str) -> float: ...


# Calibration (Modified Oxford procedure: best of three maximal contractions held 3-5 s).
CALIBRATION_REST_S = 8.0
CALIBRATION_SQUEEZES = 3
CALIBRATION_SQUEEZE_S = 5.0
CALIBRATION_RECOVER_S = 8.0
MIN_MVC_CMH2O = 3.0  # below this no squeeze was seen; %MVC would explode
GAP_S = 0.35  # silence between two prompts
WARNING_REPEAT_S = 30.0  # the same technique warning at most this often
VOLUME_STEP, MIN_VOLUME, MAX_VOLUME = 0.1, 0.2, 1.0


@dataclass
class PlannedPhase:
    kind: str  # a PhaseKind value, or calibrate_rest / calibrate_squeeze / intro / outro
    start: float
    end: float
    level_pct: float = 0.0
    on_exhale: bool = False
    motion: Motion = Motion.NONE

    @property
    def asks_contraction(self) -> bool:
        return self.kind in ("contract", "hold", "move", "release", "calibrate_squeeze")

    @property
    def holding(self) -> bool:
        return self.kind in ("hold", "move") and self.level_pct > 0


@dataclass
class Prompt:
    at: float
    key: str
    aligned: bool = False  # must start at `at` (its keyword lands on a transition)
    latest: float | None = None  # a flexible prompt may slide until here, else it is dropped


@dataclass
class Segment:
    """A stretch of the session planned in one go: an intro, a calibration, a repetition."""

    kind: str  # welcome, intro, calibration, rep, outro
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


class Session:
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
    ) -> None:
        from appliance.voice.phrases import EstimatedTiming

        self.programme = programme
        self.cat = catalogue
        self.clock = clock
        self.sinks = list(sinks)
        self.timing = timing or EstimatedTiming(catalogue)
        self.pace = pace or Pace()
        self.volume = volume
        self.sample_rate_hz = sample_rate_hz
        self.calibration = calibration
        self.state = State.IDLE
        self.t0 = clock.now()
        self.exercise_index = 0
        self.rep = 1
        self.reps: list[dict] = []  # every stored repetition's event data
        self._segment: Segment | None = None
        self._paused_from: State | None = None
        self._filter = OneEuroFilter(sample_rate_hz)
        self._detector = ContractionDetector()
        self._pressure = 0.0  # smoothed, cmH2O above atmosphere
        self._strength_pct = 0.0
        self._busy_until = 0.0  # when the last scheduled prompt finishes
        self._calib_rest: list[float] = []
        self._calib_peaks: list[float] = []
        self._calib_window: list[float] = []
        self._rest_tail: list[float] = []
        self._last_warning: dict[str, float] = {}
        self._exercise_done: set[int] = set()
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
        self._emit("session", state="ready")
        self._say_now("session.welcome")

    # --- public ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state is State.DONE

    @property
    def exercise(self) -> Exercise | None:
        if 0 <= self.exercise_index < len(self.programme.exercises):
            return self.programme.exercises[self.exercise_index]
        return None

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

    def _tick(self, now: float, times: Iterable[float], values: Iterable[float]) -> None:
        t = now - self.t0
        self._take_samples(times, values)
        seg = self._segment
        if seg is not None and self.state in (State.CALIBRATING, State.EXERCISING):
            while seg is self._segment and seg.phase_index + 1 < len(seg.phases) \
                    and seg.phases[seg.phase_index + 1].start <= t:
                self._enter_phase(seg, seg.phase_index + 1)
            self._fire_prompts(seg, t)
            if seg is self._segment and t >= seg.end:
                self._finish_segment(seg, t)
        elif seg is not None:  # welcome/outro speech while idle or done
            self._fire_prompts(seg, t)
        if self.stim is not None:
            self._tick_stim(t)
        phase = self._segment.current if self._segment and self.state is not State.PAUSED else None
        active = bool(phase and phase.asks_contraction)
        target = phase.level_pct if phase and phase.kind != "calibrate_squeeze" else 0.0
        feedback_ok = self.biofeedback
        if not feedback_ok and self._segment is not None and self._segment.kind == "rep":
            self._segment.probe_fault = True  # this repetition was guided without biofeedback
        fb = Feedback(t, self._strength_pct if feedback_ok else 0.0, target,
                      active and self.state is State.EXERCISING and feedback_ok, self._pressure)
        for sink in self.sinks:
            sink.feedback(fb)

    def command(self, cmd: Command, source: str = "voice") -> bool:
        """Act on a command; returns whether it was accepted. Never raises."""
        if self.stim is not None:  # any command or button press drops the stim line first
            self.stim.command(self.session_time(), cmd, source)
        try:
            accepted = self._command(cmd)
        except Exception:  # a coach bug must not end the patient's session silently
            log.exception("command %s failed", cmd)
            accepted = False
        self._emit("command", command=cmd.value, source=source, accepted=accepted)
        return accepted

    def observe_warning(self, warning: str, phrase: str) -> None:
        """A technique or probe warning from the signal side; spoken at most every 30 s."""
        t = self.session_time()
        if t - self._last_warning.get(warning, -1e9) < WARNING_REPEAT_S:
            return
        self._last_warning[warning] = t
        self._emit("warning", warning=warning, phrase=phrase)
        self._say_now(phrase)

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    # --- samples --------------------------------------------------------------------------

    def _take_samples(self, times: Iterable[float], values: Iterable[float]) -> None:
        seg = self._segment
        cal = self.calibration
        phase = seg.current if seg is not None and self.state is not State.PAUSED else None
        kind = phase.kind if phase else None
        rec = seg.recorder if seg is not None and seg.kind == "rep" and phase else None
        hold_target = phase.level_pct if phase and phase.holding else 0.0
        relaxing = kind in ("rest", "inhale")
        filt = self._filter
        for ts, v in zip(times, values, strict=False):
            p = filt(v)
            self._pressure = p
            if cal is not None:
                self._strength_pct = (p - cal.rest_cmh2o) * 100.0 / cal.mvc_cmh2o
                if self._detector.update(ts, self._strength_pct) and rec is not None:
                    rec.contractions += 1
            if rec is not None:
                rec.add(ts - self.t0, self._strength_pct, hold_target, relaxing)
                if kind == "rest":
                    self._rest_tail.append(p)
            elif kind == "calibrate_rest":
                self._calib_rest.append(p)
            elif kind == "calibrate_squeeze":
                self._calib_window.append(p)

    # --- the plan -------------------------------------------------------------------------

    def _phase_seconds(self, ex: Exercise, ph) -> float:
        if ph.kind is PhaseKind.INHALE:
            return self.pace.inhale_s
        if ph.breaths:
            return ph.breaths * self.pace.breath_s
        if ph.seconds is not None:
            return ph.seconds
        if ph.kind is PhaseKind.REST:
            return ex.rest_between_reps_s
        return self.pace.exhale_s  # on_exhale without a length: the whole out-breath

    def _plan_rep(self, t: float) -> Segment:
        ex = self.exercise
        assert ex is not None
        phases: list[PlannedPhase] = []
        aligned: list[Prompt] = []
        flexible: list[Prompt] = []
        start = t
        first = self.rep == 1
        for i, ph in enumerate(ex.phases):
            dur = self._phase_seconds(ex, ph)
            if ph.kind is PhaseKind.INHALE and i + 1 < len(ex.phases) and ex.phases[i + 1].on_exhale:
                room = self._inhale_room(ex, ph, ex.phases[i + 1], first)
                dur = max(dur, room)
                if self.breath_follower is not None:  # the patient's own out-breath, when clear
                    dur = self.breath_follower.inhale_seconds(self.t0 + start, dur, room)
            pp = PlannedPhase(ph.kind.value, start, start + dur, round(ph.level * ex.target_level_pct, 1),
                              ph.on_exhale, ph.motion)
            phases.append(pp)
            key = ph.say if first or not ph.say_again else ph.say_again
            if key:
                offset = self.timing.keyword_offset(key)
                if ph.on_exhale or self.cat.keyword_prefix(key) or "^" in self.cat.raw(key):
                    aligned.append(Prompt(max(t, start - offset), key, aligned=True))
                else:
                    flexible.append(Prompt(start + 0.05, key, latest=start + 0.05 + max(0.5, dur * 0.5)))
            if ph.count and ph.seconds:
                for i in range(1, int(ph.seconds) + 1):
                    flexible.append(Prompt(start + i - 1, f"count.{i}", latest=start + i - 1 + 0.25))
            for c in ex.cautions:
                if c.phase is ph.kind and self.rep in c.reps:
                    flexible.append(Prompt(start + 0.3, c.phrase, latest=start + dur - 0.5))
            start += dur
        if self.rep == ex.repetitions - 1 and ex.repetitions > 2:
            rest = phases[-1]
            if rest.kind == "rest":
                flexible.append(Prompt(rest.start + 0.5, "cue.last_rep", latest=rest.end - 1.0))
        prompts = self._fit(aligned, flexible, t)
        return Segment("rep", t, phases, prompts, self.exercise_index, self.rep)

    def _inhale_room(self, ex: Exercise, inhale, contract, first: bool) -> float:
        """An in-breath long enough for its own cue and the lead of the out-breath cue."""
        pick = lambda ph: ph.say if first or not ph.say_again else ph.say_again  # noqa: E731
        own, nxt = pick(inhale), pick(contract)
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

    def _plan_speech(self, kind: str, keys: Sequence[str], t: float, tail_s: float = 0.8) -> Segment:
        prompts = []
        at = max(t, self._busy_until) + 0.2
        for key in keys:
            prompts.append(Prompt(at, key))
            at += self.timing.duration(key) + GAP_S
        self._busy_until = at
        end = max(at + tail_s, t + 0.5)
        return Segment(kind, t, [PlannedPhase(kind, t, end)], prompts, self.exercise_index)

    def _calibration_phrase(self, key: str) -> str:
        """The maximal calibration's phrase, or its gentle form when the programme asks for one."""
        gentle = f"{key}_gentle"
        if self.programme.reference_squeeze_pct < 100.0 and self.cat.has(gentle):
            return gentle
        return key

    def _plan_calibration(self, t: float) -> Segment:
        speech = self._plan_speech("intro", [self._calibration_phrase("calibrate.intro")], t, tail_s=0.2)
        level = self.programme.reference_squeeze_pct
        squeeze_key = self._calibration_phrase("calibrate.squeeze")
        again_key = self._calibration_phrase("calibrate.again")
        t = speech.end
        phases = [PlannedPhase("calibrate_rest", t, t + CALIBRATION_REST_S)]
        prompts = speech.prompts + [Prompt(t + 0.1, "calibrate.rest")]
        start = t + CALIBRATION_REST_S
        for i in range(CALIBRATION_SQUEEZES):
            phases.append(PlannedPhase("calibrate_squeeze", start, start + CALIBRATION_SQUEEZE_S, level))
            phases.append(PlannedPhase("calibrate_release", start + CALIBRATION_SQUEEZE_S,
                                       start + CALIBRATION_SQUEEZE_S + CALIBRATION_RECOVER_S))
            squeeze_at = start - self.timing.keyword_offset(squeeze_key)
            if i:
                again_at = squeeze_at - GAP_S - self.timing.duration(again_key)
                prompts.append(Prompt(again_at, again_key))
            prompts.append(Prompt(squeeze_at, squeeze_key))
            prompts.append(Prompt(start + CALIBRATION_SQUEEZE_S + 0.05, "calibrate.squeeze_release"))
            start += CALIBRATION_SQUEEZE_S + CALIBRATION_RECOVER_S
        self._busy_until = max(self._busy_until, start)
        return Segment("calibration", speech.start, speech.phases + phases, prompts)

    # --- running the plan -----------------------------------------------------------------

    def _begin(self, seg: Segment) -> None:
        self._segment = seg
        t = self.session_time()
        if seg.phases and seg.phases[0].start <= t:
            self._enter_phase(seg, 0)
        self._fire_prompts(seg, t)

    def _enter_phase(self, seg: Segment, index: int) -> None:
        seg.phase_index = index
        ph = seg.phases[index]
        if seg.kind == "rep" and ph.kind == "contract" and seg.recorder.contract_at is None:
            seg.recorder.contract_at = ph.start
        if ph.kind == "calibrate_squeeze":
            self._calib_window = []
        if index > 0 and seg.phases[index - 1].kind == "calibrate_squeeze" and self._calib_window:
            self._calib_peaks.append(_peak_of_mean(self._calib_window, int(0.25 * self.sample_rate_hz)))
        if ph.kind == "rest":
            self._rest_tail = []
        data = dict(phase=ph.kind, start=round(ph.start, 3), end=round(ph.end, 3), level_pct=ph.level_pct)
        if seg.exercise_index is not None and self.exercise is not None and seg.kind in ("rep", "intro"):
            data["exercise"] = self.programme.exercises[seg.exercise_index].id
        elif seg.kind == "calibration":
            data["exercise"] = "calibration"
        if seg.rep is not None:
            data["rep"] = seg.rep
        if ph.on_exhale:
            data["on_exhale"] = True
        if ph.motion is not Motion.NONE:
            data["motion"] = ph.motion.value
        self._emit_at(ph.start, "phase", **data)

    def _fire_prompts(self, seg: Segment, t: float) -> None:
        while seg.prompt_index < len(seg.prompts) and seg.prompts[seg.prompt_index].at <= t + 1e-9:
            p = seg.prompts[seg.prompt_index]
            seg.prompt_index += 1
            self._say(p.key, p.at)

    def _finish_segment(self, seg: Segment, t: float) -> None:
        self._fire_prompts(seg, seg.end + 1e9)  # anything left (rounding) is said now
        if seg.kind == "calibration":
            self._finish_calibration()
            self._next_exercise_intro(t)
        elif seg.kind == "intro":
            self.rep = 1
            self._emit("exercise", exercise=self.exercise.id, index=self.exercise_index, state="started")
            self._begin(self._plan_rep(t))
        elif seg.kind == "rep":
            self._record_rep(seg, "complete", t)
            ex = self.exercise
            if self.rep < ex.repetitions:
                self.rep += 1
                self._begin(self._plan_rep(t))
            else:
                self._exercise_done.add(self.exercise_index)
                self._emit("exercise", exercise=ex.id, index=self.exercise_index, state="finished")
                keys = list(ex.outro)
                if keys:
                    self._begin(self._plan_speech("outro", keys, t))
                else:
                    self.exercise_index += 1
                    self._next_exercise_intro(t)
        elif seg.kind == "outro":
            self.exercise_index += 1
            self._next_exercise_intro(t)
        elif seg.kind == "greeting":
            self._next_exercise_intro(t)
        elif seg.kind == "closing":
            self._end("done")

    def _next_exercise_intro(self, t: float) -> None:
        self.state = State.EXERCISING
        ex = self.exercise
        while ex is not None and ex.id == STIM_EXERCISE_ID and (
                self.stim is None or self.stim.refusal(self.local_day())):
            self.exercise_index += 1  # no stim today: the exercise is left out, unannounced
            ex = self.exercise
        if ex is None:
            self._begin(self._plan_speech("closing", ["session.done", *self.programme.outro], t, tail_s=1.0))
            return
        self.rep = 1
        self._begin(self._plan_speech("intro", [ex.title, *ex.intro], t))

    def _finish_calibration(self) -> None:
        rest = _median(self._calib_rest[-int(5 * self.sample_rate_hz):]) if self._calib_rest else self._pressure
        peaks = [p - rest for p in self._calib_peaks]
        # A gentle reference squeeze is taken as its share of the MVC (post-op weeks).
        mvc = max(peaks) * 100.0 / self.programme.reference_squeeze_pct if peaks else 0.0
        if mvc < MIN_MVC_CMH2O:
            self._emit("warning", warning="no_squeeze", phrase="status.low", mvc_cmh2o=round(mvc, 2))
            mvc = MIN_MVC_CMH2O
        self.calibration = Calibration(round(rest, 2), round(mvc, 2))
        self._emit("calibration", rest_cmh2o=self.calibration.rest_cmh2o, mvc_cmh2o=self.calibration.mvc_cmh2o,
                   oxford_band=self.calibration.oxford_band, squeezes_cmh2o=[round(p, 2) for p in peaks])
        self._say_now(self._calibration_phrase("calibrate.done"))

    def _record_rep(self, seg: Segment, status: str, t: float) -> None:
        if seg.kind != "rep" or seg.recorder.contract_at is None or self.calibration is None:
            return
        ex = self.programme.exercises[seg.exercise_index]
        m = seg.recorder.metrics(self.calibration.mvc_cmh2o, 1.0 / self.sample_rate_hz)
        data = dict(exercise=ex.id, exercise_index=seg.exercise_index, rep=seg.rep, status=status,
                    target_pct=ex.target_level_pct, t_start=round(seg.start, 3), t_end=round(t, 3),
                    biofeedback=not seg.probe_fault, **m.__dict__)
        self.reps.append(data)
        self._emit("rep", **data)
        # Track baseline drift: the end of a complete, relaxed rest is the new zero.
        if status == "complete" and m.release_complete and len(self._rest_tail) > self.sample_rate_hz:
            tail = self._rest_tail[-int(2 * self.sample_rate_hz):]
            new_rest = sum(tail) / len(tail)
            cal = self.calibration
            self.calibration = Calibration(round(0.8 * cal.rest_cmh2o + 0.2 * new_rest, 3), cal.mvc_cmh2o)

    def _abort_segment(self, t: float) -> None:
        """Leave the current segment; a repetition already contracting is kept as partial."""
        seg = self._segment
        if seg is not None and seg.kind == "rep":
            cur = seg.current
            if seg.recorder.contract_at is not None and cur is not None and cur.kind != "rest":
                self._record_rep(seg, "partial", t)
            elif seg.recorder.contract_at is not None and cur is not None and cur.kind == "rest":
                self._record_rep(seg, "complete", t)
        self._segment = None
        self._busy_until = t

    def _end(self, status: str) -> None:
        if self.stim is not None:
            self.stim.shutdown(self.session_time(), f"session_{status}")
        self.state = State.DONE
        self.outcome = status  # "done", "stopped"...: how the session ended
        self._segment = None
        self._emit("session", state=status)

    # --- commands -------------------------------------------------------------------------

    def _command(self, cmd: Command) -> bool:
        s = self.state
        t = self.session_time()
        running = s in (State.CALIBRATING, State.EXERCISING)
        if cmd is Command.HELP:
            self._say_now("session.help")
            return True
        if cmd is Command.STATUS:
            self._say_now(self._status_phrase())
            return True
        if cmd in (Command.SLOWER, Command.FASTER):
            new = self.pace.slower() if cmd is Command.SLOWER else self.pace.faster()
            if new is None:
                self._say_now("session.slowest" if cmd is Command.SLOWER else "session.fastest")
                return False
            self.pace = new
            self._emit("setting", setting="pace", value=[new.inhale_s, new.exhale_s])
            self._say_now("session.slower" if cmd is Command.SLOWER else "session.faster")
            return True
        if cmd in (Command.LOUDER, Command.SOFTER):
            step = VOLUME_STEP if cmd is Command.LOUDER else -VOLUME_STEP
            new_volume = round(min(MAX_VOLUME, max(MIN_VOLUME, self.volume + step)), 2)
            if new_volume == self.volume:
                self._say_now("session.loudest" if cmd is Command.LOUDER else "session.softest")
                return False
            self.volume = new_volume
            self._emit("setting", setting="volume", value=new_volume)
            self._say_now("session.louder" if cmd is Command.LOUDER else "session.softer")
            return True
        if cmd is Command.START:
            if s is State.IDLE:
                self._start(t)
                return True
            if s is State.PAUSED:
                return self._resume(t)
            self._say_now("session.already_running" if running else "session.not_now")
            return False
        if cmd is Command.RESUME:
            if s is State.PAUSED:
                return self._resume(t)
            self._say_now("session.already_running" if running else "session.not_now")
            return False
        if cmd is Command.LATER:
            if s is State.IDLE:
                self._say_now("session.later")
                self._emit("session", state="snoozed")
                return True
            self._say_now("session.not_now")
            return False
        if cmd is Command.STOP:
            if s in (State.IDLE, State.DONE):
                self._say_now("session.not_now")
                return False
            self._abort_segment(t)
            self._say_now("session.stopped")
            self._end("stopped")
            return True
        if cmd is Command.PAUSE:
            if not running:
                self._say_now("session.paused" if s is State.PAUSED else "session.not_now")
                return False
            self._abort_segment(t)
            self._paused_from = s
            self.state = State.PAUSED
            self._emit("session", state="paused")
            self._say_now("session.paused")
            return True
        if self.more_phrase and (
                (cmd is Command.NEXT and s is State.EXERCISING
                 and self.exercise_index >= len(self.programme.exercises) - 1)
                or (cmd is Command.START and s is State.DONE)):
            self._say_now(self.more_phrase)
            return False
        if cmd in (Command.NEXT, Command.PREVIOUS, Command.REPEAT):
            if s not in (State.EXERCISING, State.PAUSED) or (
                    s is State.PAUSED and self._paused_from is State.CALIBRATING):
                self._say_now("session.not_now")
                return False
            return self._move(cmd, t)
        self._say_now("session.not_now")
        return False

    def _start(self, t: float) -> None:
        self._emit("session", state="started", programme=self.programme.id, lang=self.cat.lang)
        self._segment = None
        intro = self._plan_speech("intro", ["session.start", *self.programme.intro], t, tail_s=0.3)
        if self.calibration is None:
            self.state = State.CALIBRATING
            cal = self._plan_calibration(intro.end)
            cal.prompts[:0] = intro.prompts
            cal.phases[:0] = intro.phases
            cal.start = t
            self._begin(cal)
        else:
            self.state = State.EXERCISING
            self._emit("calibration", rest_cmh2o=self.calibration.rest_cmh2o,
                       mvc_cmh2o=self.calibration.mvc_cmh2o, oxford_band=self.calibration.oxford_band)
            intro.kind = "greeting"
            self._begin(intro)

    def _resume(self, t: float) -> bool:
        self.state = self._paused_from or State.EXERCISING
        self._emit("session", state="resumed")
        self._say_now("session.resumed")
        if self.state is State.CALIBRATING:
            self._calib_rest, self._calib_peaks = [], []
            self._begin(self._plan_calibration(self._busy_until))
        elif self.exercise is None:
            self._next_exercise_intro(self._busy_until)
        else:
            self._begin(self._plan_rep(self._busy_until + 0.3))
        return True

    def _move(self, cmd: Command, t: float) -> bool:
        ex = self.exercise
        was_paused = self.state is State.PAUSED
        if cmd is Command.REPEAT:
            seg = self._segment
            if ex is None or (seg is None and not was_paused):
                self._say_now("session.nothing_to_repeat")
                return False
            self._abort_segment(t)
            self.state = State.EXERCISING
            self._say_now("session.repeat")
            self._begin(self._plan_rep(self._busy_until + 0.3))
            return True
        self._abort_segment(t)
        self.state = State.EXERCISING
        if cmd is Command.NEXT:
            if ex is not None and self.exercise_index not in self._exercise_done:
                self._emit("exercise", exercise=ex.id, index=self.exercise_index, state="skipped")
            self._say_now("session.skip")
            self.exercise_index = min(self.exercise_index + 1, len(self.programme.exercises))
        else:
            if self.exercise_index == 0:
                self._say_now("session.first_exercise")
            else:
                self._say_now("session.back")
                self.exercise_index -= 1
        self._next_exercise_intro(self._busy_until)
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

    # --- stimulation ----------------------------------------------------------------------

    def local_day(self) -> date:
        """Today in the prescription's time zone (`tz`, set by the wiring), else the device's."""
        return self.clock.wall().astimezone(self.tz).date()

    def attach_stim(self, controller: StimController) -> None:
        """Run the stim exercise with this controller: its events go to the sinks."""
        self.stim = controller
        controller.emit = lambda e: self._emit_at(e.t, e.kind, **e.data)
        controller.announce_lead = self.timing.keyword_offset

    def _tick_stim(self, t: float) -> None:
        stim = self.stim
        seg = self._segment
        ex = self.exercise
        in_exercise = (ex is not None and ex.id == STIM_EXERCISE_ID
                       and self.state in (State.EXERCISING, State.PAUSED))
        running = in_exercise and self.state is State.EXERCISING and seg is not None \
            and seg.kind == "rep"
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
            if stim.state is StimState.LOCKED:
                self._say_now("stim.unavailable")
            elif stim.reason != "session_limit":
                self._say_now("stim.stopped")
            self.rep = ex.repetitions  # the whole exercise is over, not just this frame
            self._finish_segment(seg, t)

    # --- output ---------------------------------------------------------------------------

    def _say(self, key: str, at: float) -> None:
        self._emit_at(at, "say", phrase=key, text=self.cat.text(key), lang=self.cat.lang, at=round(at, 3))

    def _say_now(self, key: str) -> None:
        t = max(self.session_time(), 0.0)
        at = max(t, self._busy_until if self._busy_until - t < 1.0 else t)
        self._busy_until = max(self._busy_until, at + self.timing.duration(key))
        self._say(key, at)

    def _emit(self, kind: str, **data) -> None:
        self._emit_at(self.session_time(), kind, **data)

    def _emit_at(self, t: float, kind: str, **data) -> None:
        event = Event(max(t, 0.0), kind, data)
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # one broken consumer must not stop the coaching
                log.exception("sink %s failed on %s", type(sink).__name__, kind)


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _peak_of_mean(values: list[float], width: int) -> float:
    """The highest moving average of `width` samples: a peak that noise cannot fake."""
    width = max(1, min(width, len(values)))
    acc = sum(values[:width])
    best = acc
    for i in range(width, len(values)):
        acc += values[i] - values[i - width]
        best = max(best, acc)
    return best / width
