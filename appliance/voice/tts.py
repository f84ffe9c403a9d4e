"""Text-to-speech engines behind one small interface: pyttsx3 (espeak-ng's library, word
timings) in a child process with a timeout, and the `espeak-ng` command line behind it.

pyttsx3's espeak driver can hang, hand back an empty or clipped buffer, or keep the
previous rate; each request here has a timeout and two renderings must agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

KEYWORD_MARK = "^"
SILENCE_FRACTION = 0.02  # below this fraction of the peak counts as silence when trimming
# Said on its own, the text before a keyword ends with a drawn-out last syllable. Against
# espeak's own word events (the breath cues of both catalogues, 150 wpm) the bare prefix
# ran 0.07–0.24 s long; taking 0.1 s off puts the fallback within about ±0.15 s there.
# After a prefix of several sentences or a count it can still be ~0.4 s late.
PREFIX_FINAL_LENGTHENING_S = 0.1


class SpeechError(RuntimeError):
    """A phrase could not be rendered by any engine."""


@dataclass(frozen=True)
class Rendering:
    """What an engine produced for one text: 16-bit PCM and where the keyword starts."""

    samples: np.ndarray  # int16, mono
    sample_rate: int
    keyword_offset_s: float  # from the start of `samples`
    engine: str


def split_marker(marked: str) -> tuple[str, int | None]:
    """`"span ^nu aan"` → (`"span nu aan"`, 5): the spoken text and the keyword's index."""
    i = marked.find(KEYWORD_MARK)
    if i < 0:
        return marked, None
    return marked[:i] + marked[i + 1 :].replace(KEYWORD_MARK, ""), i


class SpeechEngine(Protocol):
    """What `SpeechRenderer` needs from a text-to-speech engine (`Pyttsx3Worker`, `EspeakCli`)."""

    @property
    def name(self) -> str: ...

    def render(self, marked: str, voice: str, rate_wpm: int, volume: float) -> Rendering:
        """Speak `marked` into samples; raise `SpeechError` if this engine cannot."""
        ...


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SpeechError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        rate = w.getframerate()
        channels = w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if channels > 1:
        data = data.reshape(-1, channels)[:, 0]
    return data.copy(), rate


def _agree(a: Rendering, b: Rendering) -> bool:
    """Two renderings of one request say the same: speech length within 20 ms, keyword too."""
    a0, a1 = _speech_bounds(a.samples)
    b0, b1 = _speech_bounds(b.samples)
    tolerance = 0.02 * a.sample_rate
    return (
        a.sample_rate == b.sample_rate
        and a1 > a0
        and abs((a1 - a0) - (b1 - b0)) <= tolerance
        and abs(a.keyword_offset_s - b.keyword_offset_s) <= 0.02
    )


def _speech_bounds(samples: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample louder than the silence threshold."""
    mag = np.abs(samples.astype(np.float32))
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0:
        return 0, 0
    loud = np.flatnonzero(mag > SILENCE_FRACTION * peak)
    return int(loud[0]), int(loud[-1]) + 1


class EspeakCli:
    """The `espeak-ng` command line: always there on the device, no word timings."""

    name = "espeak-ng"

    def __init__(self, executable: str = "espeak-ng", timeout_s: float = 20.0) -> None:
        self.executable = executable
        self.timeout_s = timeout_s

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def synth(self, text: str, voice: str, rate_wpm: int, volume: float, path: Path) -> None:
        cmd = [
            self.executable,
            "-v",
            voice,
            "-s",
            str(int(rate_wpm)),
            "-a",
            str(int(round(100 * volume))),
            "-w",
            str(path),
            "--",
            text,
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=self.timeout_s)
        except FileNotFoundError:
            raise SpeechError(f"{self.executable} is not installed") from None
        except subprocess.TimeoutExpired:
            raise SpeechError(f"{self.executable} took over {self.timeout_s} s") from None
        except subprocess.CalledProcessError as exc:
            err = exc.stderr.decode(errors="replace").strip()
            raise SpeechError(f"{self.executable} failed for voice {voice!r}: {err}") from None

    def render(self, marked: str, voice: str, rate_wpm: int, volume: float) -> Rendering:
        text, kw_index = split_marker(marked)
        with tempfile.TemporaryDirectory(prefix="appliance-tts-") as tmp:
            full = Path(tmp) / "full.wav"
            self.synth(text, voice, rate_wpm, volume, full)
            samples, rate = _read_wav(full)
            offset = 0.0
            if kw_index:
                # No word timings from the CLI: the keyword starts where the text before
                # it, spoken on its own, stops sounding.
                prefix = Path(tmp) / "prefix.wav"
                self.synth(text[:kw_index].rstrip(" ,"), voice, rate_wpm, volume, prefix)
                pre, pre_rate = _read_wav(prefix)
                pre_start, pre_end = _speech_bounds(pre)
                full_start, _ = _speech_bounds(samples)
                spoken = (pre_end - pre_start) / pre_rate - PREFIX_FINAL_LENGTHENING_S
                offset = full_start / rate + max(0.0, spoken)
        return Rendering(samples, rate, offset, self.name)


_WORKER_SOURCE = r"""
import contextlib, json, sys
out = sys.stdout
sys.stdout = sys.stderr  # pyttsx3 prints progress; keep the protocol channel clean
try:
    import pyttsx3
    from pyttsx3.drivers import _espeak
    engine = pyttsx3.init("espeak")
    driver = engine.proxy._driver
except Exception as exc:
    out.write(json.dumps({"ok": False, "fatal": True, "error": repr(exc)}) + "\n"); out.flush()
    raise SystemExit(1)
import ctypes, wave
_synth = _espeak.Synth
def _synth_with_phonemes(*args, flags=0, **kwargs):
    # the lexicon's [[phonemes]], as the espeak-ng command line reads them
    return _synth(*args, flags=flags | _espeak.PHONEMES, **kwargs)
_espeak.Synth = _synth_with_phonemes
words = []
chunks = []
original = driver._onSynth
def on_synth(wav, numsamples, events):
    # Word events carry the audio position (ms) the driver does not pass on, and the
    # driver drops the samples that arrive with the end-of-message event (a short
    # phrase came back empty, a long one clipped): keep every sample here.
    i = 0
    while events[i].type != _espeak.EVENT_LIST_TERMINATED:
        ev = events[i]
        if ev.type == _espeak.EVENT_WORD:
            words.append((ev.text_position - 1, ev.length, ev.audio_position))
        i += 1
    if numsamples > 0:
        chunks.append(ctypes.string_at(wav, numsamples * 2))
    return original(wav, numsamples, events)
_keep = _espeak.SetSynthCallback(on_synth)
out.write(json.dumps({"ok": True, "ready": True}) + "\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    words.clear()
    chunks.clear()
    try:
        # engine.setProperty is queued and applied inside runAndWait: under load the
        # previous rate was sometimes still in force (a 200-wpm phrase came out at 110),
        # and a refused voice is swallowed. Set them on the driver, synchronously.
        if _espeak.SetVoiceByName(req["voice"].encode()) != 0:
            raise ValueError("unknown espeak-ng voice " + repr(req["voice"]))
        driver.setProperty("rate", req["rate"])
        driver.setProperty("volume", req["volume"])
        engine.save_to_file(req["text"], req["path"])
        engine.runAndWait()
        with wave.open(req["path"], "wb") as w:  # every sample, not the driver's file
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(22050)  # espeak-ng's voices (the driver assumes it too)
            w.writeframes(b"".join(chunks))
        out.write(json.dumps({"ok": True, "words": words}) + "\n")
    except Exception as exc:
        out.write(json.dumps({"ok": False, "error": repr(exc)}) + "\n")
    out.flush()
"""


class Pyttsx3Worker:
    """pyttsx3 in a child process; each request has a timeout, a hang kills the child."""

    name = "pyttsx3"

    def __init__(self, timeout_s: float = 10.0, python: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.python = python or sys.executable
        self._proc: subprocess.Popen[str] | None = None
        self.last_pid: int | None = None
        self._settings: tuple[str, int, float] | None = None
        self.broken: str | None = None  # why pyttsx3 cannot be used at all

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [self.python, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.last_pid = self._proc.pid
        reply = self._read_reply()
        if not reply.get("ready"):
            self.close()
            self.broken = reply.get("error", "did not start")
            raise SpeechError(f"pyttsx3 unavailable: {self.broken}")

    def _read_reply(self) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        if not ready:
            self.close()
            raise SpeechError(f"pyttsx3 gave no answer within {self.timeout_s} s (killed)")
        line = proc.stdout.readline()
        if not line:
            self.close()
            raise SpeechError("pyttsx3 worker exited")
        return json.loads(line)

    def render(self, marked: str, voice: str, rate_wpm: int, volume: float) -> Rendering:
        """Render until two renderings agree (at most three tries), else refuse.

        On a busy machine the pyttsx3 espeak driver now and then hands back an empty
        buffer, a clipped one, or the phrase at the previous request's rate. Two
        renderings that agree are taken as right; otherwise the caller falls back.
        """
        text, kw_index = split_marker(marked)
        results: list[Rendering] = []
        errors: list[str] = []
        for _ in range(3):
            try:
                r = self._synth(text, kw_index, voice, rate_wpm, volume)
            except SpeechError as exc:
                if self.broken:
                    raise
                errors.append(str(exc))
                self.close()  # the next try in a fresh process: an empty buffer came from this one's driver
                continue
            for other in results:
                if _agree(r, other):
                    return r
            results.append(r)
        detail = "; ".join(errors) if errors else "renderings disagree in length or keyword time"
        raise SpeechError(f"pyttsx3 gave no consistent rendering of {text!r} ({detail})")

    def _synth(self, text: str, kw_index: int | None, voice: str, rate_wpm: int, volume: float) -> Rendering:
        if self.broken:
            raise SpeechError(f"pyttsx3 unavailable: {self.broken}")
        # A worker per voice, rate and volume: in its espeak driver a changed rate can
        # take effect a clause late (a phrase came out half at the previous rate), so a
        # worker never changes them. The bank renders one setting at a time anyway.
        settings = (voice, int(rate_wpm), float(volume))
        if self._proc is not None and self._settings != settings:
            self.close()
        if self._proc is None or self._proc.poll() is not None:
            self._start()
            self._settings = settings
        assert self._proc is not None and self._proc.stdin is not None
        fd, tmp = tempfile.mkstemp(prefix="appliance-tts-", suffix=".wav")
        os.close(fd)
        try:
            request = {"text": text, "voice": voice, "rate": int(rate_wpm), "volume": volume}
            request["path"] = tmp
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._read_reply()
            if not reply.get("ok"):
                raise SpeechError(f"pyttsx3 failed: {reply.get('error')}")
            try:
                samples, rate = _read_wav(Path(tmp))
            except (EOFError, wave.Error) as exc:
                raise SpeechError(f"pyttsx3 wrote no usable audio for {text!r}: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if samples.size == 0:
            raise SpeechError(f"pyttsx3 produced no audio for {text!r} (voice {voice!r})")
        offset = 0.0
        if kw_index:
            starts = [(pos, ms) for pos, _length, ms in reply["words"] if pos >= kw_index]
            if not starts:
                raise SpeechError(f"pyttsx3 reported no word at the keyword of {text!r}")
            offset = min(starts)[1] / 1000.0
        return Rendering(samples, rate, offset, self.name)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
