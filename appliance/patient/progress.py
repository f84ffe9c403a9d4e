"""Progress over the lending weeks: adherence, the weekly target rule, walking and jumping
goals (leaflet ex7/ex8) and the weekly PERFECT assessment with its spoken summary.

Everything is computed from the stored sessions, so nothing extra has to be kept (or wiped).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from appliance.events import Event, Feedback
from appliance.patient.prescription import ExerciseOverride, Prescription

if TYPE_CHECKING:
    from appliance.store import StoreSink

log = logging.getLogger(__name__)

PERFECT_PROGRAMME = "perfect"
PERFECT_MAX = 10  # every PERFECT count stops at ten (Laycock & Jerwood 2001)
ENDURANCE_LEVEL_PCT = 50.0
FAST_LEVEL_PCT = 50.0
POWER_TYPICAL_ERROR_CMH2O = 3.1  # Peritron test-retest typical error: smaller changes are noise
JUMP_MIN_RISE_CMH2O = 8.0  # a landing lifts abdominal pressure far above breath ripple
JUMP_MIN_GAP_S = 0.25


# --- Reading the store ----------------------------------------------------------------------

def _connect(db_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def load_sessions(db_path: Path) -> list[dict]:
    db = _connect(db_path)
    try:
        sessions = [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started_utc, id")]
        reps = defaultdict(list)
        for r in db.execute("SELECT * FROM repetitions ORDER BY id"):
            reps[r["session_id"]].append(dict(r))
        jumps = defaultdict(list)
        perfect = {}
        mvc_source: dict[int, str] = {}
        short: dict[int, bool] = {}
        for r in db.execute("SELECT session_id, data, kind FROM events "
                            "WHERE kind IN ('jumps', 'perfect', 'calibration', 'plan')"):
            d = json.loads(r["data"])
            if r["kind"] == "plan":
                short[r["session_id"]] = bool(d.get("short_set"))
            elif r["kind"] == "jumps":
                jumps[r["session_id"]].append(d)
            elif r["kind"] == "calibration":
                # squeeze (measured now), clinic or earlier (known, only the rest measured)
                mvc_source[r["session_id"]] = d.get("mvc_source", "squeeze")
            else:
                perfect[r["session_id"]] = d
    finally:
        db.close()
    for s in sessions:
        s["reps"] = reps[s["id"]]
        s["jumps"] = jumps[s["id"]]
        s["perfect"] = perfect.get(s["id"])
        s["mvc_source"] = mvc_source.get(s["id"], "squeeze")
        s["short_set"] = short.get(s["id"], False)
    return sessions


def local_day(utc_iso: str, tz: ZoneInfo) -> date:
    return datetime.fromisoformat(utc_iso).astimezone(tz).date()


def is_set(session: dict) -> bool:
    """A set counts toward adherence once at least one repetition was completed."""
    return any(r["status"] == "complete" for r in session["reps"])


def sets_per_day(sessions: list[dict], tz: ZoneInfo) -> dict[date, int]:
    out: dict[date, int] = defaultdict(int)
    for s in sessions:
        if is_set(s):
            out[local_day(s["started_utc"], tz)] += 1
    return dict(out)


# --- Jumps (leaflet ex8): counted from the pressure spikes of the landings ---------------------

def count_jumps(times: np.ndarray, cmh2o: np.ndarray, min_rise: float = JUMP_MIN_RISE_CMH2O,
                min_gap_s: float = JUMP_MIN_GAP_S) -> int:
    """Landings are sharp spikes above the held level; count peaks that rise `min_rise`
    above the running median and are at least `min_gap_s` apart."""
    times = np.asarray(times, dtype=float)
    p = np.asarray(cmh2o, dtype=float)
    if len(p) < 5:
        return 0
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 0.01
    half = max(2, int(0.5 / max(dt, 1e-3)))
    padded = np.pad(p, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    base = np.median(windows, axis=1)[: len(p)]
    above = p - base > min_rise
    count = 0
    last = -1e9
    i = 0
    while i < len(p):
        if above[i]:
            j = i
            while j + 1 < len(p) and above[j + 1]:
                j += 1
            peak_t = times[i + int(np.argmax(p[i:j + 1]))]
            if peak_t - last >= min_gap_s:
                count += 1
                last = peak_t
            i = j + 1
        else:
            i += 1
    return count


class JumpCounter:
    """A sink: counts landings during every `hop` phase and stores a `jumps` event.

    It listens to the live pressure (control rate), because the stored samples are
    downsampled too far (10 Hz) to see an 80 ms landing. Give it the session's StoreSink.
    """

    def __init__(self, store_sink: StoreSink | None = None) -> None:
        self.store_sink = store_sink
        self.counts: list[dict] = []
        self._phase: dict | None = None
        self._t: list[float] = []
        self._p: list[float] = []

    def emit(self, event: Event) -> None:
        if event.kind != "phase":
            return
        if self._phase is not None:
            self._close(self._phase, event.t)
        d = event.data
        self._phase = dict(d) if d.get("motion") == "hop" else None
        self._t, self._p = [], []

    def feedback(self, fb: Feedback) -> None:
        if self._phase is not None:
            self._t.append(fb.t)
            self._p.append(fb.cmh2o)

    def _close(self, ph: dict, t: float) -> None:
        self._phase = None
        n = count_jumps(np.array(self._t), np.array(self._p))
        if n == 0:
            return  # no landing seen (the probe is out for ex8): the patient's own count stands
        data = {"exercise": ph.get("exercise"), "rep": ph.get("rep"), "jumps": n,
                "seconds": round(t - ph["start"], 1)}
        self.counts.append(data)
        sink = self.store_sink
        if sink is not None and sink.session_id is not None:
            sink.store.event(sink.session_id, t, "jumps", data)


# --- The weekly PERFECT assessment ---------------------------------------------------------

@dataclass(frozen=True)
class Perfect:
    power_cmh2o: float
    oxford_band: str
    endurance_s: float
    repetitions: int
    fast: int
    day: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _longest_run(t: np.ndarray, pct: np.ndarray, level: float) -> float:
    best = run = 0.0
    for i in range(1, len(t)):
        if pct[i] >= level and pct[i - 1] >= level:
            run += t[i] - t[i - 1]
            best = max(best, run)
        elif pct[i] < level:
            run = 0.0
    return best


def assess_perfect(db_path: Path, session_id: int) -> Perfect | None:
    """Score a stored `perfect` session; None when it did not get far enough."""
    db = _connect(db_path)
    try:
        s = db.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        reps = [dict(r) for r in db.execute("SELECT * FROM repetitions WHERE session_id=? ORDER BY id",
                                            (session_id,))]
        samples = np.array(db.execute("SELECT t, pct FROM samples WHERE session_id=? ORDER BY t",
                                      (session_id,)).fetchall(), dtype=float).reshape(-1, 2)
    finally:
        db.close()
    if s is None or s["mvc_cmh2o"] is None:
        return None

    def hold_s(rep: dict) -> float:
        m = (samples[:, 0] >= rep["t_start"]) & (samples[:, 0] <= rep["t_end"])
        return min(float(PERFECT_MAX), _longest_run(samples[m, 0], samples[m, 1], ENDURANCE_LEVEL_PCT))

    endurance = [hold_s(r) for r in reps if r["exercise"] == "perfect_endurance"]
    e_s = round(max(endurance), 1) if endurance else 0.0
    needed = max(1.0, 0.8 * e_s)
    r_count = 0
    for r in (r for r in reps if r["exercise"] == "perfect_repetitions"):
        if hold_s(r) < needed:
            break
        r_count += 1
    f_count = 0
    for r in (r for r in reps if r["exercise"] == "perfect_fast"):
        if r["status"] != "complete" or (r["peak_pct"] or 0) < FAST_LEVEL_PCT:
            break
        f_count += 1
    return Perfect(round(float(s["mvc_cmh2o"]), 1), s["oxford_band"], e_s, min(r_count, PERFECT_MAX),
                   min(f_count, PERFECT_MAX), s["started_utc"][:10])


def store_perfect(db_path: Path, session_id: int, result: Perfect) -> None:
    """Keep the score with its session (an event row), so the report and the trend read it."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("INSERT INTO events(session_id, t, kind, data) VALUES (?,?,?,?)",
                   (session_id, 0.0, "perfect", json.dumps(result.as_dict())))
    finally:
        db.close()


_BANDS = ("none", "very_weak", "weak", "moderate", "good", "strong")


def perfect_summary(now: Perfect, before: Perfect | None) -> list[str]:
    """One or two sentences (phrase keys) for the patient: how it went, what to work on."""
    if before is None:
        head = "perfect.summary.first"
    else:
        ups = downs = 0
        dp = now.power_cmh2o - before.power_cmh2o
        ups += dp >= POWER_TYPICAL_ERROR_CMH2O
        downs += dp <= -POWER_TYPICAL_ERROR_CMH2O
        for a, b in ((now.endurance_s, before.endurance_s), (now.repetitions, before.repetitions),
                     (now.fast, before.fast)):
            ups += a - b >= 1
            downs += b - a >= 1
        head = ("perfect.summary.better" if ups >= 2 and ups > downs else
                "perfect.summary.lower" if downs >= 2 and downs > ups else "perfect.summary.same")
    weak_power = _BANDS.index(now.oxford_band) <= _BANDS.index("weak") if now.oxford_band in _BANDS else True
    scores = {"endurance": now.endurance_s / PERFECT_MAX, "repetitions": now.repetitions / PERFECT_MAX,
              "fast": now.fast / PERFECT_MAX}
    focus = "power" if weak_power else min(scores, key=scores.__getitem__)
    if not weak_power and scores[focus] >= 1.0:
        return [head]
    return [head, f"perfect.summary.focus_{focus}"]


# --- The weekly progression rule -----------------------------------------------------------

@dataclass(frozen=True)
class Week:
    index: int  # 1-based week of the lending period
    start: date
    sets: int
    reps: dict[str, int]
    met: dict[str, int]
    targets: dict[str, float]  # %MVC in force this week
    walk_s: float | None
    walk_held_fraction: float | None
    jumps_best: int | None
    jump_goal: int | None
    progressed: tuple[str, ...] = ()  # what went up for the week after
    perfect: dict | None = None


def rep_met(rep: dict) -> bool:
    if rep["status"] != "complete":
        return False
    peak_ok = (rep["peak_pct"] or 0.0) >= 0.9 * rep["target_pct"]
    asked = rep["hold_asked_s"] or 0.0
    return peak_ok and (asked == 0 or (rep["held_s"] or 0.0) >= 0.8 * asked)


@dataclass
class _Targets:
    pct: dict[str, float] = field(default_factory=dict)
    walk_s: float | None = None
    jump_goal: int | None = None


def weekly_progress(sessions: list[dict], rx: Prescription, start: date, until: date,
                    base_targets: dict[str, float], base_walk_s: float | None) -> list[Week]:
    """Replay the lending period week by week, applying the rule in `rx.progression`."""
    rule = rx.progression
    tz = rx.tz
    cur = _Targets(dict(base_targets), base_walk_s, None)
    weeks = []
    n = max(1, (until - start).days // 7 + 1)
    by_week: dict[int, list[dict]] = defaultdict(list)
    for s in sessions:
        idx = (local_day(s["started_utc"], tz) - start).days // 7
        if 0 <= idx < n:
            by_week[idx].append(s)
    for w in range(n):
        ss = by_week[w]
        reps: dict[str, int] = defaultdict(int)
        met: dict[str, int] = defaultdict(int)
        walk_asked = walk_held = 0.0
        for s in ss:
            if s["programme"] == PERFECT_PROGRAMME:
                continue
            for r in s["reps"]:
                reps[r["exercise"]] += 1
                met[r["exercise"]] += rep_met(r)
                if r["exercise"] == "ex7":
                    asked = r["hold_asked_s"] or 0.0
                    walk_asked += asked
                    if r["held_s"] is not None:
                        walk_held += r["held_s"]
                    elif r["status"] == "complete":
                        walk_held += asked  # walked without the probe: the walk done is the walk asked

        jumps = [j["jumps"] for s in ss for j in s["jumps"]]
        sets = sum(is_set(s) for s in ss)
        perfect = next((s["perfect"] for s in ss if s["perfect"]), None)
        walk_frac = walk_held / walk_asked if walk_asked else None
        progressed = []
        nxt = _Targets(dict(cur.pct), cur.walk_s, cur.jump_goal)
        if rule.enabled and sets >= rule.min_sets_per_week:
            for ex, count in reps.items():
                if ex in ("ex7", "ex8") or ex not in nxt.pct or count == 0:
                    continue
                if met[ex] / count >= rule.met_fraction and nxt.pct[ex] < rule.max_target_pct:
                    nxt.pct[ex] = min(rule.max_target_pct, nxt.pct[ex] + rule.step_pct)
                    progressed.append(ex)
            if walk_frac is not None and walk_frac >= rule.met_fraction and cur.walk_s is not None \
                    and cur.walk_s < rule.walk_max_s:
                nxt.walk_s = min(rule.walk_max_s, cur.walk_s + rule.walk_step_s)
                progressed.append("ex7")
        if jumps:
            # The leaflet: count the jumps and set a goal for the week after.
            nxt.jump_goal = max(jumps) + rule.jump_step if rule.enabled else cur.jump_goal
        weeks.append(Week(w + 1, start + timedelta(weeks=w), sets, dict(reps), dict(met), dict(cur.pct),
                          cur.walk_s, walk_frac, max(jumps) if jumps else None, cur.jump_goal,
                          tuple(progressed), perfect))
        cur = nxt
    return weeks


def progressed_prescription(rx: Prescription, weeks: list[Week]) -> Prescription:
    """The prescription with this week's targets (the last week's) as exercise overrides."""
    if not weeks or not rx.progression.enabled:
        return rx
    last = weeks[-1]
    overrides = dict(rx.exercises)
    for ex, pct in last.targets.items():
        overrides[ex] = replace(overrides.get(ex, ExerciseOverride()), target_pct_mvc=pct)
    if last.walk_s is not None:
        overrides["ex7"] = replace(overrides.get("ex7", ExerciseOverride()), move_seconds=last.walk_s)
    return replace(rx, exercises=overrides)


def week_phrases(weeks: list[Week]) -> list[str]:
    """What to tell the patient at the first session of a new week."""
    if len(weeks) < 2:
        return []
    prev = weeks[-2]
    out = []
    if any(ex not in ("ex7",) for ex in prev.progressed):
        out.append("progress.target_up")
    if "ex7" in prev.progressed:
        out.append("progress.walk_up")
    if weeks[-1].jump_goal is not None:
        out.append("progress.jump_goal")
    return out
