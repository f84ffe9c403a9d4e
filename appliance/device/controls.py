"""The push button and the status LED (gpiozero): presses become commands, states become light.

Button (one, to ground, internal pull-up):
  short press  - idle: start a session; in a session: next step; paused: resume;
                 needs attention: say the problem again.
  long press   - (held >= 1.5 s) stop the session.

LED patterns (a PWM-capable pin fades; a plain pin blinks with the same timing):
  starting         - a 0.1 s flash every second (loading; the ready phrase has not been said)
  ready            - steady on, dimmed (waiting for a press or "start")
  in session       - slow breathing: 2 s up, 2 s down (1 s on / 1 s off on a plain pin)
  paused           - a 1 s flash every 3 s
  needs attention  - fast blink, 0.2 s on / 0.2 s off (a fault, or "needs the clinic")
  off              - the service is not running
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from gpiozero import LED, PWMLED, Button
from gpiozero.exc import GPIOZeroError

from appliance.commands import Command
from appliance.config import ControlsConfig

log = logging.getLogger(__name__)

LONG_PRESS_S = 1.5


class ActivityState(Enum):
    """What the appliance is doing, as far as the button and the LED care."""

    OFF = "off"
    STARTING = "starting"
    READY = "ready"
    IN_SESSION = "in_session"
    PAUSED = "paused"
    NEEDS_ATTENTION = "needs_attention"


class Press(Enum):
    SHORT = "short"
    LONG = "long"


def command_for_press(press: Press, state: ActivityState) -> Command | None:
    """The one table that says what a press means; None means the press is ignored."""
    if press is Press.LONG:
        return Command.STOP if state in (ActivityState.IN_SESSION, ActivityState.PAUSED) else None
    return {
        ActivityState.READY: Command.START,
        ActivityState.IN_SESSION: Command.NEXT,
        ActivityState.PAUSED: Command.RESUME,
        ActivityState.NEEDS_ATTENTION: Command.STATUS,
    }.get(state)


@dataclass(frozen=True)
class LedPattern:
    """`on_s=None` is steady light at `level`; otherwise blink on/off with optional fades."""

    on_s: float | None
    off_s: float = 0.0
    fade_s: float = 0.0
    level: float = 1.0


LED_PATTERNS: dict[ActivityState, LedPattern] = {
    ActivityState.OFF: LedPattern(on_s=None, level=0.0),
    ActivityState.STARTING: LedPattern(on_s=0.1, off_s=0.9),
    ActivityState.READY: LedPattern(on_s=None, level=0.3),
    ActivityState.IN_SESSION: LedPattern(on_s=0.0, off_s=0.0, fade_s=2.0),
    ActivityState.PAUSED: LedPattern(on_s=1.0, off_s=2.0),
    ActivityState.NEEDS_ATTENTION: LedPattern(on_s=0.2, off_s=0.2),
}

# A plain (non-PWM) pin cannot fade or dim: the breathing becomes 1 s on / 1 s off and
# dimmed steady light becomes full.
_PLAIN_BREATHING = LedPattern(on_s=1.0, off_s=1.0)


class Controls:
    """Button and LED on the pins of `config`; either may be absent (pin None or no GPIO).

    `on_command(command, source)` is called from gpiozero's thread; the caller hands it
    to its own loop (see `appliance run`). Hardware comes from gpiozero's pin factory,
    so tests pass `pin_factory=MockFactory()`.
    """

    def __init__(
        self,
        config: ControlsConfig,
        on_command: Callable[[Command, str], None],
        *,
        long_press_s: float = LONG_PRESS_S,
        bounce_s: float | None = 0.03,
        pin_factory: object | None = None,
    ) -> None:
        self._on_command = on_command
        self._lock = threading.Lock()
        self._state = ActivityState.STARTING
        self._held = False
        self.presses: list[Press] = []
        self.button: Button | None = None
        self.led: LED | PWMLED | None = None
        self.pwm = False
        if config.button_pin is not None:
            try:
                self.button = Button(
                    config.button_pin,
                    pull_up=True,
                    bounce_time=bounce_s,
                    hold_time=long_press_s,
                    pin_factory=pin_factory,
                )
                self.button.when_pressed = self._pressed
                self.button.when_held = self._long_press
                self.button.when_released = self._released
            except (GPIOZeroError, OSError) as exc:
                log.warning("button on GPIO%s unavailable (%s): voice only", config.button_pin, exc)
        if config.led_pin is not None:
            self.led = self._make_led(config.led_pin, pin_factory)
        self.show(ActivityState.STARTING)

    def _make_led(self, pin: int, pin_factory: object | None) -> LED | PWMLED | None:
        try:
            led = PWMLED(pin, pin_factory=pin_factory)
            self.pwm = True
            return led
        except (GPIOZeroError, OSError):
            pass  # no PWM on this pin/factory: blink without fades
        try:
            return LED(pin, pin_factory=pin_factory)
        except (GPIOZeroError, OSError) as exc:
            log.warning("status LED on GPIO%s unavailable (%s)", pin, exc)
            return None

    @property
    def state(self) -> ActivityState:
        return self._state

    def show(self, state: ActivityState) -> None:
        """Set the LED to `state`'s pattern (no-op if it already shows it)."""
        with self._lock:
            if state is self._state and state is not ActivityState.STARTING:
                return
            self._state = state
        if self.led is None:
            return
        pattern = LED_PATTERNS[state]
        if not self.pwm and state is ActivityState.IN_SESSION:
            pattern = _PLAIN_BREATHING
        try:
            if pattern.on_s is None:
                self.led.off()
                if pattern.level > 0:
                    self.led.value = pattern.level if self.pwm else 1
            elif self.pwm:
                self.led.blink(
                    on_time=pattern.on_s,
                    off_time=pattern.off_s,
                    fade_in_time=pattern.fade_s,
                    fade_out_time=pattern.fade_s,
                )
            else:
                self.led.blink(on_time=pattern.on_s, off_time=pattern.off_s)
        except (GPIOZeroError, OSError) as exc:
            log.warning("status LED failed (%s)", exc)

    # gpiozero callbacks: a press starts, may become a long press, then ends.
    def _pressed(self) -> None:
        self._held = False

    def _long_press(self) -> None:
        self._held = True
        self._deliver(Press.LONG)

    def _released(self) -> None:
        if not self._held:
            self._deliver(Press.SHORT)
        self._held = False

    def _deliver(self, press: Press) -> None:
        self.presses.append(press)
        command = command_for_press(press, self._state)
        log.info("button %s press in state %s -> %s", press.value, self._state.value, command)
        if command is not None:
            self._on_command(command, "button")

    def close(self) -> None:
        """Light off and pins released (the service is stopping)."""
        if self.led is not None:
            try:
                self.led.off()  # closing alone leaves a plain pin at its last level
            except (GPIOZeroError, OSError):
                pass
        for device in (self.led, self.button):
            if device is not None:
                try:
                    device.close()
                except (GPIOZeroError, OSError):
                    pass
