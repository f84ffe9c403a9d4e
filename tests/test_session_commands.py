"""The session's state machine is declared: (state, command) -> handler, 'not now' otherwise."""

import inspect
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.clock import SimClock
from appliance.coach import commanding, correcting, measuring, plan, rating, session
from appliance.coach.commanding import COMMANDS, Commanding
from appliance.coach.kinds import RUNNING, SegmentKind, SessionPhase, State
from appliance.coach.programme import PhaseKind, load_programme
from appliance.coach.session import AFTER_SEGMENT, Calibration, Session
from appliance.commands import Command
from appliance.sensor.simulated import SimulatedPelvicFloor, profile
from appliance.simulation.session import EventLog
from appliance.voice.phrases import Catalogue

CAT = Catalogue.load("en")
PROGRAMME = load_programme("leaflet", CAT.keys()).only("awareness", "ex1")


def _session(calibrated: bool = True, seed: int = 0):
    clock = SimClock()
    floor = SimulatedPelvicFloor(profile("average"), seed=seed)
    log = EventLog()
    s = Session(PROGRAMME, CAT, clock, [log, floor],
                calibration=Calibration(1.0, 40.0) if calibrated else None)

    def advance(seconds, tick=0.02):
        end = clock.now() + seconds
        while clock.now() < end:
            clock.advance(tick)
            s.tick(clock.now(), *floor.read_until(clock.now()))

    return s, log, advance


# Each state reached by commands alone (no time passes), and how; PAUSED twice: its
# answers depend on what was paused.
SETUPS = {
    "idle": (True, []),
    "calibrating": (False, [Command.START]),
    "exercising": (True, [Command.START]),
    "paused": (True, [Command.START, Command.PAUSE]),
    "paused_calibrating": (False, [Command.START, Command.PAUSE]),
    "done": (True, [Command.START, Command.STOP]),
}
STATE_OF = {"idle": State.IDLE, "calibrating": State.CALIBRATING, "exercising": State.EXERCISING,
            "paused": State.PAUSED, "paused_calibrating": State.PAUSED, "done": State.DONE}


def _in(name):
    calibrated, cmds = SETUPS[name]
    s, log, advance = _session(calibrated)
    for c in cmds:
        s.command(c)
    assert s.state is STATE_OF[name]
    return s, log


def _answer(s, log, cmd):
    before = len(log.events)
    accepted = s.command(cmd)
    said = [e.data["phrase"] for e in log.events[before:] if e.kind == "say"]
    return accepted, said


def test_every_pair_outside_the_table_answers_not_now_and_changes_nothing():
    checked = 0
    for name, state in STATE_OF.items():
        for cmd in Command:
            if (state, cmd) in COMMANDS:
                continue
            s, log = _in(name)
            seg, index = s._segment, s.exercise_index
            accepted, said = _answer(s, log, cmd)
            assert accepted is False and said == ["session.not_now"], (name, cmd)
            assert s.state is state and s._segment is seg and s.exercise_index == index, (name, cmd)
            checked += 1
    assert checked >= 15  # start/resume/stop/pause/later/next... where they make no sense


def test_every_pair_in_the_table_is_a_named_handler_of_the_session():
    for (state, cmd), handler in COMMANDS.items():
        assert isinstance(state, State) and isinstance(cmd, Command)
        assert getattr(Commanding, handler.__name__) is handler
        assert handler.__name__ != "_not_now"  # the default is not written out
    # the commands that do not depend on the state are in the table for every state
    for cmd in (Command.HELP, Command.STATUS, Command.SLOWER, Command.FASTER, Command.LOUDER, Command.SOFTER):
        assert all((s, cmd) in COMMANDS for s in State)


def test_moving_through_the_programme_while_the_calibration_is_paused_is_not_now():
    for cmd in (Command.NEXT, Command.PREVIOUS, Command.REPEAT):
        s, log = _in("paused_calibrating")
        assert _answer(s, log, cmd) == (False, ["session.not_now"])
        s, log = _in("paused")
        accepted, said = _answer(s, log, cmd)
        assert accepted and "session.not_now" not in said
        assert s.state is State.EXERCISING


def test_next_on_the_last_exercise_says_the_days_limit_when_there_is_one():
    s, log = _in("exercising")
    s.exercise_index = len(PROGRAMME.exercises) - 1
    s.more_phrase = "session.done"
    assert _answer(s, log, Command.NEXT) == (False, ["session.done"])
    s.more_phrase = None
    accepted, said = _answer(s, log, Command.NEXT)
    assert accepted and said[0] == "session.skip"


# Waits up to a minute: the sequences reach repetitions, outros and the next exercise.
steps = st.lists(st.tuples(st.sampled_from(list(Command)), st.floats(0.0, 60.0)), min_size=1, max_size=10)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps, calibrated=st.booleans(), seed=st.integers(0, 3))
def test_random_command_sequences_never_raise_and_end_in_a_known_state(caplog, script, calibrated, seed):
    caplog.clear()
    s, log, advance = _session(calibrated, seed)
    advance(0.5)
    with caplog.at_level(logging.ERROR, logger="appliance.coach.session"):
        for cmd, wait in script:
            before = len(log.events)
            accepted = s.command(cmd)
            new = log.events[before:]
            assert [e.data["accepted"] for e in new if e.kind == "command"] == [accepted]
            if not accepted:  # every refusal is said, at once
                assert any(e.kind == "say" for e in new), (cmd, s.state)
            advance(wait, tick=0.05)  # tick() re-raises whatever broke
    assert not [r for r in caplog.records if "failed" in r.getMessage()]  # no handler raised
    assert isinstance(s.state, State)
    assert (s.state is State.DONE) == (s.outcome is not None) == s.finished
    if s.state in RUNNING:
        assert s._segment is not None  # a running session always follows a plan
    if s.state is State.PAUSED:
        assert s._segment is None and s._paused_from in RUNNING
    if s.state is State.DONE:
        assert s._segment is None


def test_segment_and_phase_kinds_are_str_enums_covering_the_programme():
    assert {k.value for k in PhaseKind} <= {k.value for k in SessionPhase}
    assert all(SessionPhase.of(k) == k.value for k in PhaseKind)
    assert set(AFTER_SEGMENT) == set(SegmentKind)  # every segment says what follows it
    assert SegmentKind.REP == "rep" and isinstance(SessionPhase.CALIBRATE_SQUEEZE, str)


def test_no_method_of_the_session_is_longer_than_about_40_lines():
    modules = {m.__name__ for m in (session, plan, commanding, measuring, correcting, rating)}
    long = []
    for cls in Session.__mro__:
        if cls.__module__ not in modules:
            continue
        for name, fn in vars(cls).items():
            fn = getattr(fn, "fget", fn)
            if inspect.isfunction(fn):
                n = len(inspect.getsourcelines(fn)[0])
                if n > 42:
                    long.append(f"{cls.__name__}.{name}: {n} lines")
    assert not long
