"""Spoken prompts: every phrase rendered once to PCM, cached on disk, ready for the mixer.

The engines (appliance.voice.tts) render; the cache keeps their renderings; the bank turns
them, or a clinic's recordings (appliance.voice.voicepack), into clips. Nothing here ever
runs in the audio path: the mixer only gets finished numpy arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from appliance.voice import loudness
from appliance.voice.lexicon import lexicon_for
from appliance.voice.tts import (  # re-exported: what callers and tests know speech by
    KEYWORD_MARK,
    EspeakCli,
    Pyttsx3Worker,
    Rendering,
    SpeechEngine,
    SpeechError,
    _read_wav,
    _speech_bounds,
    split_marker,
)

__all__ = ["KEYWORD_MARK", "EspeakCli", "Pyttsx3Worker", "Rendering", "SpeechEngine", "SpeechError",
           "split_marker", "Clip", "PhraseBank", "RenderedTiming", "SpeechRenderer", "marked_text", "to_clip"]

if TYPE_CHECKING:
    from appliance.voice.voicepack import VoicePack

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the rendering or its metadata changes meaning (2: all samples kept)
CLIP_FORMAT = 1  # bump when trimming, levelling or resampling a rendering into a clip changes
PCM_SCALE = 1.0 / 32768.0  # a clip's int16 sample to the mixer's float (a power of two: exact)
WAV_HEADER = 44  # the `wave` module's header for 16-bit mono PCM: the samples follow it
# Clips this long or longer are memory-mapped (only what is played becomes resident); the
# short cues, played again and again anyway, are read: a mapping keeps a file descriptor
# open, and about half of a catalogue's 280 phrases are shorter (6.6 MB of the 42 MB).
MAP_FROM_S = 2.0
VOICES = {"nl": "nl", "en": "en"}  # espeak-ng voice per catalogue language
TRIM_PAD_S = 0.005
RECORDING_PAD_S = 0.03  # a recording keeps a breath of its room either side of the speech
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


@dataclass(frozen=True)
class Clip:
    """A phrase ready for the mixer: mono at the mixer's rate, silence trimmed.

    `pcm` is what the mixer plays, by reference: int16 (full scale 32768), memory-mapped
    from the speech cache when the clip came from there and is not a short cue (only the
    pages played become resident), or float samples in [-1, 1] (a test's, a tool's). `samples` is a float32
    copy, for analysis and for players that want floats.
    """

    key: str
    text: str
    pcm: np.ndarray
    sample_rate: int
    keyword_offset_s: float

    @property
    def samples(self) -> np.ndarray:
        if self.pcm.dtype.kind == "f":
            return self.pcm
        x = self.pcm.astype(np.float32)
        x *= PCM_SCALE
        return x

    @property
    def duration_s(self) -> float:
        return self.pcm.shape[0] / self.sample_rate


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

    def clip(self, key: str, text: str, marked: str, voice: str, rate_wpm: int, volume: float,
             sample_rate: int) -> Clip:
        """The phrase as a mixer clip at `sample_rate`: from the clip cache (int16, memory-mapped),
        else rendered (or its rendering loaded), trimmed, levelled, resampled and kept there."""
        spoken = lexicon_for(voice).apply(marked)
        digest = self.cache_key(spoken, voice, rate_wpm, volume)
        clip_id = hashlib.sha256(json.dumps(
            [CLIP_FORMAT, digest, int(sample_rate), TRIM_PAD_S, loudness.TARGET_DBFS, loudness.LIMIT_KNEE]
        ).encode()).hexdigest()[:32]
        wav_path = self.cache_dir / f"{clip_id}.wav"
        meta_path = self.cache_dir / f"{clip_id}.json"
        with self._lock:
            cached = _map_clip(key, text, wav_path, meta_path, sample_rate)
            if cached is not None:
                self.cache_hits += 1
                return cached
        clip = to_clip(key, text, self.render(marked, voice, rate_wpm, volume), sample_rate)
        with self._lock:
            try:
                _store_clip(clip, wav_path, meta_path, marked, digest)
            except OSError as exc:  # a full or read-only disk: play it from memory
                log.warning("speech cache: clip %s not kept (%s)", wav_path, exc)
                return clip
            return _map_clip(key, text, wav_path, meta_path, sample_rate) or clip

    def speech_frames(self, marked: str, voice: str, rate_wpm: int, volume: float = 1.0) -> tuple[int, int, int]:
        """(first, one-past-last sample of the speech, sample rate) of a rendering: from the
        cache's metadata when it has them (no samples read), else from the samples."""
        digest = self.cache_key(lexicon_for(voice).apply(marked), voice, rate_wpm, volume)
        try:
            meta = json.loads((self.cache_dir / f"{digest}.json").read_text())
            start, end = meta["speech_frames"]
            if (self.cache_dir / f"{digest}.wav").exists():
                return int(start), int(end), int(meta["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        r = self.render(marked, voice, rate_wpm, volume)
        start, end = _speech_bounds(r.samples)
        return start, end, r.sample_rate

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
            "speech_frames": list(_speech_bounds(r.samples)),
        }
        tmp_meta = meta_path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta, ensure_ascii=False))
        os.replace(tmp_meta, meta_path)

    def close(self) -> None:
        for engine in self.engines:
            close = getattr(engine, "close", None)
            if close:
                close()


def _store_clip(clip: Clip, wav_path: Path, meta_path: Path, marked: str, rendering: str) -> None:
    """Keep a clip in the cache: 16-bit WAV (samples right after the plain 44-byte header, so
    they can be mapped) and its metadata (the catalogue's text, which is how the wipe tells
    catalogue speech from the rest), both write-then-rename."""
    tmp_wav = wav_path.with_suffix(".wav.tmp")
    with wave.open(str(tmp_wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(clip.sample_rate)
        w.writeframes(np.ascontiguousarray(clip.pcm, dtype="<i2").tobytes())
    os.replace(tmp_wav, wav_path)
    meta = {"text": marked, "clip_of": rendering, "keyword_offset_s": clip.keyword_offset_s,
            "sample_rate": clip.sample_rate, "frames": int(clip.pcm.shape[0])}
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False))
    os.replace(tmp_meta, meta_path)


def _map_clip(key: str, text: str, wav_path: Path, meta_path: Path, sample_rate: int) -> Clip | None:
    """A cached clip, its samples memory-mapped read-only (None if absent or not as written)."""
    if not (wav_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        frames = int(meta["frames"])
        if int(meta["sample_rate"]) != sample_rate or frames <= 0:
            raise ValueError(f"sample rate {meta['sample_rate']}, {frames} frames")
        with open(wav_path, "rb") as fh:
            header = fh.read(WAV_HEADER)
            if (len(header) != WAV_HEADER or header[:4] != b"RIFF" or header[36:40] != b"data"
                    or int.from_bytes(header[40:44], "little") != 2 * frames
                    or os.fstat(fh.fileno()).st_size < WAV_HEADER + 2 * frames):
                raise ValueError("not the 16-bit mono WAV the cache writes")
            if frames < MAP_FROM_S * sample_rate:  # a short cue: read (bytes are read-only too)
                data: bytes | mmap.mmap = fh.read(2 * frames)
            else:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        pcm = np.frombuffer(data, dtype="<i2", count=frames, offset=0 if isinstance(data, bytes) else WAV_HEADER)
        return Clip(key, text, pcm, sample_rate, float(meta["keyword_offset_s"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("speech cache clip %s unreadable (%s); making it again", wav_path, exc)
        return None


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
    """Trimmed samples at the common loudness and the mixer's rate, as read-only int16."""
    y = loudness.resample(loudness.normalise(x, rate), rate, sample_rate)
    y *= 32768.0
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    pcm = y.astype(np.int16)
    pcm.setflags(write=False)  # shared by reference with the audio thread
    return Clip(key, text, pcm, sample_rate, keyword_offset_s)


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
        return self.renderer.clip(key, self.catalogue.text(key), marked, self.voice, self._synth_rate(key, rate_wpm),
                                  self.volume, self.sample_rate)

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
            start, end, rate = self.renderer.speech_frames(marked, self.voice, rate_wpm, self.volume)
            if end <= start:
                return rate_wpm
            heard = 60.0 * len(WORD.findall(self.catalogue.text(key))) * rate / (end - start)
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
