"""Button and LED under gpiozero's MockFactory: presses to commands, states to light."""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.commands import Command
from appliance.config import ControlsConfig
from appliance.device.controls import (
    LED_PATTERNS,
    ActivityState,
    Controls,
    Press,
    command_for_press,
)

BUTTON, LED_PIN = 17, 27
LONG_S = 0.25


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.fixture(params=["pwm", "plain"])
def rig(request):
    factory = MockFactory(pin_class=MockPWMPin) if request.param == "pwm" else MockFactory()
    received: list[tuple[Command, str]] = []
    controls = Controls(
        ControlsConfig(button_pin=BUTTON, led_pin=LED_PIN),
        lambda cmd, source: received.append((cmd, source)),
        long_press_s=LONG_S,
        bounce_s=None,
        pin_factory=factory,
    )
    yield controls, factory.pin(BUTTON), factory.pin(LED_PIN), received
    controls.close()


def press(pin, seconds):
    pin.drive_low()
    time.sleep(seconds)
    pin.drive_high()


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (ActivityState.READY, Command.START),
        (ActivityState.IN_SESSION, Command.NEXT),
        (ActivityState.PAUSED, Command.RESUME),
        (ActivityState.NEEDS_ATTENTION, Command.STATUS),
    ],
)
def test_short_press_starts_next_resumes(rig, state, expected):
    controls, button, _, received = rig
    controls.show(state)
    press(button, 0.02)
    assert wait_for(lambda: received)
    assert received == [(expected, "button")]


def test_short_press_while_starting_is_ignored(rig):
    controls, button, _, received = rig
    press(button, 0.02)
    assert wait_for(lambda: controls.presses == [Press.SHORT])
    assert received == []


@pytest.mark.parametrize("state", [ActivityState.IN_SESSION, ActivityState.PAUSED])
def test_long_press_stops_once_and_is_not_also_a_short_press(rig, state):
    controls, button, _, received = rig
    controls.show(state)
    press(button, LONG_S * 2.5)
    assert wait_for(lambda: len(controls.presses) >= 1)
    time.sleep(0.05)
    assert controls.presses == [Press.LONG]
    assert received == [(Command.STOP, "button")]


def test_long_press_when_ready_does_nothing(rig):
    controls, button, _, received = rig
    controls.show(ActivityState.READY)
    press(button, LONG_S * 2.5)
    assert wait_for(lambda: controls.presses == [Press.LONG])
    assert received == []


def test_press_mapping_table_covers_every_state():
    for state in ActivityState:
        for p in Press:
            cmd = command_for_press(p, state)
            assert cmd is None or isinstance(cmd, Command)
    assert command_for_press(Press.LONG, ActivityState.IN_SESSION) is Command.STOP
    assert all(state in LED_PATTERNS for state in ActivityState)


def test_ready_is_steady_light_dimmed_on_pwm(rig):
    controls, _, led, _ = rig
    controls.show(ActivityState.READY)
    time.sleep(0.1)
    first = led.state
    time.sleep(0.3)
    assert led.state == first  # steady: no blinking
    assert first == pytest.approx(0.3 if controls.pwm else 1)


def edges(led, seconds):
    """Times at which the pin went from dark to lit during `seconds`."""
    seen, rises, lit = time.monotonic() + seconds, [], None
    while time.monotonic() < seen:
        now_lit = led.state > 0.5
        if lit is False and now_lit:
            rises.append(time.monotonic())
        lit = now_lit
        time.sleep(0.005)
    return rises


def test_needs_attention_blinks_fast(rig):
    controls, _, led, _ = rig
    controls.show(ActivityState.NEEDS_ATTENTION)
    rises = edges(led, 1.3)
    periods = [b - a for a, b in zip(rises, rises[1:], strict=False)]
    assert len(rises) >= 2
    assert all(0.3 <= p <= 0.55 for p in periods), periods


def test_in_session_breathes_slowly(rig):
    controls, _, led, _ = rig
    controls.show(ActivityState.IN_SESSION)
    samples = []
    for _ in range(60):
        samples.append(led.state)
        time.sleep(0.05)
    # Over 3 s the light both rises above half and falls below it, but much slower
    # than the attention blink: at most one rise.
    assert max(samples) > 0.5 and min(samples) < 0.5
    rises = sum(1 for a, b in zip(samples, samples[1:], strict=False) if a <= 0.5 < b)
    assert rises <= 1
    if controls.pwm:
        assert any(0.05 < s < 0.95 for s in samples)  # it fades, not switches


def test_close_turns_the_light_off(rig):
    controls, _, led, _ = rig
    controls.show(ActivityState.READY)
    controls.close()
    assert led.state == 0


def test_missing_pins_leave_a_working_object():
    received = []
    controls = Controls(
        ControlsConfig(button_pin=None, led_pin=None),
        lambda c, s: received.append(c),
        pin_factory=MockFactory(),
    )
    controls.show(ActivityState.IN_SESSION)
    assert controls.state is ActivityState.IN_SESSION
    assert controls.button is None and controls.led is None
    controls.close()
