"""`appliance simulate`: the device on a simulated clock, for one session or a lending period."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date
from pathlib import Path

from appliance.cli.common import UserError, add_common_args, check_dir, check_programme
from appliance.sensor.simulated import PROFILES, Fault

MAX_DAYS = 120


def register(sub: argparse._SubParsersAction) -> None:
    from appliance.device.edges import ADHERENCE

    p = sub.add_parser(
        "simulate",
        help="run the device on a simulated clock: one session, or --days N of a lending period",
        description="Run the device (the same supervisor, prescription, plan of the day, health "
        "checks, stimulation and probe observations as `appliance run`) against a simulated "
        "patient on a simulated clock. One session writes DIR/appliance.db, DIR/timeline.jsonl "
        "and DIR/session.wav (what the patient would have heard) and prints a live timeline; "
        "--days N simulates a lending period into --state-dir.",
    )
    add_common_args(p)
    p.set_defaults(state_dir=None)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where to write the session's files (required for one session)")
    p.add_argument("--lang", choices=("nl", "en"), default=None,
                   help="language (default: the prescription's, else the configuration's)")
    p.add_argument("--patient", choices=sorted(PROFILES), default="average", help="simulated patient profile")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same session)")
    p.add_argument("--say", action="append", default=[], metavar="T:COMMAND",
                   help="say COMMAND at session second T, e.g. --say 95:pause --say 120:resume")
    p.add_argument("--fault", action="append", default=[], choices=[f.value for f in Fault],
                   help="make the patient get the technique wrong now and then")
    p.add_argument("--programme", default=None,
                   help="programme name or TOML file (default: the prescription's plan for today, "
                   "else the leaflet)")
    p.add_argument("--quiet", action="store_true", help="do not print the live timeline")
    p.add_argument("--via-adc", action="store_true",
                   help="read the simulated pelvic floor through the real probe path: MCP3008/MCP3208 "
                   "chip simulator, gpiozero, ADC sampler and probe (the configuration's [sensor])")
    p.add_argument("--no-audio", action="store_true",
                   help="do not render speech (no session.wav; phrase durations are estimated)")
    p.add_argument("--days", type=int, default=None, metavar="N",
                   help=f"simulate N days (1..{MAX_DAYS}) of a lending period into --state-dir: "
                   "reminders, main sessions, short sets, weekly progression and PERFECT")
    p.add_argument("--start", default=None, metavar="YYYY-MM-DD",
                   help="first day of the lending period (default: the enrolment day, else today)")
    p.add_argument("--adherence", choices=sorted(ADHERENCE), default="good",
                   help="how the simulated patient keeps to the plan over --days")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.cli.common import device_config
    from appliance.coach.runner import ScriptedCommand

    config = device_config(args)  # refused here with one sentence, before anything is written
    try:
        script = [ScriptedCommand.parse(s) for s in args.say]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.programme is not None:
        check_programme(args.programme)  # refused here in one sentence, not by the device mid-run
    if args.days is not None:
        return _lending(args)
    if not getattr(args, "verbose", False):
        # The live timeline shows what the device says and does; its journal lines would repeat it.
        logging.getLogger("appliance.device").setLevel(logging.ERROR)
    if args.out is None:
        raise UserError("--out DIR is required for one simulated session (or give --days N with --state-dir DIR)")
    check_dir(args.out, "--out")
    if args.state_dir is not None:
        check_dir(args.state_dir, "--state-dir")
    from appliance.simulation.session import SimulationError, simulate
    from appliance.voice.speech import SpeechError, default_cache_dir

    try:
        result = simulate(
            out_dir=args.out,
            lang=args.lang,
            patient=args.patient,
            seed=args.seed,
            script=script,
            programme=args.programme,
            faults=[Fault(f) for f in args.fault],
            console=None if args.quiet else sys.stdout,
            via_adc=config.sensor if args.via_adc else None,
            state_dir=args.state_dir,
            config_path=args.config,
            wav_path=None if args.no_audio else args.out / "session.wav",
            audio=not args.no_audio,
            # A fresh --out is a fresh state directory: its phrases come from the user's speech
            # cache (rendered once per machine), as `appliance say` does; an enrolled state
            # directory keeps its own, as the device does.
            speech_cache=None if args.state_dir is not None else default_cache_dir(),
        )
    except SpeechError as exc:
        raise UserError(f"cannot render the spoken phrases: {exc}") from None
    except SimulationError as exc:
        raise UserError(str(exc)) from None
    if not args.no_audio:
        _note_wav_start(args.out, result)
    reps = [e.data for e in result.log.of("rep")]
    complete = sum(r["status"] == "complete" for r in reps)
    where = f"stored in {args.state_dir}, files in {args.out}" if args.state_dir else f"files in {args.out}"
    print(f"\nsession {result.session.state.value}: {result.duration_s / 60:.1f} min, "
          f"{complete} complete and {len(reps) - complete} partial repetitions; {where}")
    return 0


def _note_wav_start(out: Path, result: object) -> None:
    """Add to timeline.jsonl where the session starts in session.wav: the WAV begins when
    the speaker opens (the device says it is ready, the patient says "start"), the
    timeline's times count from the session's start."""
    import json

    speaker = getattr(getattr(getattr(result, "appliance", None), "edges", None), "speaker", None)
    session = getattr(result, "session", None)
    if speaker is None or session is None:
        return
    line = {"t": round(float(getattr(result, "duration_s", 0.0)), 3), "kind": "wav", "file": "session.wav",
            "session_starts_at_s": round(session.t0 - speaker.t_open, 4)}
    with (out / "timeline.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def _lending(args: argparse.Namespace) -> int:
    from appliance.simulation.lending import simulate_days

    if not getattr(args, "verbose", False):
        logging.getLogger("appliance.device").setLevel(logging.ERROR)

    if not 1 <= args.days <= MAX_DAYS:
        raise UserError(f"--days {args.days}: must be between 1 and {MAX_DAYS}")
    if args.state_dir is None:
        raise UserError("--days needs --state-dir DIR (a state directory, enrolled with "
                        "`appliance clinic enroll` or empty for the leaflet's defaults)")
    check_dir(args.state_dir, "--state-dir")
    first = None
    if args.start is not None:
        try:
            first = date.fromisoformat(args.start)
        except ValueError:
            raise UserError(f"--start {args.start!r}: expected a date as YYYY-MM-DD") from None
    summary = simulate_days(args.state_dir, args.days, first_day=first, adherence=args.adherence,
                            patient=args.patient, seed=args.seed, config_path=args.config,
                            lang=args.lang, out=None if args.quiet else sys.stdout)
    from appliance.clinic.enrolment import current_enrolment

    if current_enrolment(args.state_dir) is not None:
        after = f"`appliance clinic report --state-dir {args.state_dir}` shows what the device did."
    else:  # the leaflet's defaults: the report is the enrolled patient's, and there is none
        after = (f"No patient is enrolled there, so there is no report: enrol one first "
                 f"(`appliance clinic enroll --state-dir {args.state_dir} examples/prescription.toml`, "
                 f"in an empty directory) and simulate again.")
    print(f"\n{summary.days} days simulated in {summary.wall_s:.0f} s: {summary.sessions} sessions "
          f"({summary.main} main, {summary.short_sets} short sets, {summary.perfect} PERFECT), "
          f"{summary.reminders} reminders; stored in {args.state_dir}. {after}")
    return 0
