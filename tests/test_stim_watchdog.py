"""The watchdog: a control loop that stops ticking, hangs or is killed leaves the line low.

Mechanism under test (docs/stimulation.md): the parent holds the `StimLine` on a mock
pin through a `LineRelay`; a child process runs the real `StimController` on the real
clock and drives the line through a `PipeLine`, one heartbeat per tick. SIGKILL closes
the pipe (the relay sees end-of-file); SIGSTOP keeps it open but silent, so only the
200 ms watchdog can act. Times are real here, checked with `assert_states_and_times`
(gpiozero's tolerance: 50 ms).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import date, timedelta

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.clock import RealClock
from appliance.stim import (
    CONTRAINDICATIONS,
    HARD_LIMITS,
    LineRelay,
    PipeLine,
    StimContext,
    StimController,
    StimLine,
    StimWatchdog,
    parse_stim_prescription,
)

PIN = 22
TODAY = date(2026, 3, 2)


@pytest.fixture
def factory() -> MockFactory:
    f = MockFactory()
    yield f
    f.reset()


def wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_watchdog_drops_the_line_200_ms_after_the_last_tick(factory) -> None:
    line = StimLine(PIN, pin_factory=factory)
    pin = factory.pin(PIN)
    watchdog = StimWatchdog(line).start()
    try:
        line.on(5.0)
        pin.clear_states()
        for _ in range(30):  # a healthy loop: fed every 10 ms for 0.3 s, line stays high
            watchdog.feed()
            time.sleep(0.01)
        assert line.is_active and not watchdog.tripped
        assert wait_for(lambda: not line.is_active, 1.0)  # now the loop "hangs"
        pin.assert_states_and_times([(0.0, True), (0.3 + HARD_LIMITS.watchdog_seconds, False)])
        assert watchdog.tripped
    finally:
        watchdog.stop()
        line.close()


def test_watchdog_drops_a_line_held_past_its_on_time_even_while_fed(factory) -> None:
    line = StimLine(PIN, pin_factory=factory)
    pin = factory.pin(PIN)
    watchdog = StimWatchdog(line).start()
    try:
        line.on(0.3)
        pin.clear_states()
        end = time.monotonic() + 0.6
        while time.monotonic() < end:  # a loop that feeds but forgot to switch off
            watchdog.feed()
            time.sleep(0.005)
        pin.assert_states_and_times([(0.0, True), (0.3, False)])
    finally:
        watchdog.stop()
        line.close()


def child_controller(conn) -> None:
    """The control loop in a child process: cyclic stim, 10 s work, a tick every 10 ms."""
    table = {
        "enabled": True, "work_seconds": 10, "rest_seconds": 10, "cycles": 1,
        "checked_by": "dr. Jansen", "checked_on": TODAY - timedelta(days=1),
        "contraindications": {k: "no" for k in CONTRAINDICATIONS},
    }
    line = PipeLine(conn)
    ctrl = StimController(line, parse_stim_prescription(table, "rx.toml"), watchdog=line)
    clock = RealClock()
    t0 = clock.now()
    ctrl.begin(0.0, TODAY)
    ctx = StimContext(exercise_active=True, probe_ok=True)
    t = t0
    while True:
        t += 0.01
        clock.sleep_until(t)
        ctrl.tick(clock.now() - t0, ctx)


@pytest.mark.parametrize(("how", "drop_after"), [
    ("SIGKILL", 0.0),  # dead: the pipe closes, the relay drops the line at once
    ("SIGSTOP", HARD_LIMITS.watchdog_seconds),  # hung: no heartbeat, the watchdog drops it
])
def test_a_killed_or_hung_control_process_leaves_the_line_low(factory, how, drop_after) -> None:
    line = StimLine(PIN, pin_factory=factory)
    pin = factory.pin(PIN)
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=child_controller, args=(child_end,), daemon=True)
    child.start()
    child_end.close()  # only the child holds the sending end: its death is end-of-file
    relay = LineRelay(line, parent_end).start()
    try:
        assert wait_for(lambda: line.is_active, 30.0), "the child never switched the line on"
        pin.clear_states()
        time.sleep(0.3)
        os.kill(child.pid, getattr(signal, how))
        assert wait_for(lambda: not line.is_active, 2.0)
        pin.assert_states_and_times([(0.0, True), (0.3 + drop_after, False)])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        relay.join(5)
        line.close()
