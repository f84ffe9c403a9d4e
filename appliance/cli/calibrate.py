"""`appliance calibrate`: zero the probe, insert it, measure rest and MVC, store the Oxford band.

The voice-guided Modified Oxford procedure (best of three maximal squeezes held 3–5 s), run
at the clinic or at home; the steps live in `appliance.device.calibration`.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.cli.common import UserError, add_common_args, device_config

if TYPE_CHECKING:
    from appliance.clock import Clock

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="zero the probe and measure rest pressure, MVC and Oxford grade",
        description="Voice-guided: zero the probe at atmosphere, insert it, measure the resting "
        "pressure, then three maximal squeezes of 3-5 s (Modified Oxford). Stores MVC and the "
        "Oxford band in STATE_DIR/probe.toml. With --two-point, measure the sensor against two "
        "known pressures instead (clinic, reference manometer or water column).",
    )
    add_common_args(p)
    p.add_argument("--lang", choices=("nl", "en"), default=None, help="language (default: the configuration's)")
    p.add_argument("--simulate", metavar="PROFILE", default=None,
                   help="use a simulated patient (weak, average, strong, postop) read through the "
                   "simulated ADC, instead of the probe")
    p.add_argument("--seed", type=int, default=0, help="random seed for --simulate")
    p.add_argument("--two-point", metavar="LOW:HIGH", default=None,
                   help="two-point sensor calibration at LOW and HIGH cmH2O (asks you to apply each)")
    p.set_defaults(func=run)


def _text_voice(lang: str) -> Callable[[str], float]:
    from appliance.voice.phrases import Catalogue

    catalogue = Catalogue.load(lang)

    def say(key: str) -> float:
        print(f"  » {catalogue.text(key)}")
        return 0.0

    return say


def run(args: argparse.Namespace) -> int:
    from appliance.device.calibration import CalibrationError

    try:
        return _run(args)
    except CalibrationError as exc:
        raise UserError(str(exc)) from None


def _two_point_args(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"--two-point {text!r}: expected LOW:HIGH in cmH2O, e.g. 0:50") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"--two-point {text!r}: LOW and HIGH must be finite pressures in cmH2O")
    if not high > low:
        raise UserError(f"--two-point {text}: HIGH must be above LOW")
    return low, high


def _run(args: argparse.Namespace) -> int:
    from appliance.device import calibration as cal

    config = device_config(args)
    lang = args.lang or config.language
    if args.two_point:
        low, high = _two_point_args(args.two_point)
        _, summary = cal.two_point(config, args.state_dir, low, high, input)
        print(summary)
        return 0
    closers = []
    clock: Clock
    say: Callable[[str], float]
    if args.simulate:
        from appliance.clock import SimClock

        clock = SimClock()
        probe, floor, state = cal.simulated_probe(config, args.simulate, args.seed, clock)
        text = _text_voice(lang)

        def say_and_note_insertion(key: str) -> float:
            if key == "probe.insert":
                state["inserted_at"] = clock.now() + 3.0
            text(key)
            return 0.0

        say = say_and_note_insertion

        phase = floor.emit
    else:
        from appliance.clock import RealClock
        from appliance.sensor.probe import open_probe

        if config.sensor.source != "adc":
            raise UserError(f"{config.source}: sensor.source is {config.sensor.source!r}; "
                            "calibrate needs the probe (source = \"adc\") or --simulate PROFILE")
        clock = RealClock()
        probe = open_probe(config.sensor, clock, args.state_dir)
        try:
            say, close_voice = cal.speaker_voice(lang, config.audio, _text_voice(lang))
            closers.append(close_voice)
        except Exception as exc:  # no speaker: the clinician reads the prompts instead
            log.warning("speaking on the terminal only: %s", exc)
            say = _text_voice(lang)
        phase = None
    closers.append(probe.close)
    try:
        result = cal.CalibrationProcedure(probe, clock, say, phase).run()
    finally:
        for close in reversed(closers):
            close()
    path = cal.store_result(args.state_dir, result)
    squeezes = ", ".join(f"{p:.1f}" for p in result.squeezes_cmh2o)
    print(f"rest {result.rest_cmh2o:.1f} cmH2O above atmosphere; squeezes {squeezes} cmH2O; "
          f"MVC {result.mvc_cmh2o:.1f} cmH2O above rest: Oxford band {result.oxford_band}; saved to {path}")
    return 0
