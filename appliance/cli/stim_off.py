"""`appliance stim-off`: drive the stimulation line low, whoever held it last.

systemd runs it as the service's ExecStopPost, so the line is low after any exit of
`appliance run`: a crash, SIGKILL, a watchdog kill or a normal stop. It drives the line
low whatever the configuration says: if the configuration cannot be read, it uses the
`[controls] stim_pin` it can still find in the file, else the documented default
(GPIO22), and says so. Exit 0 when a pin was driven low.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import warnings
from pathlib import Path

from appliance.cli.common import add_common_args, device_config
from appliance.config import ControlsConfig

DEFAULT_PIN = ControlsConfig().stim_pin  # the documented default, from the one place it is set


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stim-off", help="drive the stimulation line low (the service's ExecStopPost)",
                       description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--pin", type=int, default=None, help="BCM pin (default: [controls] stim_pin)")
    p.set_defaults(func=run)


def _salvaged_pin(path: Path | None) -> int | None:
    """`[controls] stim_pin` from a configuration that failed to load, if it is a plain pin number."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            pin = tomllib.load(fh).get("controls", {}).get("stim_pin")
    except (OSError, ValueError, AttributeError):  # unreadable, not UTF-8, not TOML, not a table
        return None
    if isinstance(pin, int) and not isinstance(pin, bool) and 0 <= pin <= 27:
        return pin
    return None


def choose_pin(args: argparse.Namespace) -> tuple[int, str]:
    """The pin to drive low and, if it is not the configured one, one sentence saying why."""
    if args.pin is not None:
        return args.pin, ""
    try:
        return device_config(args).controls.stim_pin, ""
    except Exception as exc:  # noqa: BLE001 -- whatever is wrong, the line still goes low
        path = getattr(args, "config", None)
        why = " ".join(str(exc).split()) or type(exc).__name__
        pin = _salvaged_pin(path)
        if pin is not None:
            return pin, (f"stim-off: the configuration {path} could not be loaded ({why}); "
                         f"used its [controls] stim_pin = {pin}")
        return DEFAULT_PIN, (f"stim-off: the configuration {path} could not be loaded ({why}); "
                             f"fell back to the documented stim pin GPIO{DEFAULT_PIN}")


def _drive_low(pin: int, pin_factory) -> None:
    from gpiozero.exc import PinFactoryFallback

    from appliance.stim import drive_low

    with warnings.catch_warnings():  # gpiozero's multi-line notes of each library it tried
        warnings.simplefilter("ignore", PinFactoryFallback)
        drive_low(pin, pin_factory=pin_factory)


def run(args: argparse.Namespace, pin_factory=None) -> int:
    pin, fallback = choose_pin(args)
    if fallback:
        print(fallback, file=sys.stderr)
    try:
        _drive_low(pin, pin_factory)
    except Exception as exc:  # noqa: BLE001 -- one sentence, never a traceback
        print(f"stim-off: could not drive GPIO{pin} low: {exc}", file=sys.stderr)
        if pin == DEFAULT_PIN:
            return 1
        try:  # the configured pin failed: the documented one is the last resort
            _drive_low(DEFAULT_PIN, pin_factory)
        except Exception as exc2:  # noqa: BLE001
            print(f"stim-off: could not drive GPIO{DEFAULT_PIN} low either: {exc2}", file=sys.stderr)
            return 1
        print(f"stimulation line GPIO{DEFAULT_PIN} (the documented default) driven low")
        return 0
    print(f"stimulation line GPIO{pin} driven low")
    return 0
