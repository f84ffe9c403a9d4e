"""What the session measures does not depend on how the probe's samples arrive: a read of
many samples is taken as one sample at a time, sample for sample, to the last bit."""

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.coach.kinds import RELAXING, SegmentKind, SessionPhase, State
from appliance.coach.measuring import Measuring
from appliance.coach.plan import Calibration, PlannedPhase, Segment
from appliance.coach.programme import load_programme

PROGRAMME = load_programme("leaflet")  # exercises 0-6 with the probe in, 7 and 8 without


class _Session(Measuring):
    """The state `Measuring` reads and writes, as `Session` holds it."""

    def __init__(self, segment, calibration, state):
        self.programme = PROGRAMME
        self.state = state
        self.calibration = calibration
        self.sample_rate_hz = 100.0
        self.t0 = 1000.0
        self.reps = []
        self._segment = segment
        self._init_measuring(100.0)


def _take_samples_one_by_one(self, times, values):
    """`Measuring._take_samples` as first written: the filter, the detector and the recorder per sample."""
    seg = self._segment
    cal = self.calibration
    phase = seg.current if seg is not None and self.state is not State.PAUSED else None
    kind = phase.kind if phase else None
    rec = seg.recorder if seg is not None and seg.kind is SegmentKind.REP and phase else None
    if rec is not None and not self._uses_probe(seg):
        rec = None
    hold_target = phase.level_pct if phase and phase.holding else 0.0
    relaxing = kind in RELAXING
    moving = kind is SessionPhase.MOVE
    filt = self._filter
    for ts, v in zip(times, values, strict=False):
        p = filt(v)
        self._pressure = p
        if cal is not None:
            self._strength_pct = (p - cal.rest_cmh2o) * 100.0 / cal.mvc_cmh2o
            if self._detector.update(ts, self._strength_pct) and rec is not None:
                rec.contractions += 1
        if rec is not None:
            rec.add(ts - self.t0, self._strength_pct, hold_target, relaxing, moving)
            if kind is SessionPhase.REST:
                self._rest_tail.append(p)
        elif kind is SessionPhase.CALIBRATE_REST:
            self._calib_rest.append(p)
        elif kind is SessionPhase.CALIBRATE_SQUEEZE:
            self._calib_window.append(p)


def _measured(s):
    d, seg = s._detector, s._segment
    return (s._pressure, s._strength_pct, d.active, d.onsets, d.offsets, d._below_since, s._rest_tail,
            s._calib_rest, s._calib_window, seg.recorder if seg is not None else None)


PHASES = [SessionPhase.HOLD, SessionPhase.REST, SessionPhase.MOVE, SessionPhase.CONTRACT, SessionPhase.INHALE,
          SessionPhase.CALIBRATE_REST, SessionPhase.CALIBRATE_SQUEEZE, SessionPhase.INTRO]


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(PHASES),
       segment=st.one_of(st.just(SegmentKind.REP), st.sampled_from(list(SegmentKind) + [None])),
       exercise=st.sampled_from([0, 3, 7]), level=st.sampled_from([0.0, 40.0]),
       calibrated=st.sampled_from([True, True, False]), paused=st.sampled_from([False, False, False, True]),
       # around a 30 cmH2O rest and a 35 cmH2O squeeze: onsets, offsets and dips in between
       pressures=st.lists(st.floats(25.0, 80.0), max_size=200),
       reads=st.lists(st.integers(0, 12), min_size=1, max_size=30).filter(any))
def test_the_squeeze_is_measured_the_same_however_many_samples_a_read_brings(
        kind, segment, exercise, level, calibrated, paused, pressures, reads):
    def session():
        seg = None if segment is None else Segment(
            segment, 0.0, [PlannedPhase(kind, 0.0, 100.0, level_pct=level)], [], exercise_index=exercise,
            phase_index=0)
        cal = Calibration(30.0, 35.0) if calibrated else None
        return _Session(seg, cal, State.PAUSED if paused else State.EXERCISING)

    times = [1000.0 + 0.01 * (i + 1) for i in range(len(pressures))]
    plain, blocks = session(), session()
    _take_samples_one_by_one(plain, times, pressures)
    i, k = 0, 0
    while i < len(pressures):
        n = reads[k % len(reads)]
        blocks._take_samples(times[i:i + n], pressures[i:i + n])
        i, k = i + n, k + 1
    assert _measured(blocks) == _measured(plain)
