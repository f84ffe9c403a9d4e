"""Whole simulated sessions: the coach runs the leaflet's programme like a physiotherapist would."""

import json
import sqlite3

import pytest

from appliance.clock import SimClock
from appliance.coach.pacing import Pace
from appliance.coach.programme import load_programme
from appliance.coach.runner import ScriptedCommand
from appliance.coach.session import Session, State
from appliance.commands import Command
from appliance.events import Feedback
from appliance.sensor.simulated import PROFILES, SimulatedPelvicFloor, profile
from appliance.simulation.session import EventLog, simulate
from appliance.voice.phrases import Catalogue, EstimatedTiming


def phases(result, exercise, rep=None):
    return [e.data for e in result.log.of("phase")
            if e.data.get("exercise") == exercise and (rep is None or e.data.get("rep") == rep)]


def reps(result, exercise=None, status=None):
    return [e.data for e in result.log.of("rep")
            if (exercise is None or e.data["exercise"] == exercise) and (status is None or e.data["status"] == status)]


@pytest.mark.parametrize("patient", sorted(PROFILES))
def test_the_whole_leaflet_programme_completes_for_each_profile(patient):
    result = simulate(patient=patient, seed=3, programme="leaflet")
    prog = load_programme("leaflet")
    assert result.session.state is State.DONE
    finished = [e.data["exercise"] for e in result.log.of("exercise") if e.data["state"] == "finished"]
    assert finished == [e.id for e in prog.exercises]
    for ex in prog.exercises:
        assert len(reps(result, ex.id, "complete")) == ex.repetitions, ex.id
    assert 15 * 60 < result.duration_s < 40 * 60
    assert result.log.of("calibration")[0].data["mvc_cmh2o"] == pytest.approx(PROFILES[patient].mvc_cmh2o, rel=0.25)


def test_exercise_2_has_ten_repetitions_each_holding_over_three_breaths(average_session):
    # Three of her own breaths while she holds, at most 10 s (not three paced 10 s breaths:
    # 30 s at 50 %MVC), and a rest at least as long as the hold.
    breath = Pace().breath_s
    holds = [p for p in phases(average_session, "ex2") if p["phase"] == "hold"]
    rests = [p for p in phases(average_session, "ex2") if p["phase"] == "rest"]
    assert len(holds) == 10
    assert all(min(3 * breath, 10.0) - 5.0 <= p["end"] - p["start"] <= 10.0 for p in holds)
    assert all(r["end"] - r["start"] >= max(p["end"] - p["start"] for p in holds) for r in rests)
    ex2 = reps(average_session, "ex2")
    for r, hold in zip(ex2, holds, strict=True):
        assert r["hold_asked_s"] == pytest.approx(hold["end"] - hold["start"], abs=0.05)
    # the average patient gives up now and then (5 % of repetitions), mostly she holds
    assert sum(r["held_s"] > 0.5 * r["hold_asked_s"] for r in ex2) >= 8


class StrengthTrace:
    def __init__(self):
        self.points = []

    def emit(self, event):
        pass

    def feedback(self, fb: Feedback):
        self.points.append((fb.t, fb.strength_pct))

    def mean_between(self, a, b):
        vals = [p for t, p in self.points if a <= t < b]
        return sum(vals) / len(vals)


def test_exercise_3_releases_in_three_equal_steps():
    trace = StrengthTrace()
    result = simulate(programme=load_programme("leaflet").only("ex3"), seed=2, extra_sinks=[trace])
    rep2 = phases(result, "ex3", rep=2)
    releases = [p for p in rep2 if p["phase"] == "release"]
    assert [p["level_pct"] for p in releases] == [33.3, 16.7, 0.0]
    # The simulated patient follows the steps: the strength in each plateau drops by about a third.
    plateaus = [p for p in rep2 if p["phase"] == "hold"]
    full, two_thirds, one_third = (trace.mean_between(p["start"] + 0.8, p["end"]) for p in plateaus)
    assert full > two_thirds > one_third > 5
    # Each plateau within 5 %MVC of the level asked (a ratio of the two steps swung from 1.2
    # to 1.7 over seeds: the patient settles a few %MVC under the middle step).
    for measured, asked in zip((full, two_thirds, one_third), (p["level_pct"] for p in plateaus), strict=True):
        assert abs(measured - asked) < 5.0, (measured, asked)


def test_exercise_4_goes_up_three_floors_and_down_three():
    result = simulate(programme=load_programme("leaflet").only("ex4"), seed=2)
    for rep in range(1, 6):
        ph = phases(result, "ex4", rep)
        ups = [p["level_pct"] for p in ph if p["phase"] == "contract"]
        downs = [p["level_pct"] for p in ph if p["phase"] == "release"]
        assert ups == sorted(ups) and len(ups) == 3 and ups[-1] == 60.0
        assert downs == sorted(downs, reverse=True) and len(downs) == 3 and downs[-1] == 0.0
    said = [e.data["phrase"] for e in result.log.of("say")]
    assert said.count("cue.floor_1") == said.count("cue.floor_3") == said.count("cue.ground") == 5


def _first(result, exercise, phase, rep=1):
    return next(p for p in phases(result, exercise, rep) if p["phase"] == phase)


def test_next_during_a_hold_moves_on_and_records_the_partial_repetition(average_session):
    hold = _first(average_session, "ex1", "hold", rep=3)
    at = hold["start"] + 2.5
    result = simulate(patient="average", seed=1, programme="leaflet", script=[ScriptedCommand(at, Command.NEXT)])
    ex1 = reps(result, "ex1")
    assert [r["status"] for r in ex1] == ["complete", "complete", "partial"]
    assert ex1[-1]["rep"] == 3 and ex1[-1]["held_s"] < ex1[0]["held_s"]
    states = [(e.data["exercise"], e.data["state"]) for e in result.log.of("exercise")]
    assert ("ex1", "skipped") in states
    after = [e for e in result.log.of("phase") if e.t > at]
    assert after[0].data["phase"] == "intro" and after[1].data.get("exercise") == "ex2"
    assert result.session.state is State.DONE
    assert len(reps(result, "ex2", "complete")) == 10


def test_pause_and_resume_keep_the_place(average_session):
    contract = _first(average_session, "ex2", "contract", rep=4)
    pause_at, resume_at = contract["start"] + 1.0, contract["start"] + 40.0
    result = simulate(patient="average", seed=1, programme="leaflet", script=[ScriptedCommand(pause_at, Command.PAUSE),
                                                          ScriptedCommand(resume_at, Command.RESUME)])
    during = [e for e in result.log.of("phase") if pause_at < e.t < resume_at]
    assert during == []
    first_after = next(e.data for e in result.log.of("phase") if e.t >= resume_at)
    assert (first_after["exercise"], first_after["rep"], first_after["phase"]) == ("ex2", 4, "inhale")
    assert [r["rep"] for r in reps(result, "ex2", "complete")] == list(range(1, 11))
    said = [e.data["phrase"] for e in result.log.of("say") if pause_at <= e.t <= resume_at + 1]
    assert said[:1] == ["session.paused"] and "session.resumed" in said


def test_stop_ends_and_stores_the_session(tmp_path, average_session):
    at = _first(average_session, "ex2", "hold", rep=2)["start"] + 5
    result = simulate(out_dir=tmp_path, patient="average", seed=1, programme="leaflet",
                      script=[ScriptedCommand(at, Command.STOP)])
    assert result.session.state is State.DONE
    db = sqlite3.connect(tmp_path / "appliance.db")
    status, ended = db.execute("SELECT status, ended_utc FROM sessions").fetchone()
    assert status == "stopped" and ended
    stored = db.execute("SELECT exercise, rep, status FROM repetitions ORDER BY id").fetchall()
    assert stored == [(r["exercise"], r["rep"], r["status"]) for r in reps(result)]
    assert stored[-1] == ("ex2", 2, "partial")
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    assert [e["state"] for e in timeline if e["kind"] == "session"][-1] == "stopped"
    assert timeline[-1]["t"] == pytest.approx(at, abs=0.02)  # nothing happens after the stop
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _session_in(state: State):
    clock = SimClock()
    cat = Catalogue.load("en")
    floor = SimulatedPelvicFloor(profile("average"), seed=0)
    log = EventLog()
    prog = load_programme("leaflet", cat.keys()).only("awareness", "ex1")
    s = Session(prog, cat, clock, [log, floor])

    def advance(seconds):
        end = clock.now() + seconds
        while clock.now() < end:
            clock.advance(0.01)
            s.tick(clock.now(), *floor.read_until(clock.now()))

    if state is not State.IDLE:
        s.command(Command.START)
        advance(1.0)
        if state is State.EXERCISING:
            advance(120)
        elif state is State.PAUSED:
            advance(120)
            s.command(Command.PAUSE)
        elif state is State.DONE:
            s.command(Command.STOP)
    assert s.state is state
    return s, log, advance


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("command", list(Command))
def test_any_command_in_any_state_gets_an_answer_and_no_crash(state, command):
    s, log, advance = _session_in(state)
    before = len(log.events)
    accepted = s.command(command)
    advance(8.0)  # the session goes on (or stays done) without raising
    new = log.events[before:]
    cmd_events = [e for e in new if e.kind == "command"]
    assert len(cmd_events) == 1 and cmd_events[0].data["accepted"] is accepted
    answers = [e for e in new if e.kind == "say" and e.t < cmd_events[0].t + 8.0]
    assert answers, f"{command} in {state} was not answered"


def test_postop_patients_reach_lower_strength_and_the_metrics_say_so(average_session):
    # Three post-operative patients: one patient's mean peak lands within a few tenths of
    # the bound either way with the seed (37.4-38.7 %MVC against 0.7 x 55 here).
    post = [simulate(patient="postop", seed=seed, programme=load_programme("leaflet").only("ex1", "ex2"))
            for seed in (1, 2, 3)]

    def mean(results, key):
        rs = [r for result in results for r in reps(result, "ex1", "complete") + reps(result, "ex2", "complete")]
        return sum(r[key] for r in rs) / len(rs)

    assert mean(post, "peak_pct") < 0.7 * mean([average_session], "peak_pct")
    assert mean(post, "held_s") < mean([average_session], "held_s")


def test_the_same_seed_gives_the_same_session_and_another_seed_another():
    prog = load_programme("leaflet").only("ex1")
    a = [e.as_json() for e in simulate(seed=5, programme=prog).log.events]
    b = [e.as_json() for e in simulate(seed=5, programme=prog).log.events]
    c = [e.as_json() for e in simulate(seed=6, programme=prog).log.events]
    assert a == b and a != c


def _keyword_errors(result, lang):
    """For every contract and release: how far its cue's keyword lands from the transition."""
    cat = Catalogue.load(lang)
    timing = EstimatedTiming(cat)
    says = [(e.data["at"], e.data["phrase"]) for e in result.log.of("say") if "^" in cat.raw(e.data["phrase"])]
    errors = []
    for p in result.log.of("phase"):
        d = p.data
        if d["phase"] in ("contract", "release") and d.get("exercise") != "calibration":
            near = [(at, k) for at, k in says if d["start"] - 8 < at <= d["start"] + 3]
            at, key = min(near, key=lambda x: abs(x[0] + timing.keyword_offset(x[1]) - d["start"]))
            errors.append(at + timing.keyword_offset(key) - d["start"])
    return errors


def test_every_contract_and_release_cue_lands_its_keyword_on_the_transition(average_session):
    errors = _keyword_errors(average_session, "nl")
    assert len(errors) > 100
    assert max(map(abs, errors)) <= 0.15


def test_english_cues_land_on_the_transition_too():
    result = simulate(lang="en", seed=2, programme=load_programme("leaflet").only("awareness", "ex1", "ex4"))
    errors = _keyword_errors(result, "en")
    assert len(errors) > 40 and max(map(abs, errors)) <= 0.15


def test_exercise_1_counts_to_five_on_the_second(average_session):
    """Every hold of exercise 1 is counted to five on the second; where the patient let go
    and was told to hold on (a correction, heard whole), the count stops for it, never
    spoken over it, and the counts before it stayed on the second."""
    says = [e.data for e in average_session.log.of("say")]
    whole = 0
    for rep in range(1, 9):
        hold = _first(average_session, "ex1", "hold", rep=rep)
        inside = [s for s in says if hold["start"] <= s["at"] < hold["end"]]
        counts = [(s["at"], s["phrase"], s["duration_s"]) for s in inside if s["phrase"].startswith("count.")]
        fixes = [s for s in inside if s.get("priority") == "correction"]
        n = len(counts)
        assert [k for _, k, _ in counts] == [f"count.{i}" for i in range(1, n + 1)]
        assert [round(at - hold["start"], 2) for at, _, _ in counts] == [float(i) for i in range(n)]
        if not fixes:
            assert n == 5, (rep, counts)
            whole += 1
        else:  # only the counts due while the correction was said are left out
            assert n == 5 or hold["start"] + n > fixes[0]["at"] - 0.6, (rep, counts, fixes[0])
        for f in fixes:
            assert not [k for at, k, d in counts if at < f["at"] + f["duration_s"] and at + d > f["at"]]
    assert whole >= 6


def test_slower_and_faster_change_the_breath_within_bounds(average_session):
    contract = _first(average_session, "ex1", "contract", rep=2)
    result = simulate(seed=1, script=[ScriptedCommand(contract["start"], Command.SLOWER)],
                      programme=load_programme("leaflet").only("awareness", "ex1"))
    # Each session also tells the speaker both volumes at its start (issue 15).
    settings = [e for e in result.log.of("setting") if e.data["setting"] not in ("volume", "tone_volume")]
    assert settings and settings[0].data["setting"] == "pace"
    inhales = [p for p in phases(result, "ex1") if p["phase"] == "inhale"]
    assert inhales[-1]["end"] - inhales[-1]["start"] == pytest.approx(4.0 * 1.15, abs=0.01)
    pace = Pace()
    for _ in range(20):
        pace = pace.faster() or pace
    assert pace.inhale_s >= 3.0 and pace.exhale_s >= 4.0 and pace.faster() is None


class UnpluggedFor:
    """The simulated floor read through a probe that reads nothing sane for a while."""

    def __init__(self, floor, bad_from, bad_until):
        from appliance.sensor.base import ProbeStatus

        self.floor, self.bad = floor, (bad_from, bad_until)
        self.sample_rate_hz = floor.sample_rate_hz
        self._now = 0.0
        self._status = ProbeStatus

    def read_until(self, t):
        self._now = t
        return self.floor.read_until(t)

    @property
    def status(self):
        bad = self.bad[0] <= self._now < self.bad[1]
        return self._status.DISCONNECTED if bad else self._status.OK

    def close(self):
        pass


def test_an_unplugged_probe_silences_the_tone_and_marks_its_repetitions_but_the_session_goes_on():
    from appliance.coach.runner import run

    clock = SimClock()
    cat = Catalogue.load("nl")
    floor = SimulatedPelvicFloor(profile("average", fault_rate=0.0), seed=0)
    log, trace = EventLog(), StrengthTrace()
    prog = load_programme("leaflet", cat.keys()).only("ex1")
    session = Session(prog, cat, clock, [log, floor, trace])
    bad_from, bad_until = 130.0, 170.0
    run(session, UnpluggedFor(floor, bad_from, bad_until), clock,
        script=[ScriptedCommand(1.0, Command.START)])
    assert session.state is State.DONE
    rep_events = [e.data for e in log.of("rep")]
    assert len(rep_events) == 8
    for r in rep_events:
        overlaps = r["t_start"] < bad_until and r["t_end"] > bad_from
        assert r["biofeedback"] is (not overlaps)
    assert any(not r["biofeedback"] for r in rep_events)
    during = [p for t, p in trace.points if bad_from + 0.01 < t < bad_until]
    after = [p for t, p in trace.points if t > bad_until + 20]
    assert during and max(during) == 0.0
    assert max(after) > 30.0
