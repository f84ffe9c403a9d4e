"""`appliance say PHRASE_KEY`: speak one catalogue phrase on the speaker, or into a WAV file."""

from __future__ import annotations

import argparse
import difflib
import time
from pathlib import Path

from appliance.cli.common import UserError, add_common_args, device_config

LEAD_S = 0.05  # start a moment after the stream opens, so the first syllable is not cut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "say",
        help="speak one phrase from the catalogue",
        description="Speak the phrase PHRASE_KEY (e.g. cue.release) as the device would, "
        "on the loudspeaker or, with --out, into a WAV file. Phrases are rendered once "
        "and cached in ~/.cache/appliance/speech.",
    )
    add_common_args(p)
    p.add_argument("phrase", metavar="PHRASE_KEY", help="catalogue key, e.g. cue.release")
    p.add_argument("--lang", choices=("nl", "en"), default=None, help="language (default: the configuration's)")
    p.add_argument("--out", type=Path, default=None, metavar="WAV", help="write a WAV file instead of playing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.voice.audio import DeviceOutput, Mixer, WavSink, frames_for
    from appliance.voice.output import prepare_speech
    from appliance.voice.phrases import Catalogue
    from appliance.voice.speech import SpeechError
    from appliance.voice.voicepack import pack_for

    config = device_config(args)
    cfg = config.audio
    lang = args.lang or config.language
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        raise UserError(f"--out {args.out}: give a WAV file name in an existing folder"
                        + (" (this is a folder)" if args.out.is_dir() else f" ({args.out.parent} does not exist)"))
    catalogue = Catalogue.load(lang)
    if not catalogue.has(args.phrase):
        near = difflib.get_close_matches(args.phrase, sorted(catalogue.keys()), n=4, cutoff=0.6)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise UserError(f"{catalogue.source} has no phrase {args.phrase!r}{hint}")
    try:
        clip = prepare_speech(lang, cfg, keys=[args.phrase], pack=pack_for(config, lang)).clip(args.phrase)
    except SpeechError as exc:
        raise UserError(f"cannot render {args.phrase!r}: {exc}") from None

    mixer = Mixer(cfg.sample_rate, volume=cfg.volume)
    if args.out is not None:
        with WavSink(args.out, mixer) as wav:
            mixer.schedule(clip.samples, 0, args.phrase)
            wav.render_until(clip.duration_s + 0.1)
        print(f"{clip.text} ({clip.duration_s:.2f} s) -> {args.out}")
        return 0

    output = DeviceOutput(mixer, cfg.output_device, cfg.block_size).start()
    try:
        if not output.wait_open(5.0):
            raise UserError(f"no audio output ({cfg.output_device or 'default device'}): {output.last_error}")
        mixer.schedule(clip.samples, mixer.frame_now() + frames_for(LEAD_S, cfg.sample_rate), args.phrase)
        time.sleep(LEAD_S + clip.duration_s + (output.output_latency_s or 0.0) + 0.2)
    finally:
        output.stop()
    print(clip.text)
    return 0
