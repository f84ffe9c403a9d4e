"""Spoken prompts: every phrase rendered once to PCM, cached on disk, ready for the mixer.

pyttsx3 (espeak-ng voices) renders in a child process with a timeout, because its espeak
driver can hang; the `espeak-ng` command line is the fallback. Nothing here ever runs in
the audio path: the mixer only gets finished numpy arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from appliance.voice import loudness
from appliance.voice.lexicon import lexicon_for

if TYPE_CHECKING:
    from appliance.voice.voicepack import VoicePack

log = logging.getLogger(__name__)

KEYWORD_MARK = "^"
CACHE_FORMAT = 2  # bump when the rendering or its metadata changes meaning (2: all samples kept)
VOICES = {"nl": "nl", "en": "en"}  # espeak-ng voice per catalogue language
SILENCE_FRACTION = 0.02  # below this fraction of the peak counts as silence when trimming
TRIM_PAD_S = 0.005
RECORDING_PAD_S = 0.03  # a recording keeps a breath of its room either side of the speech
# Said on its own, the text before a keyword ends with a drawn-out last syllable. Against
# espeak's own word events (the breath cues of both catalogues, 150 wpm) the bare prefix
# ran 0.07–0.24 s long; taking 0.1 s off puts the fallback within about ±0.15 s there.
# After a prefix of several sentences or a count it can still be ~0.4 s late.
PREFIX_FINAL_LENGTHENING_S = 0.1
# Long instructions are heard at this rate (words per minute as heard, at the plain pace):
# 130-150 suits older listeners. Cues timed on the breath keep the plain rate.
INSTRUCTION_WPM = 140
INSTRUCTION_WORDS = 8
MIN_SYNTH_WPM, MAX_SYNTH_WPM = 80, 260
ANNOUNCE_FROM = 10  # rendering this many phrases takes long enough to say so
WORD = re.compile(r"\w+")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "appliance" / "speech"


class SpeechError(RuntimeError):
    """A phrase could not be rendered by any engine."""


@dataclass(frozen=True)
class Rendering:
    """What an engine produced for one text: 16-bit PCM and where the keyword starts."""

    samples: np.ndarray  # int16, mono
    sample_rate: int
    keyword_offset_s: float  # from the start of `samples`
    engine: str


@dataclass(frozen=True)
class Clip:
    """A phrase ready for the mixer: float32 mono at the mixer's rate, silence trimmed."""

    key: str
    text: str
    samples: np.ndarray
    sample_rate: int
    keyword_offset_s: float

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def split_marker(marked: str) -> tuple[str, int | None]:
    """`"span ^nu aan"` → (`"span nu aan"`, 5): the spoken text and the keyword's index."""
    i = marked.find(KEYWORD_MARK)
    if i < 0:
        return marked, None
    return marked[:i] + marked[i + 1 :].replace(KEYWORD_MARK, ""), i


# --- engines -----------------------------------------------------------------------------------


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


# --- the cache -------------------------------------------------------------------------------


class SpeechRenderer:
    """Text → `Rendering`, through an on-disk cache keyed by text, voice, rate and volume.

    pyttsx3 first; if it fails or hangs, the espeak-ng command line. Thread-safe (one
    rendering at a time), so the coach can re-render at a new pace in the background.
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        *,
        timeout_s: float = 10.0,
        engines: list[SpeechEngine] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.engines: list[SpeechEngine] = (
            engines
            if engines is not None
            else [
                Pyttsx3Worker(timeout_s=timeout_s),
                EspeakCli(timeout_s=2 * timeout_s),
            ]
        )
        self.cache_hits = 0
        self.renders = 0
        self._fell_back: set[str] = set()  # engines that failed a phrase (noted once each)
        self._lock = threading.Lock()

    @staticmethod
    def cache_key(marked: str, voice: str, rate_wpm: int, volume: float) -> str:
        ident = json.dumps([CACHE_FORMAT, marked, voice, int(rate_wpm), round(float(volume), 3)])
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def render(self, marked: str, voice: str, rate_wpm: int, volume: float = 1.0) -> Rendering:
        # The lexicon's phonemes are what is rendered (and keyed); the cache's metadata keeps
        # the catalogue's text, which is how the wipe tells catalogue speech from the rest.
        spoken = lexicon_for(voice).apply(marked)
        digest = self.cache_key(spoken, voice, rate_wpm, volume)
        wav_path = self.cache_dir / f"{digest}.wav"
        meta_path = self.cache_dir / f"{digest}.json"
        with self._lock:
            cached = self._load(wav_path, meta_path)
            if cached is not None:
                self.cache_hits += 1
                return cached
            rendering = self._render_fresh(spoken, voice, rate_wpm, volume)
            self._store(rendering, wav_path, meta_path, marked, voice, rate_wpm, volume)
            self.renders += 1
            return rendering

    def _render_fresh(self, marked: str, voice: str, rate_wpm: int, volume: float) -> Rendering:
        errors = []
        for engine in self.engines:
            try:
                return engine.render(marked, voice, rate_wpm, volume)
            except SpeechError as exc:
                # The next engine usually can: a note in the journal, not a warning on screen,
                # and only the first time (a missing pyttsx3 fails every phrase alike).
                first = engine.name not in self._fell_back
                self._fell_back.add(engine.name)
                log.log(logging.INFO if first else logging.DEBUG,
                        "%s could not render %r (%s); the next engine renders it%s", engine.name,
                        split_marker(marked)[0], exc, " (and any other such phrase)" if first else "")
                errors.append(f"{engine.name}: {exc}")
        raise SpeechError(f"no engine could render {split_marker(marked)[0]!r} with voice {voice!r}: {errors}")

    def is_cached(self, marked: str, voice: str, rate_wpm: int, volume: float = 1.0) -> bool:
        digest = self.cache_key(lexicon_for(voice).apply(marked), voice, rate_wpm, volume)
        return (self.cache_dir / f"{digest}.wav").exists() and (self.cache_dir / f"{digest}.json").exists()

    @staticmethod
    def _load(wav_path: Path, meta_path: Path) -> Rendering | None:
        if not (wav_path.exists() and meta_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            samples, rate = _read_wav(wav_path)
            return Rendering(samples, rate, float(meta["keyword_offset_s"]), meta["engine"])
        except (OSError, ValueError, KeyError, EOFError, wave.Error, SpeechError) as exc:
            log.warning("speech cache entry %s unreadable (%s); rendering again", wav_path, exc)
            return None

    @staticmethod
    def _store(
        r: Rendering,
        wav_path: Path,
        meta_path: Path,
        marked: str,
        voice: str,
        rate_wpm: int,
        volume: float,
    ) -> None:
        # Write-then-rename so a power cut never leaves a half clip in the cache.
        tmp_wav = wav_path.with_suffix(".wav.tmp")
        with wave.open(str(tmp_wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(r.sample_rate)
            w.writeframes(r.samples.astype(np.int16).tobytes())
        os.replace(tmp_wav, wav_path)
        meta = {
            "text": marked,
            "voice": voice,
            "rate_wpm": int(rate_wpm),
            "volume": volume,
            "engine": r.engine,
            "keyword_offset_s": r.keyword_offset_s,
            "sample_rate": r.sample_rate,
        }
        tmp_meta = meta_path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta, ensure_ascii=False))
        os.replace(tmp_meta, meta_path)

    def close(self) -> None:
        for engine in self.engines:
            close = getattr(engine, "close", None)
            if close:
                close()


def to_clip(key: str, text: str, r: Rendering, sample_rate: int) -> Clip:
    """Trim silence, normalise loudness and resample a rendering for the mixer."""
    start, end = _speech_bounds(r.samples)
    if end <= start:
        raise SpeechError(f"phrase {key!r} rendered as silence")
    pad = int(TRIM_PAD_S * r.sample_rate)
    start = max(0, start - pad)
    end = min(r.samples.shape[0], end + pad)
    x = r.samples[start:end].astype(np.float32) / 32768.0
    offset = max(0.0, r.keyword_offset_s - start / r.sample_rate)
    return finish_clip(key, text, x, r.sample_rate, offset, sample_rate)


def finish_clip(key: str, text: str, x: np.ndarray, rate: int, keyword_offset_s: float, sample_rate: int) -> Clip:
    """Trimmed samples at the common loudness and the mixer's rate, read-only."""
    x = loudness.resample(loudness.normalise(x, rate), rate, sample_rate)
    x.setflags(write=False)  # shared by reference with the audio thread
    return Clip(key, text, x, sample_rate, keyword_offset_s)


def recorded_clip(key: str, text: str, samples: np.ndarray, rate: int, keyword_offset_s: float,
                  sample_rate: int) -> Clip:
    """A clinic's recording as a mixer clip: room silence trimmed (frames more than 40 dB
    below the loudest), then levelled and resampled like the synthesizer's clips."""
    start, end = loudness.speech_bounds(samples, rate)
    if end <= start:
        raise SpeechError(f"the recording of {key!r} is silent")
    pad = int(RECORDING_PAD_S * rate)
    start = max(0, start - pad)
    end = min(samples.shape[0], end + pad)
    offset = min(max(0.0, keyword_offset_s - start / rate), (end - start) / rate)
    return finish_clip(key, text, samples[start:end], rate, offset, sample_rate)


# --- the phrases of a session --------------------------------------------------------------


class PhraseSource(Protocol):
    """What the bank needs from a phrase catalogue (appliance.voice.phrases.Catalogue)."""

    def text(self, key: str) -> str: ...

    def keyword_prefix(self, key: str) -> str | None: ...

    def keys(self) -> Any: ...


def marked_text(catalogue: PhraseSource, key: str) -> str:
    """The catalogue's text with the keyword marker put back where it was."""
    text = catalogue.text(key)
    prefix = catalogue.keyword_prefix(key)
    if prefix is None or prefix == text or not text.startswith(prefix):
        return text
    return prefix + KEYWORD_MARK + text[len(prefix) :]


class PhraseBank:
    """The phrases of one language, rendered at the patient's speech rate, as mixer clips.

    `prepare()` renders everything before the session starts; `set_rate()` re-renders in
    the background and swaps the whole set at once, so a prompt never waits on synthesis.
    With a voice pack its recordings are spoken where it has them (they keep their pace),
    the synthesizer elsewhere.
    """

    def __init__(
        self,
        catalogue: PhraseSource,
        renderer: SpeechRenderer,
        *,
        lang: str,
        rate_wpm: int,
        sample_rate: int,
        volume: float = 1.0,
        pack: VoicePack | None = None,
        instruction_wpm: int = INSTRUCTION_WPM,
    ) -> None:
        voice = getattr(catalogue, "voice", None) or VOICES.get(lang)
        if not voice:
            raise ValueError(f"no speech voice for language {lang!r} (known: {sorted(VOICES)})")
        if pack is not None and pack.language != lang:
            raise ValueError(f"voice pack {pack.directory} is {pack.language!r}, not {lang!r}")
        self.catalogue = catalogue
        self.renderer = renderer
        self.lang = lang
        self.voice = voice
        self.rate_wpm = int(rate_wpm)
        self.sample_rate = int(sample_rate)
        self.volume = volume
        self.pack = pack
        self.base_rate_wpm = int(rate_wpm)
        self.instruction_wpm = int(instruction_wpm)
        self._heard_per_asked: dict[str, float] = {}
        self._announced = False
        self._clips: dict[str, Clip] = {}
        self._recorded: dict[str, Clip] = {}
        self._unusable: dict[str, str] = {}  # key -> why its recording is not spoken
        self._rerender: threading.Thread | None = None

    def _render(self, key: str, rate_wpm: int) -> Clip:
        recorded = self._recording(key)
        if recorded is not None:
            return recorded
        marked = marked_text(self.catalogue, key)
        r = self.renderer.render(marked, self.voice, self._synth_rate(key, rate_wpm), self.volume)
        return to_clip(key, self.catalogue.text(key), r, self.sample_rate)

    def _is_instruction(self, key: str) -> bool:
        """A long explanation, not a cue timed on the breath (those keep the plain rate)."""
        raw = getattr(self.catalogue, "raw", self.catalogue.text)(key)  # with its ^ if it has one
        return KEYWORD_MARK not in raw and len(WORD.findall(raw)) >= INSTRUCTION_WORDS

    def _synth_rate(self, key: str, rate_wpm: int) -> int:
        """The rate to ask the synthesizer for, so that a long instruction is heard at
        `instruction_wpm` (scaled with the patient's pace like everything else).

        espeak-ng's rate setting is not what is heard: pauses at commas and full stops
        and long words made long phrases come out at 96-223 wpm for one setting. Each
        instruction is rendered once at the plain rate and measured; the ratio found
        sets the rate asked for from then on.
        """
        if not self._is_instruction(key) or (self.pack is not None and self.pack.has(key)
                                             and key not in self._unusable):
            return rate_wpm  # a cue, or a recording: the synthesizer's rate does not matter
        ratio = self._heard_per_asked.get(key)
        if ratio is None:
            marked = marked_text(self.catalogue, key)
            r = self.renderer.render(marked, self.voice, rate_wpm, self.volume)
            start, end = _speech_bounds(r.samples)
            if end <= start:
                return rate_wpm
            heard = 60.0 * len(WORD.findall(self.catalogue.text(key))) * r.sample_rate / (end - start)
            ratio = heard / rate_wpm
            self._heard_per_asked[key] = ratio
        target = self.instruction_wpm * rate_wpm / self.base_rate_wpm
        # in 5-wpm steps: the pyttsx3 worker restarts for every new rate
        return int(5 * round(min(max(target / ratio, MIN_SYNTH_WPM), MAX_SYNTH_WPM) / 5))

    def _in_rate_order(self, keys: list[str], rate_wpm: int) -> list[str]:
        """`keys` grouped by the rate they are rendered at (instructions measured first)."""
        return sorted(keys, key=lambda k: self._synth_rate(k, rate_wpm))

    def _announce_first_rendering(self, keys: list[str]) -> None:
        """On a fresh machine rendering a catalogue takes a while: say so once, on one line."""
        if self._announced:
            return
        recorded = self.pack.keys() if self.pack is not None else set()
        todo = [k for k in keys if k not in recorded
                and not self.renderer.is_cached(marked_text(self.catalogue, k), self.voice, self.rate_wpm, self.volume)]
        if len(todo) >= ANNOUNCE_FROM:
            self._announced = True
            log.warning("first run: rendering %d %s phrases once (kept in %s), this takes a minute or two",
                        len(todo), self.lang, self.renderer.cache_dir)

    def _recording(self, key: str) -> Clip | None:
        """The pack's recording of `key` as a clip, or None (none, or unusable: logged once)."""
        if self.pack is None or key in self._unusable:
            return None
        clip = self._recorded.get(key)
        if clip is not None:
            return clip
        if not self.pack.has(key):
            self._unusable[key] = "not recorded"
            return None
        from appliance.voice.voicepack import PackError, align_keyword

        try:
            rec = self.pack.recording(key)
            offset = self.pack.info.keyword_offsets.get(key)
            marked = marked_text(self.catalogue, key)
            if offset is None and marked.find(KEYWORD_MARK) > 0:
                # The synthesizer knows where its keyword is; the warp finds it in the recording.
                ref = self.renderer.render(marked, self.voice, self.rate_wpm, self.volume)
                offset = align_keyword(rec.samples, rec.sample_rate, ref.samples.astype(np.float32) / 32768.0,
                                       ref.sample_rate, ref.keyword_offset_s)
            clip = recorded_clip(key, self.catalogue.text(key), rec.samples, rec.sample_rate, offset or 0.0,
                                 self.sample_rate)
        except (PackError, SpeechError) as exc:
            self._unusable[key] = str(exc)
            log.error("voice pack recording of %s not used, the synthesizer says it: %s", key, exc)
            return None
        self._recorded[key] = clip
        return clip

    def fallback_keys(self) -> list[str]:
        """The catalogue's phrases the synthesizer speaks although a voice pack is in use."""
        if self.pack is None:
            return []
        recorded = self.pack.keys()
        return sorted(k for k in self.catalogue.keys() if k not in recorded or k in self._unusable)

    def prepare(self, keys: Any = None) -> int:
        """Render (or load from cache) `keys`, default every phrase; returns how many."""
        wanted = list(self.catalogue.keys() if keys is None else keys)
        self._announce_first_rendering([k for k in wanted if k not in self._clips])
        clips = dict(self._clips)
        for key in self._in_rate_order([k for k in wanted if k not in clips], self.rate_wpm):
            if key not in clips:
                clips[key] = self._render(key, self.rate_wpm)
        self._clips = clips
        return len(wanted)

    def has(self, key: str) -> bool:
        return key in self._clips

    def clip(self, key: str) -> Clip:
        clip = self._clips.get(key)
        if clip is None:
            log.warning("phrase %r was not prepared; rendering it now", key)
            clip = self._render(key, self.rate_wpm)
            self._clips = {**self._clips, key: clip}
        return clip

    def set_rate(self, rate_wpm: int, *, wait: bool = False) -> None:
        """Re-render every prepared phrase at `rate_wpm`, then swap them in at once."""
        rate_wpm = int(rate_wpm)
        if rate_wpm == self.rate_wpm:
            return

        def work() -> None:
            try:
                clips = {key: self._render(key, rate_wpm) for key in self._in_rate_order(list(self._clips), rate_wpm)}
            except SpeechError as exc:
                log.error("speech rate %d wpm not applied: %s", rate_wpm, exc)
                return
            self._clips = clips
            self.rate_wpm = rate_wpm
            log.info("speech rate now %d wpm", rate_wpm)

        if wait:
            work()
            return
        self._rerender = threading.Thread(target=work, name="speech-rerender", daemon=True)
        self._rerender.start()

    def wait_idle(self, timeout: float | None = None) -> None:
        if self._rerender is not None:
            self._rerender.join(timeout)


class RenderedTiming:
    """Phrase timing measured on the rendered audio (the coach's `PhraseTiming`)."""

    def __init__(self, bank: PhraseBank) -> None:
        self.bank = bank

    def duration(self, key: str) -> float:
        return self.bank.clip(key).duration_s

    def keyword_offset(self, key: str) -> float:
        return self.bank.clip(key).keyword_offset_s
