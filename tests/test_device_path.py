"""`appliance simulate` is the device on a simulated clock: the supervisor, the patient's
prescription and plan of the day, the post-op gate, stimulation and the one wiring."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from test_run import STIM_RX as _RUN_STIM_RX

from appliance.cli import main
from appliance.clinic.enrolment import enroll
from appliance.coach.programme import load_programme
from appliance.commands import Command
from appliance.device.appliance import Appliance, RunOptions
from appliance.device.edges import SimulatedEdges, SimulatedPatient
from appliance.simulation.session import simulate

REPO = Path(__file__).resolve().parents[1]

# The stimulation prescription of tests/test_run.py, with ex2..ex8 left out (a short session).
STIM_RX = _RUN_STIM_RX.format(disabled="\n".join(f"[exercise.ex{i}]\nenabled = false" for i in range(2, 9)))


def enrolled(tmp_path: Path, text: str, when: datetime) -> Path:
    state = tmp_path / "state"
    rx = tmp_path / "rx.toml"
    rx.write_text(text)
    enroll(state, rx, when)
    return state


def test_the_coach_session_is_built_in_one_place_outside_the_tests():
    found = []
    for path in [*(REPO / "appliance").rglob("*.py"), *(REPO / "bench").rglob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![\w.])Session\(", line) and not line.lstrip().startswith(("#", "class ")):
                found.append(f"{path.relative_to(REPO)}:{n}")
    assert found == ["appliance/device/wiring.py:" + found[0].rsplit(":", 1)[1]] and len(found) == 1, found


def test_the_simulated_patient_reacts_alike_in_the_first_and_the_fifth_session(tmp_path):
    """A lending period's later sessions used to meet a patient three times quicker."""
    edges = SimulatedEdges(SimulatedPatient("average", seed=4), start_after_ready=True)
    onsets: list[list[float]] = []

    def next_session(session) -> None:
        onsets.append([r["onset_s"] for r in session.reps if r.get("onset_s") is not None])
        edges.say_at(edges.clock.now() + 5.0, Command.START)

    options = RunOptions(config_path=None, state_dir=tmp_path, audio=False, sessions=5,
                         programme_file=load_programme("leaflet").only("ex1"), on_session_end=next_session)
    Appliance(options, edges).main()
    assert len(onsets) == 5 and all(len(o) >= 8 for o in onsets)
    first, fifth = np.mean(onsets[0]), np.mean(onsets[4])
    assert 0.3 < first < 1.2 and abs(fifth - first) < 0.2, (first, fifth)


def test_simulate_state_dir_ten_days_after_surgery_trains_awareness_at_most_30_pct(tmp_path, capsys):
    text = '[patient]\ncode = "GNT-2026-0042"\nsurgery_date = 2026-03-02\n[reminders]\nenabled = false\n'
    state = enrolled(tmp_path, text, datetime(2026, 3, 3, 9, tzinfo=UTC))
    result = simulate(state_dir=state, patient="postop", seed=2, start_wall=datetime(2026, 3, 12, 8, tzinfo=UTC),
                      lang=None)
    exercises = {e.data["exercise"] for e in result.log.of("exercise")}
    assert exercises == {"awareness"}
    assert result.session.reps and all(r["target_pct"] <= 30.0 for r in result.session.reps)
    con = sqlite3.connect(state / "appliance.db")
    try:
        (code, programme), = con.execute("SELECT patient_code, programme FROM sessions").fetchall()
        levels = [json.loads(d).get("level_pct") for (d,) in
                  con.execute("SELECT data FROM events WHERE kind = 'phase'")]
    finally:
        con.close()
    assert code == "GNT-2026-0042" and programme == "postop"
    assert max(x for x in levels if x is not None) <= 30.0
    # The command line does the same for a physiotherapist.
    out = tmp_path / "out"
    assert main(["simulate", "--state-dir", str(state), "--out", str(out), "--quiet", "--no-audio"]) == 0
    assert "stored in" in capsys.readouterr().out
    kinds = [json.loads(line)["kind"] for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert "rep" in kinds


def test_simulate_state_dir_with_stimulation_prescribed_shows_the_stim_exercise_on_and_off(tmp_path):
    state = enrolled(tmp_path, STIM_RX, datetime(2026, 6, 1, 8, tzinfo=UTC))
    result = simulate(state_dir=state, seed=3, start_wall=datetime(2026, 6, 2, 9, tzinfo=UTC), lang=None)
    exercises = [e.data["exercise"] for e in result.log.of("exercise") if e.data.get("state") == "started"]
    assert "stim" in exercises
    line = [e.data["state"] for e in result.log.of("stim") if e.data.get("state") in ("on", "off")]
    assert line[:2] == ["on", "off"] and line.count("on") == 3 and line[-1] == "off"
    lines = result.appliance.edges.stim_lines
    assert lines and not any(x.is_active for x in lines)


class TickWatch:
    """The control ticks as the sinks see them (a feedback per tick, after the tick's prompts),
    which exercise each falls in, and how late each prompt was fired after its planned moment."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, str | None]] = []
        self.exercise: str | None = None
        self.phase: str | None = None
        self.phases: list[str | None] = []  # the phase after each tick
        self.unfired: list[float] = []
        self.late: list[float] = []

    def emit(self, event) -> None:
        if event.kind == "exercise":
            self.exercise = event.data["exercise"] if event.data.get("state") == "started" else None
        elif event.kind == "phase":
            self.phase = event.data["phase"]
        elif event.kind == "say" and self.ticks and event.data["at"] > self.ticks[-1][0]:
            # Due after the last tick: fired by the plan at this tick. (Said at the last tick
            # or before the first, e.g. an answer to a command, it is not the plan's.)
            self.unfired.append(float(event.data["at"]))

    def feedback(self, fb) -> None:
        self.ticks.append((fb.t, self.exercise))
        self.phases.append(self.phase)
        self.late.extend(fb.t - at for at in self.unfired if at <= fb.t)  # (said ahead: not late)
        self.unfired = []


def test_the_stimulation_exercise_is_watched_every_5_ms_and_every_prompt_is_said_on_its_moment(tmp_path):
    """The coach decides every 40 ms while a phase asks for a squeeze (the tone's cue),
    every 5 ms through the stim exercise (its interlocks act at the next tick:
    docs/stimulation.md), every 100 ms at most when no squeeze is asked (words, in-breaths,
    rests: the tone is silent), and prompts are fired on their planned moment."""
    from appliance.device.wiring import CONTROL_TICK_S, IDLE_TICK_S

    state = enrolled(tmp_path, STIM_RX, datetime(2026, 6, 1, 8, tzinfo=UTC))
    watch = TickWatch()
    simulate(state_dir=state, seed=3, start_wall=datetime(2026, 6, 2, 9, tzinfo=UTC), lang=None,
             extra_sinks=[watch])
    squeezing = {"contract", "hold", "move", "release", "calibrate_squeeze"}
    gaps: dict[str, list[float]] = {"stim": [], "squeeze": [], "quiet": []}
    for (t0, ex0), (t1, ex1), phase in zip(watch.ticks, watch.ticks[1:], watch.phases, strict=False):
        kind = "stim" if ex0 == ex1 == "stim" else "squeeze" if phase in squeezing else "quiet"
        gaps[kind].append(t1 - t0)
    assert len(gaps["stim"]) > 1000 and max(gaps["stim"]) <= 0.005 + 1e-9
    assert CONTROL_TICK_S == 0.04
    assert max(gaps["squeeze"]) <= CONTROL_TICK_S + 1e-9 and np.median(gaps["squeeze"]) > CONTROL_TICK_S - 0.001
    assert IDLE_TICK_S == 0.1 and max(gaps["quiet"]) <= IDLE_TICK_S + 1e-9
    assert sum(g > 0.099 for g in gaps["quiet"]) > 1000  # words, in-breaths and rests outside the stim exercise
    assert len(watch.late) > 20 and max(watch.late) < 0.001  # to the millisecond, not to the tick


def test_without_stimulation_in_the_prescription_the_line_is_never_driven(tmp_path):
    state = enrolled(tmp_path, STIM_RX.replace("[stim]\nenabled = true", "[stim]\nenabled = false"),
                     datetime(2026, 6, 1, 8, tzinfo=UTC))
    result = simulate(state_dir=state, seed=3, start_wall=datetime(2026, 6, 2, 9, tzinfo=UTC), lang=None)
    assert "stim" not in {e.data["exercise"] for e in result.log.of("exercise")}
    assert not [e for e in result.log.of("stim") if e.data.get("state") == "on"]
    assert result.appliance.edges.stim_lines == []


def test_a_new_prescription_on_disk_is_obeyed_at_the_next_session_without_a_restart(tmp_path):
    """The clinic switches stimulation off (a new contraindication); the running device obeys."""
    state = enrolled(tmp_path, STIM_RX, datetime(2026, 6, 1, 8, tzinfo=UTC))
    edges = SimulatedEdges(SimulatedPatient("average", seed=5), start_after_ready=True,
                           clock=None)
    edges.clock.set_wall(datetime(2026, 6, 2, 9, tzinfo=UTC))
    stims: list[int] = []

    def between(session) -> None:
        stims.append(sum(1 for e in edges_log.events if e.kind == "stim" and e.data.get("state") == "on"))
        if len(stims) == 1:  # the clinic's new prescription lands while the device waits
            changed = STIM_RX.replace('pregnancy_or_trying = "no"', 'pregnancy_or_trying = "yes"')
            changed = changed.replace("[stim]\nenabled = true", "[stim]\nenabled = false")
            (state / "prescription.toml").write_text(changed)
            edges.say_at(edges.clock.now() + 5.0, Command.START)

    from appliance.simulation.session import EventLog

    edges_log = EventLog()
    edges.extra_sinks.append(edges_log)
    options = RunOptions(config_path=None, state_dir=state, audio=False, sessions=2, on_session_end=between)
    Appliance(options, edges).main()
    assert stims[0] == 3 and stims[1] == 3  # the second session drove nothing more
    assert date(2026, 6, 2) == edges.clock.wall().date()


def test_a_prescription_changed_during_a_session_stops_it_cleanly_and_says_why(tmp_path):
    state = enrolled(tmp_path, STIM_RX, datetime(2026, 6, 1, 8, tzinfo=UTC))
    from appliance.events import Event, Feedback

    class Clinic:
        """Rewrites the prescription (as `clinic enroll` does) at the first repetition."""

        done = False

        def emit(self, event: Event) -> None:
            if event.kind == "rep" and not self.done:
                self.done = True
                (state / "prescription.toml").write_text(STIM_RX.replace("repetitions = 2", "repetitions = 3"))

        def feedback(self, fb: Feedback) -> None:
            return None

    result = simulate(state_dir=state, seed=3, start_wall=datetime(2026, 6, 2, 9, tzinfo=UTC), lang=None,
                      extra_sinks=[Clinic()])
    assert result.session.outcome == "stopped"
    said = result.appliance.health.spoken
    assert "device.clinic_changed" in said
    con = sqlite3.connect(state / "appliance.db")
    try:
        statuses = [s for (s,) in con.execute("SELECT status FROM sessions")]
    finally:
        con.close()
    assert statuses == ["stopped"]
    assert not any(x.is_active for x in result.appliance.edges.stim_lines)


def test_a_fresh_device_enrolled_while_it_runs_trains_the_new_patient_post_op(tmp_path):
    """Enrolled two weeks after surgery while the service was already up (it read no
    prescription at start): the session is the post-op awareness work at most 30 %MVC,
    stored with the patient's code."""
    from appliance.events import Event, Feedback

    state = tmp_path / "state"
    rx = tmp_path / "rx.toml"
    rx.write_text('[patient]\ncode = "GNT-2026-0077"\nsurgery_date = 2026-03-02\n[reminders]\nenabled = false\n')

    class Clinic:
        """Enrolls the patient (the clinic's stick) once the device has said it is ready."""

        def emit(self, event: Event) -> None:
            if event.kind == "say" and event.data.get("phrase") == "device.ready":
                enroll(state, rx, datetime(2026, 3, 16, 9, tzinfo=UTC))

        def feedback(self, fb: Feedback) -> None:
            return None

    edges = SimulatedEdges(SimulatedPatient("postop", seed=6), start_after_ready=True, room_sinks=[Clinic()])
    edges.clock.set_wall(datetime(2026, 3, 16, 9, tzinfo=UTC))
    options = RunOptions(config_path=None, state_dir=state, audio=False, sessions=1, max_session_s=240.0)
    device = Appliance(options, edges)
    device.main()
    (record,) = device.records
    assert record.programme == "postop"
    assert record.session.reps and all(r["target_pct"] <= 30.0 for r in record.session.reps)
    con = sqlite3.connect(state / "appliance.db")
    try:
        codes = [c for (c,) in con.execute("SELECT patient_code FROM sessions ORDER BY id")]
    finally:
        con.close()
    assert codes == ["GNT-2026-0077"]


def test_a_wipe_during_a_session_stops_it_cleanly_and_the_line_stays_low(tmp_path):
    from appliance.clinic.enrolment import wipe
    from appliance.events import Event, Feedback

    state = enrolled(tmp_path, STIM_RX, datetime(2026, 6, 1, 8, tzinfo=UTC))

    class Clinic:
        """The clinic wipes the device (`appliance clinic wipe`) in the middle of the stim exercise."""

        done = False

        def emit(self, event: Event) -> None:
            if event.kind == "stim" and event.data.get("state") == "on" and not self.done:
                self.done = True
                wipe(state)

        def feedback(self, fb: Feedback) -> None:
            return None

    result = simulate(state_dir=state, seed=3, start_wall=datetime(2026, 6, 2, 9, tzinfo=UTC), lang=None,
                      extra_sinks=[Clinic()])
    assert result.session.outcome == "stopped"
    assert "device.clinic_changed" in result.appliance.health.spoken
    assert not any(x.is_active for x in result.appliance.edges.stim_lines)
    assert not (state / "prescription.toml").exists()


def test_the_prescribed_breathing_paces_the_session(tmp_path):
    """`[breathing]` was validated and then ignored by the device."""
    text = ('[patient]\ncode = "GNT-2026-0042"\n[reminders]\nenabled = false\n'
            '[breathing]\ninhale_s = 5.0\nexhale_s = 8.0\n')
    state = enrolled(tmp_path, text, datetime(2026, 6, 1, 8, tzinfo=UTC))
    result = simulate(state_dir=state, patient="irregular_breather", seed=2, lang=None, max_seconds=200.0,
                      start_wall=datetime(2026, 6, 2, 9, tzinfo=UTC))
    assert (result.session.pace.inhale_s, result.session.pace.exhale_s) == (5.0, 8.0)
    inhales = [e.data["end"] - e.data["start"] for e in result.log.of("phase") if e.data["phase"] == "inhale"]
    assert inhales and np.median(inhales) == pytest.approx(5.0, abs=0.05)
