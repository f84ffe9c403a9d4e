"""A clinic's recorded voice: a folder of `<phrase key>.wav` files and a `voice.toml`.

The device speaks a pack's recordings where it has them and the synthesizer elsewhere.
A cue's keyword time comes from `voice.toml` or from aligning the recording against the
synthesizer's rendering of the same sentence (dynamic time warping on cepstra).

    # voice.toml
    language = "nl"
    speaker = "An, kinesitherapeut"
    licence = "CC BY 4.0"
    date = 2026-12-07
    [keywords]            # optional: seconds from the start of the file to the keyword
    "cue.release" = 0.62
"""

from __future__ import annotations

import datetime as dt
import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from appliance.config import ConfigError, read_toml
from appliance.voice.loudness import resample

if TYPE_CHECKING:
    from appliance.config import DeviceConfig

log = logging.getLogger(__name__)

INFO_FILE = "voice.toml"
LANGUAGES = ("nl", "en")
REQUIRED = ("language", "speaker", "licence", "date")
MAX_RECORDING_S = 60.0

# Alignment features: 25 ms windows every 10 ms at 16 kHz, 24 mel bands, cepstra 1-12.
ALIGN_RATE = 16000
HOP_S = 0.010
WINDOW_S = 0.025
MEL_BANDS = 24
CEPSTRA = 12
PAUSE_DB = 35.0  # frames this far below the loudest are a pause between words
ONSET_SEARCH_S = 0.25


class PackError(ValueError):
    """A recording that cannot be used; says which file and why."""


@dataclass(frozen=True)
class PackInfo:
    """What `voice.toml` says about the pack."""

    language: str
    speaker: str
    licence: str
    date: str
    keyword_offsets: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recording:
    """One phrase as recorded: float samples in -1..1 (first channel), its rate, channel count."""

    key: str
    samples: np.ndarray
    sample_rate: int
    channels: int
    path: Path

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def read_info(directory: Path) -> PackInfo:
    """`voice.toml` of the pack in `directory`; `ConfigError` names the file, key and value."""
    path = directory / INFO_FILE
    if not directory.is_dir():
        raise ConfigError(directory, "(folder)", str(directory), "is not a voice pack folder")
    data = read_toml(path)
    for key in REQUIRED:
        if key not in data:
            raise ConfigError(path, key, None, f"is required (a voice pack says {', '.join(REQUIRED)})")
    known = (*REQUIRED, "keywords")
    for key in data:
        if key not in known:
            raise ConfigError(path, key, data[key], f"unknown key (known: {', '.join(known)})")
    language = data["language"]
    if language not in LANGUAGES:
        raise ConfigError(path, "language", language, f"must be one of {', '.join(map(repr, LANGUAGES))}")
    for key in ("speaker", "licence"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ConfigError(path, key, data[key], "must be text")
    date = data["date"]
    if isinstance(date, dt.date):
        date = date.isoformat()
    elif isinstance(date, str):
        try:
            date = dt.date.fromisoformat(date).isoformat()
        except ValueError:
            raise ConfigError(path, "date", date, "must be a date (YYYY-MM-DD)") from None
    else:
        raise ConfigError(path, "date", date, "must be a date (YYYY-MM-DD)")
    keywords = data.get("keywords", {})
    if not isinstance(keywords, dict):
        raise ConfigError(path, "keywords", keywords, "must be a table of phrase key = seconds")
    offsets: dict[str, float] = {}
    for key, value in keywords.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= MAX_RECORDING_S:
            raise ConfigError(path, f"keywords.{key}", value,
                              f"must be the keyword's start in seconds from the start of {key}.wav")
        offsets[str(key)] = float(value)
    return PackInfo(language, data["speaker"], data["licence"], date, offsets)


def read_recording(path: Path, key: str) -> Recording:
    """A WAV file of any rate as float samples; `PackError` says why it cannot be used."""
    try:
        with wave.open(str(path), "rb") as w:
            width = w.getsampwidth()
            rate = w.getframerate()
            channels = w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise PackError(f"{path}: not a readable PCM WAV file ({exc})") from None
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        data = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    elif width == 4:
        data = (np.frombuffer(raw, dtype="<i4") / float(1 << 31)).astype(np.float32)
    else:
        raise PackError(f"{path}: {8 * width}-bit samples are not supported (use 16-bit PCM)")
    if channels > 1:
        data = data.reshape(-1, channels)[:, 0]
    if data.size == 0:
        raise PackError(f"{path}: holds no audio")
    if data.shape[0] / rate > MAX_RECORDING_S:
        raise PackError(f"{path}: {data.shape[0] / rate:.0f} s long; a phrase is at most {MAX_RECORDING_S:.0f} s")
    return Recording(key, data.copy(), rate, channels, path)


@dataclass(frozen=True)
class VoicePack:
    """A recorded voice for one language: `voice.toml` and a WAV per phrase key."""

    directory: Path
    info: PackInfo

    @classmethod
    def load(cls, directory: str | Path) -> VoicePack:
        directory = Path(directory)
        return cls(directory, read_info(directory))

    @property
    def language(self) -> str:
        return self.info.language

    def keys(self) -> set[str]:
        """The phrase keys that have a recording (whatever the catalogue says)."""
        return {p.stem for p in self.directory.glob("*.wav") if p.is_file()}

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.wav"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def recording(self, key: str) -> Recording:
        return read_recording(self.path(key), key)

    def describe(self) -> str:
        return f"{self.directory} ({self.info.language}, {self.info.speaker}, {self.info.date})"


# --- finding the keyword in a recording ------------------------------------------------------


def _mel_filterbank(n_fft: int, rate: int, bands: int) -> np.ndarray:
    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(100.0), mel(min(7000.0, rate / 2)), bands + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    fb = np.zeros((bands, freqs.shape[0]))
    for i in range(bands):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    return fb


def cepstra(x: np.ndarray, rate: int) -> np.ndarray:
    """Mel cepstra 1..12 per 10 ms frame, mean and variance normalised (speaker-neutral-ish)."""
    x = resample(x, rate, ALIGN_RATE).astype(np.float64)
    win = int(WINDOW_S * ALIGN_RATE)
    hop = int(HOP_S * ALIGN_RATE)
    if x.shape[0] < win:
        x = np.pad(x, (0, win - x.shape[0]))
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])  # pre-emphasis
    n = 1 + (x.shape[0] - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx] * np.hamming(win)
    n_fft = 512
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    logmel = np.log(power @ _mel_filterbank(n_fft, ALIGN_RATE, MEL_BANDS).T + 1e-10)
    k = np.arange(MEL_BANDS)
    dct = np.cos(np.pi / MEL_BANDS * (k[None, :] + 0.5) * np.arange(1, CEPSTRA + 1)[:, None])
    c = logmel @ dct.T
    delta = np.gradient(c, axis=0) if c.shape[0] > 1 else np.zeros_like(c)
    c = np.hstack([c, delta])
    c -= c.mean(axis=0)
    c /= c.std(axis=0) + 1e-6
    return c


def warp_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each frame of `a`, the last frame of `b` it is matched to (symmetric DTW)."""
    sq = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    cost = np.sqrt(np.maximum(sq, 0.0))
    n, m = cost.shape
    total = np.empty((n, m))
    total[0] = np.cumsum(cost[0])
    for i in range(1, n):
        # from below or diagonally, then any run along the row: a cumulative minimum
        prev = total[i - 1]
        t = cost[i] + np.minimum(prev, np.concatenate(([np.inf], prev[:-1])))
        run = np.cumsum(cost[i])
        total[i] = run + np.minimum.accumulate(t - run)
    path = np.zeros(n, dtype=np.int64)
    i, j = n - 1, m - 1
    path[i] = j
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
            continue
        if j == 0:
            i -= 1
            path[i] = 0
            continue
        moves = (total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
        k = int(np.argmin(moves))
        if k == 0:
            i, j = i - 1, j - 1
            path[i] = j
        elif k == 1:
            i -= 1
            path[i] = j
        else:
            j -= 1
    return path


def align_keyword(recording: np.ndarray, rate: int, reference: np.ndarray, ref_rate: int,
                  ref_keyword_s: float) -> float:
    """Where the reference's keyword (at `ref_keyword_s`) falls in the recording, in seconds.

    Both are trimmed to their speech first; the warp maps the reference's keyword frame to
    the first recording frame matched to it or later.
    """
    from appliance.voice.loudness import speech_bounds

    r0, r1 = speech_bounds(recording, rate)
    s0, s1 = speech_bounds(reference, ref_rate)
    if r1 <= r0 or s1 <= s0:
        return 0.0
    a = cepstra(recording[r0:r1], rate)
    b = cepstra(reference[s0:s1], ref_rate)
    path = warp_path(a, b)
    # The synthesizer's word event can fall in the pause before its keyword: take the
    # keyword's first sound, there and again in the recording (a longer pause there).
    ref_keyword_s = sound_onset(reference, ref_rate, ref_keyword_s)
    ref_frame = (ref_keyword_s - s0 / ref_rate) / HOP_S
    if ref_frame <= 0:
        return r0 / rate
    hits = np.flatnonzero(path >= ref_frame)
    frame = int(hits[0]) if hits.size else path.shape[0] - 1
    return sound_onset(recording, rate, r0 / rate + frame * HOP_S)


def sound_onset(x: np.ndarray, rate: int, t: float) -> float:
    """`t`, or if `t` falls in a pause, where the sound starts again (at most ONSET_SEARCH_S on)."""
    from appliance.voice.loudness import frame_db

    db = frame_db(x, rate, HOP_S)
    quiet = db.max() - PAUSE_DB
    i = int(t / HOP_S)
    last = min(db.shape[0], i + int(ONSET_SEARCH_S / HOP_S))
    j = i
    while j < last and db[j] < quiet:
        j += 1
    return t if j >= last else max(t, j * HOP_S)


def pack_for(config: DeviceConfig, lang: str) -> VoicePack | None:
    """The voice pack the configuration names for `lang`, or None (the synthesizer speaks).

    A pack that can no longer be read is logged and left out: the synthesizer speaks.
    """
    from appliance.config import voice_pack_dirs

    try:
        folder = voice_pack_dirs(config.speech, config.source).get(lang)
        return VoicePack.load(folder) if folder is not None else None
    except ConfigError as exc:  # checked when the configuration was read; gone since
        log.error("voice pack not used, the synthesizer speaks: %s", exc)
        return None
