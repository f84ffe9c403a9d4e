"""`appliance stim-off`: drive the stimulation line low, whoever held it last.

systemd runs it as the service's ExecStopPost, so the line is low after any exit of
`appliance run`: a crash, SIGKILL, a watchdog kill or a normal stop.
"""

from __future__ import annotations

import argparse

from appliance.cli.common import add_common_args, device_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stim-off", help="drive the stimulation line low (the service's ExecStopPost)",
                       description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--pin", type=int, default=None, help="BCM pin (default: [controls] stim_pin)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, pin_factory=None) -> int:
    from appliance.stim import drive_low

    pin = args.pin if args.pin is not None else device_config(args).controls.stim_pin
    drive_low(pin, pin_factory=pin_factory)
    print(f"stimulation line GPIO{pin} driven low")
    return 0
