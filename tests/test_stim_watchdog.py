"""The in-process watchdog of a `StimLine` (the simulation's line): a loop that stops
feeding it, or a line held past its on-time, is dropped, even when a write fails.

The device's line is held by the relay process instead: tests/test_stim_relay.py.
Times are real here, checked with `assert_states_and_times` (gpiozero's tolerance: 50 ms).
"""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from appliance.stim import HARD_LIMITS, StimLine, StimWatchdog

PIN = 22


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


class FlakyPin(MockPin):
    """A pin whose next `fail` writes raise OSError, as a GPIO write can fail transiently."""

    fail = 0

    def _set_state(self, value) -> None:
        if FlakyPin.fail > 0:
            FlakyPin.fail -= 1
            raise OSError(5, "Input/output error")
        super()._set_state(value)


@pytest.fixture
def flaky() -> MockFactory:
    f = MockFactory(pin_class=FlakyPin)
    yield f
    FlakyPin.fail = 0
    f.reset()


@pytest.mark.parametrize("why", ["stale", "overdue"])
def test_the_watchdog_survives_a_failed_write_and_drops_the_line_on_the_next_poll(
        flaky, why) -> None:
    line = StimLine(PIN, pin_factory=flaky)
    pin = flaky.pin(PIN)
    watchdog = StimWatchdog(line).start()
    try:
        line.on(0.3 if why == "overdue" else 5.0)
        pin.clear_states()
        FlakyPin.fail = 3  # the first three writes of "low" fail
        end = time.monotonic() + 0.8
        while why == "overdue" and time.monotonic() < end:  # fed: only the deadline trips
            watchdog.feed()
            time.sleep(0.005)
        assert wait_for(lambda: not line.is_active, 1.0), "the watchdog thread died on OSError"
        assert FlakyPin.fail == 0 and watchdog._thread.is_alive()
        drop = pin.states[-1].timestamp
        assert drop == pytest.approx(0.3 if why == "overdue" else HARD_LIMITS.watchdog_seconds,
                                     abs=0.08)
    finally:
        watchdog.stop()
        line.close()


def test_a_failed_off_keeps_the_deadline_for_the_watchdog(flaky) -> None:
    line = StimLine(PIN, pin_factory=flaky)
    line.on(0.05)
    FlakyPin.fail = 1
    with pytest.raises(OSError):
        line.off()
    assert line.is_active
    assert line.overdue(time.monotonic() + 0.1)  # still known to be held past its on-time
    line.off()
    assert not line.is_active and not line.overdue(time.monotonic() + 0.1)
    line.close()
