"""`appliance run`: the device service (appliance.device.appliance on the real edges).

Under systemd (appliance.service) it reports READY once the ready phrase is queued and
feeds the watchdog from its control loop only. `--simulated` runs the same supervisor
on the simulated edges in real time (the simulated patient, mock pins, no sound card).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from appliance.cli.common import UserError, add_common_args, check_programme
from appliance.device.appliance import Appliance, RunOptions
from appliance.device.edges import DeviceEdges, SimulatedEdges
from appliance.device.service import Notifier, Signals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the appliance (the systemd service's command)",
        description="Run the appliance: say it is ready, then run a session whenever the "
        "button is pressed or 'start' is said. Stops on SIGTERM.",
    )
    add_common_args(p)
    p.add_argument("--simulated", action="store_true",
                   help="simulated pelvic floor and mock GPIO pins instead of the hardware")
    p.add_argument("--programme", default=None,
                   help="programme name or TOML file (default: the patient's prescription, "
                   "else the leaflet)")
    p.add_argument("--auto-start", action="store_true", help="start a session as soon as ready")
    p.add_argument("--sessions", type=int, default=None, metavar="N",
                   help="exit after N sessions (tests and benchmarks)")
    p.add_argument("--calibration", default=None, metavar="REST,MVC",
                   help="use this calibration (cmH2O) instead of measuring it (tests, demos)")
    p.add_argument("--events", default=None, metavar="FILE",
                   help="append every event as a JSON line to FILE ('-' for stdout)")
    p.add_argument("--no-audio", action="store_true", help="do not render or play speech")
    p.add_argument("--exit-when-ready", action="store_true",
                   help="exit 0 right after READY (start-up benchmark)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    calibration = None
    if args.calibration:
        from appliance.coach.session import Calibration

        try:
            rest, mvc = (float(x) for x in args.calibration.split(","))
        except ValueError:
            raise UserError(f"--calibration {args.calibration!r}: expected REST,MVC in cmH2O") from None
        if not (math.isfinite(rest) and math.isfinite(mvc) and 0 <= rest < mvc):
            raise UserError(f"--calibration {args.calibration!r}: expected finite REST,MVC in cmH2O "
                            "with 0 <= REST < MVC")
        calibration = Calibration(rest, mvc)
    if args.sessions is not None and args.sessions < 1:
        raise UserError(f"--sessions {args.sessions}: must be at least 1")
    if args.programme is not None:
        check_programme(args.programme)
    options = RunOptions(
        config_path=args.config,
        state_dir=args.state_dir,
        programme=args.programme,
        auto_start=args.auto_start,
        sessions=args.sessions,
        calibration=calibration,
        events=args.events,
        audio=not args.no_audio,
        exit_when_ready=args.exit_when_ready,
    )
    from appliance.clock import RealClock

    edges = SimulatedEdges(clock=RealClock()) if args.simulated else DeviceEdges()
    if not _writable(args.state_dir):
        raise UserError(f"state directory {args.state_dir} is not writable (use --state-dir DIR)")
    signals = Signals()
    signals.install()
    appliance = Appliance(options, edges, Notifier(), signals)
    return appliance.main()


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
