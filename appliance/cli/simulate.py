"""`appliance simulate`: the whole programme against the simulated pelvic floor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.cli.common import UserError, add_common_args
from appliance.sensor.simulated import PROFILES, Fault


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a whole simulated training session",
        description="Run the leaflet programme against a simulated pelvic floor and write "
        "DIR/appliance.db, DIR/timeline.jsonl and DIR/session.wav (what the patient would "
        "have heard), printing a live timeline.",
    )
    add_common_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the session's files")
    p.add_argument("--lang", choices=("nl", "en"), default=None, help="language (default: the configuration's)")
    p.add_argument("--patient", choices=sorted(PROFILES), default="average", help="simulated patient profile")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same session)")
    p.add_argument("--say", action="append", default=[], metavar="T:COMMAND",
                   help="say COMMAND at session second T, e.g. --say 95:pause --say 120:resume")
    p.add_argument("--fault", action="append", default=[], choices=[f.value for f in Fault],
                   help="make the patient get the technique wrong now and then")
    p.add_argument("--programme", default="leaflet", help="programme name or TOML file (default: leaflet)")
    p.add_argument("--quiet", action="store_true", help="do not print the live timeline")
    p.add_argument("--via-adc", action="store_true",
                   help="read the simulated pelvic floor through the real probe path: MCP3008/MCP3208 "
                   "chip simulator, gpiozero, ADC sampler and probe (chip, rate and transfer from "
                   "the configuration's [sensor])")
    p.add_argument("--observe", action="store_true",
                   help="let the coach hear the probe's status and the technique warnings "
                   "(push-down, breath-hold, abdominal) read from the pressure curve")
    p.add_argument("--follow-breath", action="store_true",
                   help="time the out-breath cues on the breath read from the probe when it is "
                   "clear (implies --observe; try --patient calm_breather)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.cli.common import device_config
    from appliance.coach.runner import ScriptedCommand
    from appliance.simulation.session import simulate

    config = device_config(args)
    try:
        script = [ScriptedCommand.parse(s) for s in args.say]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    from appliance.voice.output import wav_audio

    # What the patient would have heard, speech and tone mixed, in DIR/session.wav; the
    # coach times its prompts on the rendered phrases.
    lang = args.lang or config.language
    from appliance.voice.speech import SpeechError

    try:
        audio, timing = wav_audio(config.audio, lang, args.out / "session.wav")
    except SpeechError as exc:
        raise UserError(f"cannot render the spoken phrases: {exc}") from None
    result = simulate(
        out_dir=args.out,
        lang=lang,
        patient=args.patient,
        seed=args.seed,
        script=script,
        programme=args.programme,
        faults=[Fault(f) for f in args.fault],
        console=None if args.quiet else sys.stdout,
        extra_sinks=[audio],
        timing=timing,
        via_adc=config.sensor if args.via_adc else None,
        observe=args.observe,
        follow_breath=args.follow_breath,
    )
    audio.close(result.duration_s)
    reps = [e.data for e in result.log.of("rep")]
    complete = sum(r["status"] == "complete" for r in reps)
    print(f"\nsession {result.session.state.value}: {result.duration_s / 60:.1f} min, "
          f"{complete} complete and {len(reps) - complete} partial repetitions; "
          f"files in {args.out}")
    return 0
