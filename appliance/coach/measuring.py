"""What the session measures: samples into strength, the calibration, a repetition's metrics.

`Measuring` is the part of `appliance.coach.session.Session` that reads the probe's
samples during the planned phases and turns them into the `calibration` and `rep`
events. It is mixed into `Session`, which owns the state below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from appliance.coach.kinds import RELAXING, SegmentKind, SessionPhase, State
from appliance.coach.plan import Calibration, Segment
from appliance.events import EventKind
from appliance.sensor.signal import ContractionDetector, OneEuroFilter, RepRecorder

if TYPE_CHECKING:
    from appliance.coach.programme import Exercise, Programme

log = logging.getLogger(__name__)

MIN_MVC_CMH2O = 3.0  # below this no squeeze was seen; %MVC would explode
# A gentle reference squeeze is scaled up (x 100/30): one squeezed harder than asked would
# become an MVC, and targets, far above the patient's. After surgery the estimate is at most
# the mean MVC of 288 women (35.1 cmH2O, Angelo et al. 2017; CLINICAL.md): targets drawn
# from it err on the gentle side.
REFERENCE_MVC_CAP_CMH2O = 35.1


class Measuring:
    """Samples, calibration and repetition metrics of `Session`."""

    programme: Programme
    state: State
    calibration: Calibration | None
    sample_rate_hz: float
    t0: float
    reps: list[dict]
    _segment: Segment | None
    _filter: OneEuroFilter
    _detector: ContractionDetector
    _pressure: float
    _strength_pct: float
    _calib_rest: list[float]
    _calib_peaks: list[float]
    _calib_window: list[float]
    _rest_tail: list[float]

    if TYPE_CHECKING:  # provided by Session and Planning
        def _emit(self, kind: EventKind, **data: object) -> None: ...
        def _say_now(self, key: str, span: float | None = None) -> None: ...
        def _calibration_phrase(self, key: str) -> str: ...

    def _init_measuring(self, sample_rate_hz: float) -> None:
        self._filter = OneEuroFilter(sample_rate_hz)
        self._detector = ContractionDetector()
        self._pressure = 0.0  # smoothed, cmH2O above atmosphere
        self._strength_pct = 0.0
        self._calib_rest = []
        self._calib_peaks = []
        self._calib_window = []
        self._rest_tail = []

    def _take_samples(self, times: Iterable[float], values: Iterable[float]) -> None:
        # The filter takes the whole read at once and the recorder gets it as one block: the
        # same values in the same order as one sample at a time, with fewer calls per sample.
        ts = times if type(times) is list else list(times)
        vs = values if type(values) is list else list(values)
        if len(ts) != len(vs):
            n = min(len(ts), len(vs))
            ts, vs = ts[:n], vs[:n]
        if not vs:
            return
        seg = self._segment
        phase = seg.current if seg is not None and self.state is not State.PAUSED else None
        kind = phase.kind if phase else None
        rec = seg.recorder if seg is not None and seg.kind is SegmentKind.REP and phase else None
        if rec is not None and not self._uses_probe(seg):
            rec = None  # a daily-life exercise: the probe is out, nothing to measure
        ps = self._filter.run(vs)
        self._pressure = ps[-1]
        pcts = self._strengths(ts, ps, rec)
        if rec is not None:
            assert phase is not None
            t0 = self.t0
            rec.add_block([t - t0 for t in ts], pcts, phase.level_pct if phase.holding else 0.0,
                          kind in RELAXING, kind is SessionPhase.MOVE)
            if kind is SessionPhase.REST:
                self._rest_tail.extend(ps)
        elif kind is SessionPhase.CALIBRATE_REST:
            self._calib_rest.extend(ps)
        elif kind is SessionPhase.CALIBRATE_SQUEEZE:
            self._calib_window.extend(ps)

    def _strengths(self, ts: list[float], ps: list[float], rec: RepRecorder | None) -> list[float]:
        """Each smoothed sample in %MVC, through the contraction detector (onsets counted in
        `rec`); before the calibration, the last strength known."""
        cal = self.calibration
        if cal is None:
            return [self._strength_pct] * len(ps)
        rest, mvc = cal.rest_cmh2o, cal.mvc_cmh2o
        update = self._detector.update
        pcts: list[float] = []
        strength = self._strength_pct
        for t, p in zip(ts, ps, strict=True):
            strength = (p - rest) * 100.0 / mvc
            pcts.append(strength)
            if update(t, strength) and rec is not None:
                rec.contractions += 1
        self._strength_pct = strength
        return pcts

    def _uses_probe(self, seg: Segment | None) -> bool:
        """Whether the segment's exercise is measured (not a daily-life one, probe out)."""
        if seg is None or seg.exercise_index is None or seg.exercise_index >= len(self.programme.exercises):
            return True
        return self.programme.exercises[seg.exercise_index].probe

    def _finish_calibration(self) -> None:
        rest = _median(self._calib_rest[-int(5 * self.sample_rate_hz):]) if self._calib_rest else self._pressure
        peaks = [p - rest for p in self._calib_peaks]
        known = self.programme.known_mvc_cmh2o
        # A gentle reference squeeze is taken as its share of the MVC (post-op weeks): the
        # middle of the three (the strongest of three gentle ones overshoots), capped.
        share = self.programme.reference_squeeze_pct
        gentle = share < 100.0
        mvc = (_median(peaks) if gentle else max(peaks)) * 100.0 / share if peaks else 0.0
        capped = gentle and mvc > REFERENCE_MVC_CAP_CMH2O
        if capped:
            log.info("gentle reference squeezes %s cmH2O give an MVC of %.1f: capped at %.1f",
                     [round(p, 1) for p in peaks], mvc, REFERENCE_MVC_CAP_CMH2O)
            mvc = REFERENCE_MVC_CAP_CMH2O
        if known is not None and not peaks:
            mvc = known  # the clinic's or an earlier day's: only the rest was measured now
        if mvc < MIN_MVC_CMH2O:
            self._emit(EventKind.WARNING, warning="no_squeeze", phrase="status.low", mvc_cmh2o=round(mvc, 2))
            mvc = MIN_MVC_CMH2O
        self.calibration = Calibration(round(rest, 2), round(mvc, 2))
        self._emit(EventKind.CALIBRATION, rest_cmh2o=self.calibration.rest_cmh2o,
                   mvc_cmh2o=self.calibration.mvc_cmh2o, oxford_band=self.calibration.oxford_band,
                   squeezes_cmh2o=[round(p, 2) for p in peaks],
                   mvc_source=self.programme.mvc_source if known is not None and not peaks else "squeeze",
                   **({"mvc_capped": True} if capped else {}))
        self._say_now("calibrate.done_rest" if known is not None and not peaks
                      else self._calibration_phrase("calibrate.done"))

    def _record_rep(self, seg: Segment, status: str, t: float) -> None:
        if seg.kind is not SegmentKind.REP or seg.recorder.contract_at is None or self.calibration is None:
            return
        assert seg.exercise_index is not None
        ex = self.programme.exercises[seg.exercise_index]
        if not ex.probe:
            self._record_daily_life(seg, ex, status, t)
            return
        m = seg.recorder.metrics(self.calibration.mvc_cmh2o, 1.0 / self.sample_rate_hz)
        # The target it was planned at: stepped within the set (appliance/coach/rating.py).
        target = seg.target_pct if seg.target_pct is not None else ex.target_level_pct
        adapted = {"target_prescribed_pct": ex.target_level_pct} if target != ex.target_level_pct else {}
        data = dict(exercise=ex.id, exercise_index=seg.exercise_index, rep=seg.rep, status=status,
                    target_pct=target, **adapted, t_start=round(seg.start, 3), t_end=round(t, 3),
                    biofeedback=not seg.probe_fault, **m.__dict__)
        self.reps.append(data)
        self._emit(EventKind.REP, **data)
        # Track baseline drift: the end of a complete, relaxed rest is the new zero.
        if status == "complete" and m.release_complete and len(self._rest_tail) > self.sample_rate_hz:
            tail = self._rest_tail[-int(2 * self.sample_rate_hz):]
            new_rest = sum(tail) / len(tail)
            cal = self.calibration
            self.calibration = Calibration(round(0.8 * cal.rest_cmh2o + 0.2 * new_rest, 3), cal.mvc_cmh2o)


    def _record_daily_life(self, seg: Segment, ex: Exercise, status: str, t: float) -> None:
        """A daily-life repetition (probe out): when and how long it was asked, no strength."""
        asked = sum(p.end - p.start for p in seg.phases if p.kind is SessionPhase.MOVE)
        data: dict = dict(exercise=ex.id, exercise_index=seg.exercise_index, rep=seg.rep, status=status,
                          target_pct=ex.target_level_pct, t_start=round(seg.start, 3), t_end=round(t, 3),
                          biofeedback=False, hold_asked_s=round(asked, 2))
        data.update({k: None for k in STRENGTH_METRICS})
        self.reps.append(data)
        self._emit(EventKind.REP, **data)


# What a daily-life repetition (probe out) leaves empty: nothing was measured.
STRENGTH_METRICS = ("peak_cmh2o", "peak_pct", "time_to_peak_s", "held_s", "steadiness_pct",
                    "release_complete", "onset_s", "mean_hold_pct", "contractions", "artefact")


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
