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
from appliance.voice.engines import SAMPLE_RATE as ENGINE_RATE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="print the voice commands heard (microphone or WAV), one JSON line each",
        description='Prints {"t": seconds, "command": name, "text": heard, "confidence": x} per '
        "accepted command. Live from the microphone (Ctrl-C ends) unless --wav is given.",
    )
    add_common_args(parser)
    parser.add_argument("--wav", type=Path, metavar="FILE", help="recognize this WAV file instead of the microphone")
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="OUT.wav",
        help="with --wav: the device's own output over the same time (e.g. simulate's session.wav); "
        "the device's echo canceller removes it from the microphone, and the removal is reported",
    )
    parser.add_argument(
        "--clean", type=Path, metavar="FILE", help="with --reference: write the cancelled microphone here"
    )
    parser.add_argument("--lang", choices=("nl", "en"), help="command language (default: the device's)")
    parser.add_argument("--engine", choices=("vosk", "pocketsphinx"), help="recognizer (default: the device's)")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model directory (default: STATE_DIR/models/LANG)")
    parser.set_defaults(func=run)


def read_wav(path: Path, rate: int | None) -> np.ndarray:
    """A PCM WAV file as float32 mono at `rate` (channels averaged, linearly resampled;
    `rate` None: the file's own)."""
    return read_wav_rate(path, rate)[0]


def read_wav_rate(path: Path, rate: int | None) -> tuple[np.ndarray, int]:
    """(samples, rate) of a PCM WAV file, mono float32, resampled to `rate` unless None."""
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
    if rate is None:
        return x, src_rate
    if src_rate != rate:
        n = int(len(x) * rate / src_rate)
        x = np.interp(np.arange(n) * src_rate / rate, np.arange(len(x)), x).astype(np.float32)
    return x, rate


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.asarray(samples) * 32767, -32768, 32767).astype(np.int16)
    try:
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm.tobytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


def cancel_report(mic: np.ndarray, clean: np.ndarray, reference: np.ndarray, ref_rate: int, delay: int | None) -> str:
    """One line: the delay found, and how far the device's sound went down where it sounded
    (the median over 20 ms frames, so the patient's few words do not count)."""
    if delay is None:
        return "echo canceller: no delay found (the reference and the microphone do not match)"
    frame = 320
    k = min(len(mic), len(clean)) // frame
    if not len(reference) or k == 0:
        return "echo canceller: nothing to measure (an empty recording)"
    # 16 kHz microphone sample m hears reference sample m + D: where that reference sounds.
    idx = np.clip((np.arange(k * frame) + delay) * ref_rate // ENGINE_RATE, 0, len(reference) - 1)
    ref_level = np.sqrt(np.mean(reference[idx].reshape(k, frame) ** 2, axis=1))
    sounding = ref_level > 10 ** (-50 / 20)
    if not sounding.any():
        return f"echo canceller: delay {-1000 * delay / ENGINE_RATE:.0f} ms; the device was silent throughout"

    def levels(x: np.ndarray) -> np.ndarray:
        rms = np.sqrt(np.mean(np.square(x[: k * frame], dtype=np.float64).reshape(k, frame), axis=1))
        return 20 * np.log10(np.maximum(rms, 1e-10))

    before, after = levels(mic)[sounding], levels(clean)[sounding]
    return (f"echo canceller: delay {-1000 * delay / ENGINE_RATE:.0f} ms; while the device sounds "
            f"({int(sounding.sum()) * frame / ENGINE_RATE:.1f} s) the microphone median {np.median(before):.1f} dBFS "
            f"-> {np.median(after):.1f} dBFS ({np.median(before - after):.1f} dB removed)")


def run(args: argparse.Namespace) -> int:
    from appliance.voice.echo_cancel import RecordedReference
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

    if args.reference is not None and args.wav is None:
        raise UserError("--reference needs --wav (the microphone recording it was heard in)")
    if args.clean is not None and args.reference is None:
        raise UserError("--clean needs --reference (it writes what the echo canceller leaves)")
    if args.wav is not None:
        samples = read_wav(args.wav, SAMPLE_RATE)
        reference = None
        if args.reference is not None:
            ref, ref_rate = read_wav_rate(args.reference, None)
            reference = RecordedReference(ref, ref_rate)
        vocab = Vocabulary.load(lang)
        try:
            engine = build_engine(engine_name, lang, vocab, model_dir, args.state_dir)
        except EngineUnavailable as exc:
            raise UserError(f"no {engine_name} recognizer for {lang}: {exc}") from None
        detector = CommandDetector(engine, vocab, rules, monitor=reference)
        cleaned: list[np.ndarray] = []
        if detector.echo is not None:
            echo_process = detector.echo.process

            def keep(block: np.ndarray) -> np.ndarray:
                out = echo_process(block)
                cleaned.append(out)
                return out

            detector.echo.process = keep  # type: ignore[method-assign]

        def follow(t_end: float) -> None:
            if reference is not None:
                reference.t = t_end

        for heard in detect_in_samples(detector, samples, before_block=follow):
            emit(heard.as_json_dict())
        if reference is not None and detector.echo is not None:
            clean = np.concatenate(cleaned)[: len(samples)] if cleaned else np.zeros(0)
            print(cancel_report(samples, clean, reference.samples, reference.sample_rate, detector.echo.delay),
                  file=sys.stderr)
            if args.clean is not None:
                write_wav(args.clean, clean, SAMPLE_RATE)
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
    if listener.fallback:
        print(f"{listener.fallback}: listening for English commands", file=sys.stderr)
    heard_lang = listener.detector.vocabulary.lang if listener.detector is not None else lang
    heard_engine = listener.detector.engine.name if listener.detector is not None else engine_name
    print(f"listening ({heard_engine}, {heard_lang}); Ctrl-C ends", file=sys.stderr)
    try:
        while True:
            time.sleep(0.5)
    finally:
        listener.stop()
