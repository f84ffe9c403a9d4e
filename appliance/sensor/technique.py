"""Technique warnings from the pressure curve: bearing down, holding the breath, abdominal help,
letting go early, a late or incomplete release.

`TechniqueMonitor` hears the coach's phases (it is a `Sink`) and sees the samples. While a
repetition is on it looks for each fault as soon as the curve can show it (`LIVE_FAULTS`),
so the coach can correct within the repetition; at the end of each contraction it judges
the whole repetition again (`judgements`), and tells only what was not told live. `ObservedSource` wraps the pressure
source the control loop reads, so the probe's status, the breath and the technique reach
the coach as observations (`Session.observe_warning`) without the loop knowing about them.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from appliance.events import Event, Feedback
from appliance.sensor.base import PressureSource, ProbeStatus
from appliance.sensor.breath import BreathDetector

log = logging.getLogger(__name__)

# Which catalogue phrase answers which observation (the leaflet's words).
WARNING_PHRASES = {
    "push_down": "caution.no_push",
    "breath_hold": "caution.breathe",
    "abdominal": "caution.no_abdomen",
    "let_go": "correct.let_go_explain",
    "late_release": "correct.late_release_explain",
}
LIVE_FAULTS = tuple(WARNING_PHRASES)
PROBE_PHRASES = {
    ProbeStatus.NOT_INSERTED: "probe.not_inserted",
    ProbeStatus.DISCONNECTED: "probe.disconnected",
    ProbeStatus.SATURATED: "probe.saturated",
    ProbeStatus.DRIFTING: "probe.drifting",
    ProbeStatus.OK: "probe.ok",
}

RELAXED = ("inhale", "rest", "intro", "calibrate_rest")
SQUEEZING = ("contract", "hold", "move")


# np.median, np.percentile and np.unique import numpy.ma (~0.07 s at every process start);
# these two give the same numbers for a 1-D float array (tests/test_technique.py).


def _median(values: np.ndarray) -> float:
    """np.median: the middle of the sorted values, or the mean of the two middle ones."""
    s = np.sort(values)
    n = len(s)
    if n == 0 or math.isnan(s[-1]):  # NaN sorts last; np.median gives NaN then
        return math.nan
    if n % 2:
        return float(s[n // 2])
    return float((s[n // 2 - 1] + s[n // 2]) / 2.0)


def _mean(values: np.ndarray) -> float:
    """float(np.mean(values)) for a 1-D float array: numpy's own sum over the count, without
    the dispatch around it (the live level is taken every 50 ms)."""
    return float(_add_reduce(values) / len(values))


_add_reduce = np.add.reduce


def _percentile(values: np.ndarray, q: float) -> float:
    """np.percentile's default ('linear'): between the two sorted values around
    (n - 1) * q / 100, interpolated from the nearer end as numpy does."""
    s = np.sort(values)
    n = len(s)
    if n == 0 or math.isnan(s[-1]):
        return math.nan
    v = (n - 1) * (q / 100)
    lo = math.floor(v)
    if lo >= n - 1:
        return float(s[-1])
    a, b, g = float(s[lo]), float(s[lo + 1]), v - lo
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


@dataclass(frozen=True)
class TechniqueSettings:
    """Thresholds tuned on simulated patients (bench/technique.py prints the rates)."""

    slow_rise_s: float = 0.85  # a lift goes from 10 % to 63 % of its plateau faster than this
    reference_s: float = 6.0  # relaxed seconds before the cue that show the resting breath
    min_rise_cmh2o: float = 3.0  # below this there is no contraction to judge
    breath_kept_fraction: float = 0.5  # hold ripple below this share of the resting ripple = held
    min_rest_ripple: float = 0.08  # cmH2O/s: resting ripple too faint to compare against
    held_ripple_max: float = 0.25  # cmH2O/s: above this the patient is visibly breathing
    min_judged_hold_s: float = 8.0  # shorter holds can fall inside one out-breath
    abdominal_rise_cmh2o: float = 4.0  # abdominal sensor rise that means the belly helped
    abdominal_fraction: float = 0.3  # ...or this share of the probe's rise, whichever is larger
    push_window_s: float = 4.0  # the rise is judged live this long after the contract cue
    breath_check_every_s: float = 2.0  # a long hold's breathing is looked at this often
    let_go_fraction: float = 0.35  # the last half second below this share of the hold's best = let go
    let_go_min_left_s: float = 1.0  # ...while at least this much of the hold is still to come
    late_release_after_s: float = 1.5  # seconds into the rest when the release is looked at
    late_release_fraction: float = 0.25  # still this share of the squeeze up = not let go
    late_release_min_cmh2o: float = 2.5  # ...and at least this much (a breath is ~1.5-2)


@dataclass
class RepJudgement:
    exercise: str | None
    rep: int | None
    rise_63_s: float | None = None
    rest_ripple: float | None = None
    hold_ripple: float | None = None
    abdominal_rise: float | None = None
    warnings: list[str] = field(default_factory=list)


def ripple_activity(times: np.ndarray, values: np.ndarray) -> float | None:
    """RMS slope (cmH2O/s) of the pressure in 0.5 s means, after a straight-line trend.

    Breathing moves the probe by about 0.3–0.7 cmH2O/s; a held breath by almost nothing;
    averaging over half-seconds keeps sensor noise (0.3 cmH2O at 100 Hz) well below that.
    """
    if len(times) < 4 or times[-1] - times[0] < 2.0:
        return None
    edges = np.arange(times[0], times[-1] + 1e-9, 0.5)
    idx = np.digitize(times, edges)
    means_t, means_v = [], []
    for k in sorted(set(idx.tolist())):  # np.unique imports numpy.ma
        sel = idx == k
        if sel.sum() >= 2:
            means_t.append(times[sel].mean())
            means_v.append(values[sel].mean())
    if len(means_t) < 4:
        return None
    mt, mv = np.array(means_t), np.array(means_v)
    mv = mv - np.polyval(np.polyfit(mt, mv, 1), mt)
    slopes = np.diff(mv) / np.diff(mt)
    return float(np.sqrt(np.mean(slopes**2)))


class TechniqueMonitor:
    """Judges each repetition's technique from the probe (and the abdominal channel, if any).

    - push_down (bearing down): the rise after the contract cue is slow and broad (10 % to
      63 % of the plateau takes longer than `slow_rise_s`; a pelvic floor lift is quicker).
      A single probe cannot prove straining; this is the pattern the leaflet warns about.
    - breath_hold: during a hold of at least a breath's length the ripple almost vanishes
      compared with the resting ripple just before.
    - abdominal: the abdominal sensor rises with the lift.

    `warn(warning, phrase)` is called for each finding (the session rate-limits speech).
    """

    def __init__(
        self,
        warn: Callable[[str, str], None] | None = None,
        settings: TechniqueSettings | None = None,
    ) -> None:
        self.warn = warn
        self.settings = settings or TechniqueSettings()
        self.judgements: list[RepJudgement] = []
        self._t: list[float] = []
        self._p: list[float] = []
        self._abd_t: list[float] = []
        self._abd_p: list[float] = []
        self._phases: list[tuple[str, float, float]] = []  # this repetition's (kind, start, end)
        self._rep_key: tuple | None = None
        self._session_t0: float | None = None
        self._live = _LiveState()

    # --- Sink ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if event.kind != "phase":
            return
        d = event.data
        key = (d.get("exercise"), d.get("rep"))
        kind = d["phase"]
        if key != self._rep_key:
            self._judge()
            # Keep the relaxed stretch before this repetition as the resting reference.
            keep_from = d["start"] - 12.0
            self._trim(keep_from)
            self._phases = [p for p in self._phases if p[0] in RELAXED and p[2] > keep_from]
            self._rep_key = key
            self._live = _LiveState()
        self._phases.append((kind, float(d["start"]), float(d["end"])))
        self._live.phase = (kind, float(d["start"]), float(d["end"]), float(d.get("level_pct") or 0.0))
        self._live.phase_best = None
        if kind in SQUEEZING and self._live.cue is None and kind == "contract":
            self._live.cue = float(d["start"])

    def feedback(self, fb: Feedback) -> None:
        return None

    # --- samples (session seconds) -----------------------------------------------------------

    def add(self, times, cmh2o) -> None:
        ts = self._t
        ts.extend(map(float, times))
        self._p.extend(map(float, cmh2o))
        if ts and self._rep_key is not None:
            live = self._live  # _check_live's first test, here: most reads come between two looks
            if live.phase is not None and live.cue is not None and ts[-1] - live.last_check >= 0.05:
                self._check_live(ts[-1])

    def add_abdominal(self, times, cmh2o) -> None:
        self._abd_t.extend(map(float, times))
        self._abd_p.extend(map(float, cmh2o))

    def finish(self) -> None:
        """Judge the last repetition (end of session)."""
        self._judge()
        self._rep_key = None

    def _trim(self, before: float) -> None:
        if self._t and self._t[0] < before:
            k = bisect_left(self._t, before)  # the lists are in time order: no array built
            del self._t[:k], self._p[:k]
        if self._abd_t and self._abd_t[0] < before:
            k = bisect_left(self._abd_t, before)
            del self._abd_t[:k], self._abd_p[:k]

    # --- the judgement -----------------------------------------------------------------------

    def _segment(self, kinds: tuple[str, ...], t, p, after: float = 0.0):
        spans = [(s, e) for k, s, e in self._phases if k in kinds]
        if not spans:
            return np.empty(0), np.empty(0)
        sel = np.zeros(len(t), bool)
        for s, e in spans:
            sel |= (t >= s + after) & (t < e)
        return t[sel], p[sel]

    def _judge(self) -> None:
        if self._rep_key is None or not any(k in SQUEEZING for k, _, _ in self._phases):
            return
        s = self.settings
        t, p = np.array(self._t), np.array(self._p)
        j = RepJudgement(exercise=self._rep_key[0], rep=self._rep_key[1])
        contract = [(st, e) for k, st, e in self._phases if k == "contract"]
        rest_t, rest_p = self._segment(RELAXED, t, p)
        if not contract or len(rest_t) < 10:
            return
        cue = contract[0][0]
        baseline = float(_median(rest_p[rest_t < cue][-200:])) if np.any(rest_t < cue) else None
        squeeze_end = max(e for k, _, e in self._phases if k in SQUEEZING)
        sq = (t >= cue) & (t < squeeze_end)
        if baseline is None or sq.sum() < 10:
            return
        rise = p[sq] - baseline
        rel = t[sq] - cue
        # The plateau: the 90th centile of the first 4 s after the cue. The rise time is
        # from 10 % to 63 % of it, so the patient's reaction time does not count.
        early = rise[rel < 4.0]
        if len(early) >= 25:
            # 0.25 s running mean: a noise spike must not count as the start of the rise.
            n = max(1, int(round(0.25 * len(early) / max(rel[len(early) - 1], 1e-3))))
            early = np.convolve(early, np.ones(n) / n, mode="same")
        plateau = float(_percentile(early, 90)) if len(early) >= 4 else 0.0
        # A squeeze shorter than 4 s ends before a slow push has shown how slow it is, and a
        # movement (knee lift, squat, hop) adds its own pressure steps to the rise.
        moving = any(k == "move" for k, _, _ in self._phases)
        if plateau >= s.min_rise_cmh2o and squeeze_end - cue >= 4.0 and not moving:
            start = np.nonzero(early >= 0.1 * plateau)[0]
            reached = np.nonzero(early >= 0.63 * plateau)[0]
            if len(start) and len(reached):
                j.rise_63_s = float(rel[reached[0]] - rel[start[0]])
        # Breath during a long hold, against the breath in the relaxed seconds before the cue
        # (not earlier: the previous release is still settling).
        before = (rest_t >= cue - s.reference_s) & (rest_t < cue)
        j.rest_ripple = ripple_activity(rest_t[before], rest_p[before])
        hold_t, hold_p = self._segment(("hold", "move"), t, p, after=1.0)
        hold_len = hold_t[-1] - hold_t[0] if len(hold_t) > 1 else 0.0
        if hold_len >= s.min_judged_hold_s:
            j.hold_ripple = ripple_activity(hold_t, hold_p)
        rest_ok = j.rest_ripple is not None and j.rest_ripple >= s.min_rest_ripple
        if j.rise_63_s is not None and j.rise_63_s > s.slow_rise_s:
            j.warnings.append("push_down")
        elif rest_ok and j.rest_ripple is not None and j.hold_ripple is not None and (
            j.hold_ripple < s.breath_kept_fraction * j.rest_ripple
            and j.hold_ripple < s.held_ripple_max
        ):
            j.warnings.append("breath_hold")
        if self._abd_t:
            at, ap = np.array(self._abd_t), np.array(self._abd_p)
            before = (at < cue) & (at >= cue - 5.0)
            during = (at >= cue + 0.5) & (at < squeeze_end)
            if before.sum() >= 5 and during.sum() >= 5:
                j.abdominal_rise = float(_median(ap[during]) - _median(ap[before]))
                limit = max(s.abdominal_rise_cmh2o, s.abdominal_fraction * max(plateau, 0.0))
                if j.abdominal_rise > limit:
                    j.warnings.append("abdominal")
        j.warnings.extend(w for w in self._live.told if w not in j.warnings)
        self.judgements.append(j)
        for w in j.warnings:
            log.info("technique: %s in %s rep %s (%s)", w, j.exercise, j.rep, j)
            if self.warn is not None and w not in self._live.told:
                self.warn(w, WARNING_PHRASES[w])

    # --- live: while the repetition is on --------------------------------------------------

    def _tell(self, fault: str) -> None:
        live = self._live
        if fault in live.told:
            return
        live.told.add(fault)
        log.info("technique (live): %s in %s rep %s", fault, *(self._rep_key or (None, None)))
        if self.warn is not None:
            self.warn(fault, WARNING_PHRASES[fault])

    def _check_live(self, now: float) -> None:
        """Look for the faults the curve can show by `now` (session seconds); cheap per call."""
        live = self._live
        if live.phase is None or live.cue is None or now - live.last_check < 0.05:
            return
        live.last_check = now
        kind, start, end, level = live.phase
        if live.baseline is None:
            live.baseline = self._baseline(live.cue)
            if live.baseline is None:
                return
        squeezing = kind in SQUEEZING
        late_release = kind == "rest" and now - start >= self.settings.late_release_after_s
        if not (squeezing or late_release):
            return  # nothing to look at now (the level below is only read by these checks)
        p = self._recent_pressure(now - 0.5)
        live.level = _mean(p) - live.baseline if len(p) >= 10 else None
        if squeezing:
            moving = any(k == "move" for k, _, _ in self._phases)
            if live.level is not None and now - live.cue >= 0.5:
                live.plateau = max(live.plateau, live.level)
            self._live_push_down(now, moving)
            self._live_abdominal(now)
            if kind == "hold" and level > 0:
                self._live_let_go(now, start, end)
            if kind in ("hold", "move"):
                self._live_breath_hold(now, start)
        else:
            self._live_late_release(now)

    def _baseline(self, cue: float) -> float | None:
        t, p = np.array(self._t), np.array(self._p)
        rest_t, rest_p = self._segment(RELAXED, t, p)
        before = rest_p[rest_t < cue][-200:]
        return float(_median(before)) if len(before) >= 10 else None

    def _recent(self, since: float) -> tuple[np.ndarray, np.ndarray]:
        k = bisect_left(self._t, since)  # np.searchsorted would copy the whole list first
        return np.array(self._t[k:]), np.array(self._p[k:])

    def _recent_pressure(self, since: float) -> np.ndarray:
        """`_recent(since)[1]`, without the times."""
        return np.array(self._p[bisect_left(self._t, since):])

    def _live_push_down(self, now: float, moving: bool) -> None:
        s, live = self.settings, self._live
        assert live.cue is not None and live.baseline is not None
        if live.push_checked or moving or now < live.cue + s.push_window_s:
            return
        live.push_checked = True
        t, p = self._recent(live.cue)
        rel, rise = t - live.cue, p - live.baseline
        early = rise[rel < s.push_window_s]
        if len(early) < 25:
            return
        n = max(1, int(round(0.25 * len(early) / max(rel[len(early) - 1], 1e-3))))
        early = np.convolve(early, np.ones(n) / n, mode="same")
        plateau = float(_percentile(early, 90))
        live.plateau = max(live.plateau, plateau)
        if plateau < s.min_rise_cmh2o:
            return
        start = np.nonzero(early >= 0.1 * plateau)[0]
        reached = np.nonzero(early >= 0.63 * plateau)[0]
        if len(start) and len(reached) and rel[reached[0]] - rel[start[0]] > s.slow_rise_s:
            self._tell("push_down")

    def _live_abdominal(self, now: float) -> None:
        s, live = self.settings, self._live
        assert live.cue is not None and live.baseline is not None
        if live.abdominal_checked or not self._abd_t or now < live.cue + 2.0:
            return
        live.abdominal_checked = True
        at, ap = np.array(self._abd_t), np.array(self._abd_p)
        before = (at < live.cue) & (at >= live.cue - 5.0)
        during = at >= live.cue + 0.5
        if before.sum() < 5 or during.sum() < 5:
            return
        t, p = self._recent(live.cue)
        plateau = float(_percentile(p - live.baseline, 90)) if len(p) else 0.0
        rise = float(_median(ap[during]) - _median(ap[before]))
        if rise > max(s.abdominal_rise_cmh2o, s.abdominal_fraction * max(plateau, 0.0)):
            self._tell("abdominal")

    def _live_let_go(self, now: float, start: float, end: float) -> None:
        s, live = self.settings, self._live
        if now - start < 0.5 or live.level is None:
            return
        live.phase_best = max(live.phase_best or 0.0, live.level)
        if now - start >= 1.0 and end - now >= s.let_go_min_left_s and live.phase_best >= s.min_rise_cmh2o \
                and live.level < s.let_go_fraction * live.phase_best:
            self._tell("let_go")

    def _live_breath_hold(self, now: float, start: float) -> None:
        s, live = self.settings, self._live
        assert live.cue is not None
        if "breath_hold" in live.told or "push_down" in live.told:
            return
        hold_from = min((st for k, st, _ in self._phases if k in ("hold", "move")), default=start) + 1.0
        if now - hold_from < s.min_judged_hold_s or now - live.breath_checked_at < s.breath_check_every_s:
            return
        live.breath_checked_at = now
        if live.rest_ripple is None:
            t, p = np.array(self._t), np.array(self._p)
            rest_t, rest_p = self._segment(RELAXED, t, p)
            before = (rest_t >= live.cue - s.reference_s) & (rest_t < live.cue)
            live.rest_ripple = ripple_activity(rest_t[before], rest_p[before]) or 0.0
        if live.rest_ripple < s.min_rest_ripple:
            return
        t, p = self._recent(max(hold_from, now - 12.0))
        ripple = ripple_activity(t, p)
        if ripple is not None and ripple < s.breath_kept_fraction * live.rest_ripple \
                and ripple < s.held_ripple_max:
            self._tell("breath_hold")

    def _live_late_release(self, now: float) -> None:
        s, live = self.settings, self._live
        assert live.baseline is not None
        if live.release_checked or live.plateau < s.min_rise_cmh2o:
            return
        live.release_checked = True
        still = live.level
        if still is not None and still > max(s.late_release_min_cmh2o, s.late_release_fraction * live.plateau):
            self._tell("late_release")


@dataclass
class _LiveState:
    """What the live checks know of the repetition that is on."""

    phase: tuple[str, float, float, float] | None = None  # (kind, start, end, level_pct)
    cue: float | None = None  # the first contract cue
    baseline: float | None = None
    plateau: float = 0.0  # the squeeze's height above the baseline, as seen so far
    phase_best: float | None = None
    level: float | None = None  # the last half second's mean above the baseline
    rest_ripple: float | None = None
    last_check: float = -1e9
    breath_checked_at: float = -1e9
    push_checked: bool = False
    abdominal_checked: bool = False
    release_checked: bool = False
    told: set[str] = field(default_factory=set)


class ObservedSource:
    """A `PressureSource` (and `Sink`) that passes samples through and tells the coach what it sees.

    Wraps the source the control loop reads: probe status changes (as `probe` warnings,
    spoken within the read that sees them), breath (`breath`, fed only while the patient is
    relaxed), and technique (`technique`). Add it to the session's sinks so it hears the
    phases. `abdominal` is read from `source.abdominal` when the probe has that channel.
    """

    def __init__(
        self,
        source: PressureSource,
        session,
        breath: BreathDetector | None = None,
        technique: TechniqueMonitor | None = None,
    ) -> None:
        self.source = source
        self.session = session
        self.breath = breath
        self.technique = technique
        self.sample_rate_hz = source.sample_rate_hz
        self._announced = ProbeStatus.OK
        self._phase: str | None = None
        self._phase_start = 0.0
        self.probe_events: list[tuple[float, ProbeStatus]] = []

    def emit(self, event: Event) -> None:
        if event.kind == "phase":
            self._phase = event.data["phase"]
            self._phase_start = self.session.t0 + float(event.data["start"])
        if self.technique is not None:
            self.technique.emit(event)

    def feedback(self, fb: Feedback) -> None:
        return None

    @property
    def status(self) -> ProbeStatus:
        return self.source.status

    def read_until(self, t: float):
        times, values = self.source.read_until(t)
        t0 = self.session.t0
        # Only relaxed stretches: a squeeze would swamp the few-cmH2O breath ripple.
        # The first seconds of a rest are the release settling, not breathing.
        relaxed = self._phase is None or (
            self._phase in RELAXED and (self._phase != "rest" or t - self._phase_start > 1.5)
        )
        if self.breath is not None and len(times) and relaxed:
            self.breath.add(times, values)
            self.breath.estimate()  # a fit now and then keeps the breath-to-breath check alive
        if self.technique is not None:
            self.technique.add([float(x) - t0 for x in times], values)
            abd = getattr(self.source, "abdominal", None)
            if abd is not None and len(abd[0]):
                self.technique.add_abdominal([float(x) - t0 for x in abd[0]], abd[1])
        status = self.source.status
        if status is not self._announced:
            self._announced = status
            self.probe_events.append((t - t0, status))
            # "probe" for a fault; its return has its own key so the session's 30 s
            # repeat limit on warnings never swallows the good news.
            kind = "probe_ok" if status is ProbeStatus.OK else "probe"
            self.session.observe_warning(kind, PROBE_PHRASES[status])
        return times, values

    def close(self) -> None:
        if self.technique is not None:
            self.technique.finish()
        self.source.close()
