"""`appliance voice check DIR` and `appliance voice record DIR --lang nl`: a clinic's own voice.

`check` says whether a voice pack can speak to patients (exit 1 naming the keys when not);
`record` walks a physiotherapist through every sentence of the catalogue with a microphone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.cli.common import UserError
from appliance.voice.loudness import TARGET_DBFS

RECORD_RATE = 48000  # what a laptop's or USB microphone gives natively; the device resamples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "voice",
        help="check or record a clinic's voice pack (recorded phrases instead of the synthesizer)",
        description="A voice pack is a folder with voice.toml (language, speaker, licence, date) and one "
        "<phrase key>.wav per sentence. Name it in the configuration ([speech] voice_pack) and the "
        "device speaks its recordings, the synthesizer for any sentence it lacks.",
    )
    actions = p.add_subparsers(dest="voice_command", metavar="ACTION", required=True)
    c = actions.add_parser("check", help="is the pack fit to speak to patients?",
                           description="Report coverage of the catalogue, clipping, loudness, silence "
                           "and recordings whose length does not fit the sentence. Exit 1, naming the "
                           "keys, when a recording must not be spoken.")
    c.add_argument("pack", type=Path, metavar="DIR", help="the voice pack folder")
    c.add_argument("--missing", action="store_true", help="list every phrase the pack lacks")
    c.add_argument("--complete", action="store_true",
                   help="also fail when a phrase is missing (the synthesizer would say it)")
    c.set_defaults(func=run_check)
    r = actions.add_parser("record", help="record the catalogue's sentences, one by one",
                           description="Shows (and with --speak says) each sentence, records it from the "
                           "microphone until Enter, trims the silence, levels it and lets you keep it or "
                           "record it again. Sentences already in DIR are skipped unless --redo names them.")
    r.add_argument("pack", type=Path, metavar="DIR", help="the voice pack folder (created if needed)")
    r.add_argument("--lang", choices=("nl", "en"), required=True, help="the catalogue to record")
    r.add_argument("--redo", action="append", default=[], metavar="KEY",
                   help="record KEY again (repeat for several); only these are recorded")
    r.add_argument("--only", default=None, metavar="PREFIX",
                   help="only the phrases whose key starts with PREFIX, e.g. cue.")
    r.add_argument("--speaker", default=None, help="who speaks (written to voice.toml)")
    r.add_argument("--licence", default=None, help="licence of the recordings (written to voice.toml)")
    r.add_argument("--speak", action="store_true", help="say each sentence with the synthesizer first")
    r.add_argument("--input-device", default=None, metavar="NAME", help="microphone (default: the system's)")
    r.set_defaults(func=run_record)


# --- check ----------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    from appliance.voice.packcheck import check_pack

    if not args.pack.is_dir():
        raise UserError(f"{args.pack}: not a folder (a voice pack is a folder with voice.toml)")
    report = check_pack(args.pack)
    if report.info is None:
        raise UserError(report.pack_problems[0])
    info = report.info
    print(f"voice pack {report.directory}: {info.language}, {info.speaker}, {info.date}, licence {info.licence}")
    total = len(report.catalogue_keys)
    usable = [k for k, c in report.checks.items() if not c.problems]
    fall_back = total - len(usable)
    print(f"  coverage   {len(usable)} of {total} phrases recorded and usable; "
          f"{fall_back} fall back to the synthesizer")
    if args.missing and report.missing:
        print("  missing    " + ", ".join(report.missing))
    if report.checks:
        lo, hi = report.level_spread_db()
        print(f"  loudness   {lo:.1f} to {hi:.1f} dBFS active level (spread {hi - lo:.1f} dB); "
              f"the device levels every phrase to {TARGET_DBFS:.0f} dBFS")
        leads = [c.lead_s for c in report.checks.values()]
        trails = [c.trail_s for c in report.checks.values()]
        print(f"  silence    {min(leads):.2f}-{max(leads):.2f} s before, {min(trails):.2f}-{max(trails):.2f} s "
              "after the speech")
    for key, c in sorted(report.checks.items()):
        for note in c.notes:
            print(f"  note       {key}: {note}")
    problems = [f"{k}: {p}" for k, c in sorted(report.checks.items()) for p in c.problems]
    problems += [f"{k}.wav: no phrase has this key (a typo?)" for k in report.unknown]
    problems += report.pack_problems
    for line in problems:
        print(f"  problem    {line}")
    if not report.usable:
        keys = report.unusable
        named = ", ".join(keys) if keys else "voice.toml"
        print(f"unusable: {named}")
        return 1
    if args.complete and report.missing:
        print(f"incomplete: {len(report.missing)} phrases missing (--missing lists them)")
        return 1
    print("usable" + ("" if not report.missing else f" (the synthesizer says the {len(report.missing)} missing)"))
    return 0


# --- record ---------------------------------------------------------------------------------


@dataclass
class Studio:
    """The physiotherapist's side of a recording session: what is shown, asked, heard, recorded.

    `record()` returns one take (float samples, rate), from the microphone until Enter;
    tests pass their own.
    """

    show: Callable[[str], None]
    ask: Callable[[str], str]
    record: Callable[[], tuple[np.ndarray, int]]
    speak: Callable[[str], None] | None = None
    play: Callable[[np.ndarray, int], None] | None = None


def write_take(path: Path, x: np.ndarray, rate: int) -> None:
    tmp = path.with_suffix(".wav.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes())
    tmp.replace(path)


def ensure_info(pack: Path, lang: str, speaker: str | None, licence: str | None, studio: Studio) -> None:
    """voice.toml: kept when it is there (its language must be `lang`), else written."""
    from appliance.config import ConfigError
    from appliance.voice.voicepack import INFO_FILE, read_info

    pack.mkdir(parents=True, exist_ok=True)
    if (pack / INFO_FILE).exists():
        try:
            info = read_info(pack)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        if info.language != lang:
            raise UserError(f"{pack / INFO_FILE}: language = {info.language!r}, but --lang {lang}")
        return
    speaker = speaker or studio.ask("Who speaks (name, role)? ").strip() or "unnamed"
    licence = licence or studio.ask("Licence of the recordings (e.g. 'for this clinic's devices')? ").strip() \
        or "unstated"
    (pack / INFO_FILE).write_text(
        f'language = "{lang}"\nspeaker = {_toml_str(speaker)}\nlicence = {_toml_str(licence)}\n'
        f"date = {dt.date.today().isoformat()}\n", encoding="utf-8")


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def walk(pack: Path, lang: str, keys: list[str], studio: Studio) -> int:
    """Record `keys` one by one into `pack`; returns how many were kept."""
    from appliance.voice.packcheck import check_recording, tidy_take
    from appliance.voice.phrases import Catalogue
    from appliance.voice.voicepack import Recording

    catalogue = Catalogue.load(lang)
    kept = 0
    for i, key in enumerate(keys, 1):
        text = catalogue.text(key)
        while True:
            studio.show(f"\n[{i}/{len(keys)}] {key}\n    {text}")
            if studio.speak is not None:
                studio.speak(key)
            answer = studio.ask("Enter: record   s: skip   q: stop > ").strip().lower()
            if answer == "q":
                return kept
            if answer == "s":
                break
            raw, rate = studio.record()
            take = tidy_take(raw, rate)
            check = check_recording(Recording(key, take, rate, 1, pack / f"{key}.wav"), text)
            verdict = "; ".join(check.problems) if check.problems else "fine"
            studio.show(f"    {check.speech_s:.1f} s of speech (about {check.expected_s:.1f} s expected), "
                        f"{check.level_dbfs:.0f} dBFS before levelling: {verdict}")
            if studio.play is not None:
                studio.play(take, rate)
            answer = studio.ask("Enter: keep   r: record again   s: skip > ").strip().lower()
            if answer == "r":
                continue
            if answer != "s":
                write_take(pack / f"{key}.wav", take, rate)
                kept += 1
            break
    return kept


class Microphone:
    """One take from the microphone: recording starts now and stops when Enter is pressed."""

    def __init__(self, device: str | None, ask: Callable[[str], str], rate: int = RECORD_RATE) -> None:
        self.device = device
        self.ask = ask
        self.rate = rate

    def __call__(self) -> tuple[np.ndarray, int]:
        import sounddevice as sd

        blocks: list[np.ndarray] = []

        def keep(indata, frames, time, status) -> None:  # noqa: ARG001 - PortAudio's signature
            blocks.append(indata[:, 0].copy())

        try:
            with sd.InputStream(samplerate=self.rate, channels=1, dtype="float32", device=self.device,
                                callback=keep):
                self.ask("    recording... Enter to stop ")
        except sd.PortAudioError as exc:
            raise UserError(f"no microphone to record from ({self.device or 'the default input'}: {exc}); "
                            "connect one or name it with --input-device") from None
        return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), self.rate


def _speaker(lang: str) -> tuple[Callable[[str], None], Callable[[np.ndarray, int], None]]:
    import sounddevice as sd

    from appliance.config import AudioConfig
    from appliance.voice.output import prepare_speech

    cfg = AudioConfig()

    def speak(key: str) -> None:
        clip = prepare_speech(lang, cfg, keys=[key]).clip(key)
        sd.play(clip.samples, clip.sample_rate)
        sd.wait()

    def play(x: np.ndarray, rate: int) -> None:
        sd.play(x, rate)
        sd.wait()

    return speak, play


def run_record(args: argparse.Namespace) -> int:
    from appliance.voice.phrases import Catalogue

    catalogue = Catalogue.load(args.lang)
    for key in args.redo:
        if not catalogue.has(key):
            raise UserError(f"--redo {key}: {catalogue.source} has no such phrase")
    if args.pack.exists() and not args.pack.is_dir():
        raise UserError(f"{args.pack}: exists and is not a folder")
    if args.redo:
        keys = list(args.redo)
    else:
        keys = [k for k in sorted(catalogue.keys()) if not (args.pack / f"{k}.wav").exists()]
    if args.only:
        keys = [k for k in keys if k.startswith(args.only)]
    speak = play = None
    if args.speak:
        speak, play = _speaker(args.lang)
    studio = Studio(show=print, ask=input, record=Microphone(args.input_device, input), speak=speak, play=play)
    ensure_info(args.pack, args.lang, args.speaker, args.licence, studio)
    if not keys:
        print(f"every phrase of {catalogue.source.name} is in {args.pack}; --redo KEY records one again")
        return 0
    print(f"{len(keys)} sentences to record into {args.pack}; q stops, what is kept stays kept.")
    try:
        kept = walk(args.pack, args.lang, keys, studio)
    except EOFError:
        kept = -1
    print(f"\n`appliance voice check {args.pack}` says whether the pack is ready"
          + (f" ({kept} kept this time)." if kept >= 0 else "."))
    return 0
