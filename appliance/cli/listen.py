"""`appliance listen`: hear commands from the microphone or a WAV file, one JSON line each."""

from __future__ import annotations

import argparse
import json
import sys
import time
import wave
from pathlib import Path

import numpy as np

from appliance.cli.common import UserError, add_common_args, device_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="print the voice commands heard (microphone or WAV), one JSON line each",
        description='Prints {"t": seconds, "command": name, "text": heard, "confidence": x} per '
        "accepted command. Live from the microphone (Ctrl-C ends) unless --wav is given.",
    )
    add_common_args(parser)
    parser.add_argument("--wav", type=Path, metavar="FILE", help="recognize this WAV file instead of the microphone")
    parser.add_argument("--lang", choices=("nl", "en"), help="command language (default: the device's)")
    parser.add_argument("--engine", choices=("vosk", "pocketsphinx"), help="recognizer (default: the device's)")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model directory (default: STATE_DIR/models/LANG)")
    parser.set_defaults(func=run)


def read_wav(path: Path, rate: int) -> np.ndarray:
    """A PCM WAV file as float32 mono at `rate` (channels averaged, linearly resampled)."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, src_rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise UserError(f"{path}: not a PCM WAV file ({exc})") from None
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise UserError(f"{path}: {8 * width}-bit samples are not supported (use 8, 16 or 32-bit PCM)")
    x: np.ndarray = np.frombuffer(frames, dtype=dtypes[width]).astype(np.float32)
    x = (x - 128) / 128 if width == 1 else x / float(2 ** (8 * width - 1))
    x = x.reshape(-1, channels).mean(axis=1)
    if src_rate != rate:
        n = int(len(x) * rate / src_rate)
        x = np.interp(np.arange(n) * src_rate / rate, np.arange(len(x)), x).astype(np.float32)
    return x


def run(args: argparse.Namespace) -> int:
    from appliance.voice.engines import EngineUnavailable
    from appliance.voice.listener import (
        SAMPLE_RATE,
        AcceptanceRules,
        CommandDetector,
        Listener,
        Vocabulary,
        build_engine,
        detect_in_samples,
    )

    config = device_config(args)
    lang = args.lang or config.language
    engine_name = args.engine or config.voice.engine
    model_dir = args.model or (config.voice.model_dir if lang == config.language else None)
    rules = AcceptanceRules(min_confidence=config.voice.min_confidence)

    def emit(heard) -> None:
        print(json.dumps(heard, ensure_ascii=False), flush=True)

    if args.wav is not None:
        samples = read_wav(args.wav, SAMPLE_RATE)
        vocab = Vocabulary.load(lang)
        try:
            engine = build_engine(engine_name, lang, vocab, model_dir, args.state_dir)
        except EngineUnavailable as exc:
            raise UserError(f"no {engine_name} recognizer for {lang}: {exc}") from None
        for heard in detect_in_samples(CommandDetector(engine, vocab, rules), samples):
            emit(heard.as_json_dict())
        return 0

    t0 = time.monotonic()

    def on_command(cmd, text, confidence) -> None:  # the listener's thread
        t = round(time.monotonic() - t0, 3)
        emit({"t": t, "command": cmd.value, "text": text, "confidence": round(confidence, 3)})

    listener = Listener(
        on_command,
        lang,
        engine_name,
        model_dir,
        rules=rules,
        input_device=config.voice.input_device,
        state_dir=args.state_dir,
    )
    if not listener.start():
        raise UserError(listener.reason)
    print(f"listening ({engine_name}, {lang}); Ctrl-C ends", file=sys.stderr)
    try:
        while True:
            time.sleep(0.5)
    finally:
        listener.stop()
