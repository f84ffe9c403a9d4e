"""The stimulation line: prescription refusals, pin timing under MockFactory, every way out.

Pin histories are read with gpiozero's `assert_states_and_times`. The mock pin stamps
its changes with `gpiozero.pins.mock.monotonic`; here that is the test's `SimClock`, so
a 5 s / 10 s cycle is checked to the prescription's second without waiting for it.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import date, timedelta

import gpiozero.pins.mock
import pytest
from gpiozero.pins.mock import MockFactory

from appliance.clock import SimClock
from appliance.coach.programme import load_programme
from appliance.coach.runner import ScriptedCommand, run
from appliance.coach.session import Calibration, Session
from appliance.commands import Command
from appliance.config import ConfigError
from appliance.events import Event
from appliance.patient.today import with_stim_exercise
from appliance.sensor.simulated import SimulatedPelvicFloor, profile
from appliance.stim import (
    CONTRAINDICATIONS,
    HARD_LIMITS,
    StimContext,
    StimController,
    StimLine,
    StimState,
    install_exit_handlers,
    open_stim,
    parse_stim_prescription,
    stim_sessions_on,
)
from appliance.store import Store, StoreSink
from appliance.voice.phrases import Catalogue

PIN = 22
TODAY = date(2026, 3, 2)


def table(**changes) -> dict:
    base = {
        "enabled": True, "mode": "cyclic", "work_seconds": 5, "rest_seconds": 10, "cycles": 3,
        "checked_by": "dr. Jansen", "checked_on": TODAY - timedelta(days=7),
        "contraindications": {k: "no" for k in CONTRAINDICATIONS},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def clock(monkeypatch) -> SimClock:
    clock = SimClock()
    monkeypatch.setattr(gpiozero.pins.mock, "monotonic", clock.now)
    return clock


@pytest.fixture
def factory() -> MockFactory:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def line(factory, clock) -> StimLine:
    stim_line = StimLine(PIN, pin_factory=factory)
    factory.pin(PIN).clear_states()
    yield stim_line
    stim_line.close()


class Events(list):
    def emit(self, event: Event) -> None:
        self.append(event)

    def feedback(self, fb) -> None:
        return None

    def stim(self, state: str) -> list[Event]:
        return [e for e in self if e.kind == "stim" and e.data["state"] == state]


def drive(ctrl: StimController, clock: SimClock, seconds: float, ctx: StimContext,
          tick_s: float = 0.01) -> None:
    end = clock.now() + seconds
    while clock.now() < end - 1e-9:
        clock.advance(tick_s)
        ctrl.tick(clock.now(), ctx)


ACTIVE = StimContext(exercise_active=True, probe_ok=True, strength_pct=0.0)


# --- the prescription ------------------------------------------------------------------------


def test_stim_is_off_without_a_stim_table() -> None:
    rx = parse_stim_prescription({}, "rx.toml")
    assert not rx.enabled


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"work_seconds": 12, "rest_seconds": 12}, "stim.work_seconds", "hard limit: work between 1 and 10 s"),
        ({"work_seconds": 6, "rest_seconds": 5}, "stim.rest_seconds", "rest at least as long as work"),
        ({"work_seconds": 1, "rest_seconds": 2}, "stim.rest_seconds", "time to warn the patient"),
        ({"cycles": 150}, "stim.cycles", "session at most 30 min"),
        ({"cycles": None, "session_minutes": 45}, "stim.session_minutes", "session at most 30 min"),
        ({"cycles": None}, "stim.session_minutes", "sets cycles or session_minutes"),
        ({"sessions_per_day": 3}, "stim.sessions_per_day", "between 1 and 2 stim sessions a day"),
        ({"mode": "triggered", "trigger_pct": 95}, "stim.trigger_pct", "trigger between 10 and 90"),
        ({"mode": "burst"}, "stim.mode", "one of 'cyclic', 'triggered'"),
        ({"contraindications": None}, "stim.contraindications", "contraindication checklist"),
        ({"contraindications": {**{k: "no" for k in CONTRAINDICATIONS}, "pacemaker": "yes"}},
         "stim.contraindications.pacemaker", "contraindication, no stimulation with a pacemaker"),
        ({"contraindications": {k: "no" for k in CONTRAINDICATIONS if k != "epilepsy"}},
         "stim.contraindications.epilepsy", 'must answer "no"'),
        ({"contraindications": {**{k: "no" for k in CONTRAINDICATIONS}, "infection": False}},
         "stim.contraindications.infection", 'must answer "no"'),
        ({"checked_by": ""}, "stim.checked_by", "signs it"),
        ({"checked_on": None}, "stim.checked_on", "date it was answered"),
        ({"frequency_hz": 50}, "stim.frequency_hz", "unknown key"),
    ],
)
def test_a_prescription_breaking_a_rule_is_refused_naming_the_rule(changes, key, words) -> None:
    with pytest.raises(ConfigError) as err:
        parse_stim_prescription(table(**changes), "/etc/appliance/prescription.toml")
    assert err.value.file == "/etc/appliance/prescription.toml"
    assert err.value.key == key
    assert words in str(err.value)


def test_the_hard_limits_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(AttributeError):
        HARD_LIMITS.max_work_seconds = 20  # type: ignore[misc]


def test_no_stim_within_12_weeks_of_surgery_even_with_a_valid_prescription(line, factory) -> None:
    rx = parse_stim_prescription(table(surgery_or_birth_date=TODAY - timedelta(weeks=11)), "rx.toml")
    ctrl = StimController(line, rx)
    assert not ctrl.begin(0.0, TODAY)
    assert ctrl.state is StimState.LOCKED and ctrl.reason == "postoperative"
    assert ctrl.begin(0.0, TODAY + timedelta(weeks=1))  # 12 weeks on


def test_one_stim_session_a_day_unless_prescribed(line) -> None:
    once = StimController(line, parse_stim_prescription(table(), "rx.toml"))
    assert once.begin(0.0, TODAY)
    once.end(1.0)
    assert not once.begin(2.0, TODAY) and once.reason == "daily_limit"
    assert once.begin(3.0, TODAY + timedelta(days=1))
    stored = StimController(line, parse_stim_prescription(table(sessions_per_day=2), "rx.toml"),
                            sessions_on=lambda day: 2)  # two already in the store today
    assert not stored.begin(0.0, TODAY)


# --- timing on the pin -----------------------------------------------------------------------


def test_cyclic_stimulation_follows_the_prescription_to_the_tick(line, factory, clock) -> None:
    rx = parse_stim_prescription(table(work_seconds=5, rest_seconds=10, cycles=3), "rx.toml")
    ctrl = StimController(line, rx)
    ctrl.begin(clock.now(), TODAY)
    drive(ctrl, clock, 60.0, ACTIVE)
    # told at the first tick (0.01 s), on 3 s later; 5 s on, 10 s off, three times
    factory.pin(PIN).assert_states_and_times(
        [(0.0, False), (3.01, True), (5.0, False), (10.0, True), (5.0, False), (10.0, True),
         (5.0, False)]
    )
    assert len(factory.pin(PIN).states) == 7
    assert ctrl.state is StimState.DONE and not line.is_active


def test_triggered_stimulation_fires_only_after_the_threshold_is_crossed(line, factory, clock) -> None:
    rx = parse_stim_prescription(table(mode="triggered", trigger_pct=40, work_seconds=4,
                                       rest_seconds=8, cycles=None, session_minutes=2), "rx.toml")
    ctrl = StimController(line, rx)
    ctrl.begin(clock.now(), TODAY)
    pin = factory.pin(PIN)
    drive(ctrl, clock, 6.0, StimContext(True, True, 60.0))  # already squeezing: no crossing
    drive(ctrl, clock, 2.0, StimContext(True, True, 39.0))  # below the threshold
    assert pin.states[-1].state is False and len(pin.states) == 1
    drive(ctrl, clock, 1.0, StimContext(True, True, 41.0))  # crosses at 8.01 s
    drive(ctrl, clock, 10.0, StimContext(True, True, 41.0))  # held: no second firing
    pin.assert_states_and_times([(0.0, False), (8.01, True), (4.0, False)])
    assert len(pin.states) == 3


@pytest.mark.parametrize(
    "way_out",
    ["stop", "pause", "button", "louder", "probe", "left_exercise", "exception", "clock_back",
     "stall", "shutdown"],
)
def test_every_way_out_drops_the_line_at_once(way_out, line, factory, clock) -> None:
    ctrl = StimController(line, parse_stim_prescription(table(work_seconds=10), "rx.toml"))
    ctrl.begin(clock.now(), TODAY)
    drive(ctrl, clock, 4.0, ACTIVE)
    assert line.is_active
    t = clock.now()
    if way_out in ("stop", "pause", "louder"):
        ctrl.command(t, Command(way_out))
    elif way_out == "button":
        ctrl.command(t, None, source="button")
    elif way_out == "probe":
        ctrl.tick(t + 0.01, StimContext(True, False, 0.0))
    elif way_out == "left_exercise":
        ctrl.tick(t + 0.01, StimContext(False, True, 0.0))
    elif way_out == "exception":
        class Broken:
            @property
            def exercise_active(self):
                raise RuntimeError("coach bug")
        with pytest.raises(RuntimeError):
            ctrl.tick(t + 0.01, Broken())
    elif way_out == "clock_back":
        ctrl.tick(t - 1.0, ACTIVE)
    elif way_out == "stall":
        ctrl.tick(t + HARD_LIMITS.watchdog_seconds + 0.01, ACTIVE)
    elif way_out == "shutdown":
        ctrl.shutdown(t)
    assert not line.is_active
    assert factory.pin(PIN).states[-1].state is False
    # and it stays low until a fresh announcement and 3 s (or for good, after a stop)
    clock.advance(0.01)
    drive(ctrl, clock, 2.9, ACTIVE)
    assert not line.is_active


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_drive_the_line_low(signum, line, factory, clock) -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # From Python's own handlers, as in a fresh process (whatever ran before in this worker).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        install_exit_handlers(line)
        line.on(5.0)
        expected = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
        with pytest.raises(expected):
            os.kill(os.getpid(), signum)
        assert not line.is_active
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


CHILD = textwrap.dedent(
    """
    import atexit, json, sys
    from gpiozero.pins.mock import MockFactory
    from appliance.stim import StimLine, install_exit_handlers
    factory = MockFactory()
    pin = factory.pin(22)
    # registered first, so it runs last: after the stim handler
    atexit.register(lambda: print(json.dumps([s.state for s in pin.states]), flush=True))
    line = StimLine(22, pin_factory=factory)
    install_exit_handlers(line)
    line.on(5.0)
    if sys.argv[1] == "raise":
        raise RuntimeError("coach failed")
    sys.exit(0)
    """
)


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_process_exit_leaves_the_line_low(how) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True, text=True,
                         timeout=60)
    states = json.loads(out.stdout.strip().splitlines()[-1])
    assert states == [False, True, False]


# --- in the coach ----------------------------------------------------------------------------


def coached(clock: SimClock, line: StimLine, script=(), rx_changes=None, store=None, seconds=400.0,
            tick_hook=None):
    cat = Catalogue.load("nl")
    prog = with_stim_exercise(load_programme("leaflet", cat.keys()).only("ex1"), after="none")
    events = Events()
    sinks = [events]
    floor = SimulatedPelvicFloor(profile("average"), seed=3, sample_rate_hz=100.0)
    sinks.append(floor)
    if store is not None:
        sinks.insert(0, StoreSink(store, clock, prog.id, "nl", source="simulation"))
    session = Session(prog, cat, clock, sinks, calibration=Calibration(20.0, 30.0))
    rx = parse_stim_prescription(table(**(rx_changes or {})), "rx.toml")
    ctrl = StimController(line, rx)
    session.attach_stim(ctrl)
    if tick_hook is not None:
        tick_hook(session)
    script = [ScriptedCommand(1.0, Command.START), *script]
    run(session, floor, clock, tick_s=0.01, script=script, max_seconds=seconds)
    return session, ctrl, events


def test_a_coached_stim_exercise_announces_each_work_phase_and_records_every_on_and_off(
        line, factory, clock, tmp_path) -> None:
    store = Store(tmp_path / "appliance.db")
    session, ctrl, events = coached(clock, line, store=store, seconds=200.0)
    store.close()
    ons, offs = events.stim("on"), events.stim("off")
    assert len(ons) == len(offs) == 3
    begins = [e for e in events if e.kind == "say" and e.data["phrase"] == "stim.begins"]
    assert len(begins) == 3
    for said, on, off in zip(begins, ons, offs, strict=True):
        assert on.t - said.t >= HARD_LIMITS.announce_seconds - 1e-6  # told, 3 s to say stop
        assert off.t - on.t == pytest.approx(5.0, abs=0.011)
    for a, b in zip(ons, ons[1:], strict=False):
        assert b.t - a.t == pytest.approx(15.0, abs=0.011)  # 5 s on, 10 s rest
    # the pin did the same, and the session moved on to exercise 1 afterwards
    states = [s.state for s in factory.pin(PIN).states]
    assert states == [False, True, False, True, False, True, False]
    ex_events = [(e.data["exercise"], e.data["state"]) for e in events if e.kind == "exercise"]
    assert ex_events[:3] == [("stim", "started"), ("stim", "finished"), ("ex1", "started")]
    stim_done = next(e.t for e in events if e.kind == "exercise" and e.data["state"] == "finished")
    assert stim_done == pytest.approx(offs[-1].t, abs=0.02)  # ended with its last cycle
    db = Store(tmp_path / "appliance.db")
    stored = [json.loads(r["data"])["state"] for r in db.query("SELECT data FROM events WHERE kind='stim'")]
    db.close()
    assert stored.count("on") == 3 and stored.count("off") == 3
    # the store is also where tomorrow's daily limit comes from
    db = Store(tmp_path / "appliance.db")
    day = clock.wall().date()
    assert stim_sessions_on(db, day) == 1 and stim_sessions_on(db, day + timedelta(days=1)) == 0
    again = StimController(_SpyLine(), parse_stim_prescription(table(), "rx.toml"),
                           sessions_on=lambda d: stim_sessions_on(db, d))
    assert again.refusal(day) == "daily_limit" and again.refusal(day + timedelta(days=1)) == ""
    db.close()


def test_open_stim_leaves_the_pin_low_and_released_however_the_block_ends(factory, clock) -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    rx = parse_stim_prescription(table(), "rx.toml")
    try:
        with pytest.raises(RuntimeError), open_stim(PIN, rx, pin_factory=factory) as ctrl:
            ctrl.begin(clock.now(), TODAY)
            drive(ctrl, clock, 3.5, ACTIVE)
            assert ctrl.line_high and factory.pin(PIN).state
            raise RuntimeError("the run loop failed")
        assert factory.pin(PIN).state is False
        assert factory.pin(PIN).function == "input"  # released
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _first_on(events: Events) -> float:
    return events.stim("on")[0].t


def test_stop_during_stimulation_leaves_the_pin_low_for_good(line, factory, clock) -> None:
    # find when the first work phase starts, then say stop two seconds into it
    _, _, probe_events = coached(SimClock(), _SpyLine(), seconds=80.0)
    on_at = _first_on(probe_events)
    session, ctrl, events = coached(clock, line, script=[ScriptedCommand(on_at + 2.0, Command.STOP)],
                                    seconds=200.0)
    assert [s.state for s in factory.pin(PIN).states] == [False, True, False]
    assert events.stim("off")[0].t == pytest.approx(on_at + 2.0, abs=0.011)
    assert ctrl.state is StimState.STOPPED and session.finished


def test_pause_drops_the_pin_and_resume_announces_again(line, factory, clock) -> None:
    _, _, probe_events = coached(SimClock(), _SpyLine(), seconds=80.0)
    on_at = _first_on(probe_events)
    script = [ScriptedCommand(on_at + 1.0, Command.PAUSE), ScriptedCommand(on_at + 20.0, Command.RESUME)]
    session, ctrl, events = coached(clock, line, script=script, seconds=40.0 + on_at)
    offs, ons = events.stim("off"), events.stim("on")
    assert offs[0].t == pytest.approx(on_at + 1.0, abs=0.011)
    assert len(ons) >= 2
    told = [e.t for e in events if e.kind == "say" and e.data["phrase"] == "stim.begins"]
    assert any(on_at + 20.0 <= t <= ons[1].t - 3.0 for t in told)  # told again after resuming


def test_an_exception_in_the_coach_leaves_the_pin_low(line, factory, clock) -> None:
    _, _, probe_events = coached(SimClock(), _SpyLine(), seconds=80.0)
    on_at = _first_on(probe_events)

    def break_after_on(session: Session) -> None:
        original = session._take_samples

        def failing(times, values):
            if session.session_time() > on_at + 1.0:
                raise RuntimeError("coach bug")
            return original(times, values)

        session._take_samples = failing

    with pytest.raises(RuntimeError, match="coach bug"):
        coached(clock, line, tick_hook=break_after_on, seconds=200.0)
    assert [s.state for s in factory.pin(PIN).states] == [False, True, False]
    assert not line.is_active


def test_without_a_stim_controller_the_stim_exercise_is_left_out(clock) -> None:
    cat = Catalogue.load("nl")
    prog = with_stim_exercise(load_programme("leaflet", cat.keys()).only("ex1"), after="none")
    assert [e.id for e in prog.exercises] == ["stim", "ex1"]
    floor = SimulatedPelvicFloor(profile("average"), seed=3, sample_rate_hz=100.0)
    events = Events()
    session = Session(prog, cat, clock, [events, floor], calibration=Calibration(20.0, 30.0))
    run(session, floor, clock, script=[ScriptedCommand(1.0, Command.START)], max_seconds=300.0)
    started = [e.data["exercise"] for e in events if e.kind == "exercise" and e.data["state"] == "started"]
    assert started == ["ex1"]
    assert not any(e.kind == "say" and e.data["phrase"].startswith("exercise.stim") for e in events)


class _SpyLine:
    """A line without a pin, for a dry run that finds when the first work phase starts."""

    def __init__(self) -> None:
        self.is_active = False

    def on(self, max_seconds: float) -> None:
        self.is_active = True

    def off(self) -> None:
        self.is_active = False


def test_stim_off_drives_a_line_a_dead_process_left_high_low():
    """The service's ExecStopPost: after SIGKILL the pin may still be high; stim-off lowers it."""
    import argparse

    from gpiozero.pins.mock import MockFactory

    from appliance.cli.stim_off import run as stim_off

    factory = MockFactory()
    left = factory.pin(PIN)
    left.function = "output"
    left.state = True  # what a killed process may leave behind
    assert factory.pin(PIN).state
    assert stim_off(argparse.Namespace(pin=PIN, config=None), pin_factory=factory) == 0
    assert factory.pin(PIN).state is False or factory.pin(PIN).state == 0


def test_the_service_unit_drives_the_stim_line_low_after_any_exit():
    from pathlib import Path

    unit = (Path(__file__).parent.parent / "systemd" / "appliance.service").read_text()
    assert "ExecStopPost=/opt/appliance/venv/bin/appliance stim-off" in unit


# --- stim-off whatever the configuration says (issue 13 item 4) ---------------------------


def _left_high(factory: MockFactory, pin: int):
    left = factory.pin(pin)
    left.function = "output"
    left.state = True  # what a killed process may leave behind
    return left


@pytest.mark.parametrize(("name", "content"), [
    ("typo", b"[controls]\nstim_pinn = 22\n"),
    ("not_utf8", b"[controls]\nbutton_pin = 17 # \xff\xfe\n"),
    ("not_toml", b"[controls\nstim_pin = 22\n"),
    ("bad_value", b"[controls]\nstim_pin = \"twenty-two\"\n"),
    ("missing", None),
])
def test_stim_off_falls_back_to_the_documented_pin_when_the_configuration_is_bad(
        tmp_path, capsys, name, content) -> None:
    import argparse

    from appliance.cli.stim_off import run as stim_off
    from appliance.config import ControlsConfig

    default = ControlsConfig().stim_pin
    assert default == 22  # docs/stimulation.md: GPIO22
    path = tmp_path / "appliance.toml"
    if content is not None:
        path.write_bytes(content)
    factory = MockFactory()
    try:
        _left_high(factory, default)
        code = stim_off(argparse.Namespace(pin=None, config=path), pin_factory=factory)
        err = capsys.readouterr().err
        assert code == 0
        assert factory.pin(default).state is False
        assert "fell back to the documented stim pin GPIO22" in err and str(path) in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        factory.reset()


def test_stim_off_uses_the_stim_pin_it_can_still_read_from_a_refused_configuration(
        tmp_path, capsys) -> None:
    import argparse

    from appliance.cli.stim_off import run as stim_off

    path = tmp_path / "appliance.toml"
    path.write_text("[controls]\nstim_pin = 23\nled_pinn = 27\n")  # a typo elsewhere
    factory = MockFactory()
    try:
        _left_high(factory, 23)
        assert stim_off(argparse.Namespace(pin=None, config=path), pin_factory=factory) == 0
        assert factory.pin(23).state is False
        assert "used its [controls] stim_pin = 23" in capsys.readouterr().err
    finally:
        factory.reset()


def test_stim_off_exits_non_zero_only_when_no_pin_could_be_driven(tmp_path, capsys) -> None:
    import argparse

    from appliance.cli.stim_off import run as stim_off

    class NoPins(MockFactory):
        def pin(self, spec, **kw):
            raise OSError(16, "Device or resource busy")

    factory = NoPins()
    assert stim_off(argparse.Namespace(pin=None, config=tmp_path / "none.toml"),
                    pin_factory=factory) == 1
    err = capsys.readouterr().err
    assert "could not drive GPIO22 low" in err and "Traceback" not in err


# --- sessions per local day (issue 13 item 9) ---------------------------------------------


def test_stim_sessions_are_counted_per_local_day_of_the_prescription(tmp_path) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    brussels = ZoneInfo("Europe/Brussels")
    store = Store(tmp_path / "appliance.db")
    # 00:30 in Brussels on 2 March is 23:30 UTC on 1 March
    when = datetime(2026, 3, 2, 0, 30, tzinfo=brussels).astimezone(UTC)
    sid = store.start_session(when, "leaflet", "nl", source="simulation")
    store.event(sid, 1.0, "stim", {"state": "begin", "reason": "", "mode": "cyclic",
                                   "work_phase": 0})
    store.flush()
    try:
        assert stim_sessions_on(store, date(2026, 3, 2), brussels) == 1
        assert stim_sessions_on(store, date(2026, 3, 1), brussels) == 0
        assert stim_sessions_on(store, date(2026, 3, 1)) == 1  # tz=None: the UTC day, as before
        ctrl = StimController(_SpyLine(), parse_stim_prescription(table(), "rx.toml"),
                              sessions_on=lambda d: stim_sessions_on(store, d, brussels))
        assert ctrl.refusal(date(2026, 3, 2)) == "daily_limit"
        assert ctrl.refusal(date(2026, 3, 1)) == ""
    finally:
        store.close()


# --- open_stim with an opened line ----------------------------------------------------------


class _FedLine(_SpyLine):
    """A line that takes a feed, like the device's `RelayedLine`."""

    def __init__(self) -> None:
        super().__init__()
        self.feeds = 0
        self.closed = False
        self.tripped = False

    def feed(self) -> None:
        self.feeds += 1

    def close(self) -> None:
        self.is_active = False
        self.closed = True


def test_open_stim_puts_the_stop_handlers_back_once_the_line_is_low_and_closed(factory, clock) -> None:
    """The device opens the line for every stimulation session: its exit handlers go with
    it, so sessions do not pile up handlers (each chained to a closed line)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    rx = parse_stim_prescription(table(), "rx.toml")
    for _ in range(2):
        with open_stim(PIN, rx, pin_factory=factory) as ctrl:
            assert all(signal.getsignal(s) is not h for s, h in before.items())  # guarded while open
            ctrl.begin(clock.now(), TODAY)
            drive(ctrl, clock, 1.0, ACTIVE)
        assert {s: signal.getsignal(s) for s in before} == before
        assert factory.pin(PIN).state is False


class _UnclosableLine(_FedLine):
    def close(self) -> None:
        raise OSError("gpio chip gone")


def test_open_stim_keeps_the_stop_handlers_when_the_line_cannot_be_closed(clock) -> None:
    """A line that could not be closed keeps its guards: SIGTERM/SIGINT and exit still drive it low."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    line = _UnclosableLine()
    try:
        with pytest.raises(OSError):
            with open_stim(line, parse_stim_prescription(table(), "rx.toml")) as ctrl:
                ctrl.begin(clock.now(), TODAY)
                drive(ctrl, clock, 1.0, ACTIVE)
        assert not line.is_active
        assert all(signal.getsignal(s) is not h for s, h in saved.items())
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        atexit.unregister(line.off)


def test_open_stim_takes_an_opened_line_feeds_it_every_tick_and_closes_it(clock) -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    fed = _FedLine()
    try:
        with open_stim(fed, parse_stim_prescription(table(), "rx.toml")) as ctrl:
            ctrl.begin(clock.now(), TODAY)
            drive(ctrl, clock, 3.5, ACTIVE)
            assert fed.is_active and fed.feeds == 350
            fed.tripped = True  # the relay dropped the line by itself
            drive(ctrl, clock, 0.01, ACTIVE)
            assert not fed.is_active and ctrl.state is StimState.WAITING
            assert ctrl.reason == "watchdog" and not fed.tripped
        assert fed.closed
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_the_stim_package_imports_nothing_above_it() -> None:
    from pathlib import Path

    package = Path(__file__).parent.parent / "appliance" / "stim"
    importing = sorted(p.name for p in package.glob("*.py")
                       if re.search(r"^\s*(from|import) appliance\.(coach|patient|device)", p.read_text(), re.M))
    assert importing == []
    out = subprocess.run([sys.executable, "-c", "import sys, appliance.stim; "
                          "print(any(m.startswith('appliance.coach') for m in sys.modules))"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
