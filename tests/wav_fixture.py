"""A short simulated session with a WAV whose bytes depend only on the device's code.

Speech normally comes from espeak-ng through pyttsx3, whose renderings differ by a few
samples from run to run; here every phrase is pre-rendered into the speech cache by a
fixed synthetic voice (a 0.7 s chirp per phrase, the keyword 0.3 s in), so the WAV is
the mixer's work alone: tone, ducking, volume and clip placement.

Run as a script to print the digest of the current checkout:

    PYTHONPATH=/path/to/checkout python tests/wav_fixture.py

The digest in tests/test_offline_render.py was printed this way on main (before the
offline renderer was merged), and must stay what it is while the session's timing and the
tone's synthesis do; when either changes on purpose, print it again on main as it is
before the change that should keep the bytes.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from appliance.config import AudioConfig
from appliance.voice.phrases import Catalogue
from appliance.voice.speech import KEYWORD_MARK, PhraseBank, Rendering, SpeechRenderer

SHORT_PROGRAMME = Path(__file__).parent / "data" / "short_programme.toml"
CLIP_S = 0.7
KEYWORD_S = 0.3


class ChirpVoice:
    """A speech engine that says every phrase as the same 0.7 s chirp (deterministic)."""

    name = "chirp"

    def render(self, marked: str, voice: str, rate_wpm: int, volume: float) -> Rendering:
        rate = 22050
        t = np.arange(int(CLIP_S * rate)) / rate
        x = 0.5 * np.sin(2 * np.pi * (300.0 * t + 400.0 * t * t)) * np.hanning(t.shape[0])
        offset = KEYWORD_S if KEYWORD_MARK in marked else 0.0
        return Rendering((x * 32767).astype(np.int16), rate, offset, self.name)


def chirp_cache(cache: Path, lang: str) -> Path:
    """Every phrase of `lang` in the speech cache at the device's rate, said as a chirp."""
    audio = AudioConfig()
    renderer = SpeechRenderer(cache, engines=[ChirpVoice()])
    bank = PhraseBank(Catalogue.load(lang), renderer, lang=lang, rate_wpm=audio.speech_rate_wpm,
                      sample_rate=audio.sample_rate, volume=1.0)
    bank.prepare()
    return cache


def short_session_wav(work: Path, lang: str = "en", seed: int = 5) -> Path:
    """The short test programme, simulated with session.wav; returns the WAV's path."""
    from appliance.coach.programme import load_programme
    from appliance.simulation.session import simulate

    out = work / "out"
    wav = out / "session.wav"
    simulate(out_dir=out, lang=lang, seed=seed, programme=load_programme(SHORT_PROGRAMME),
             wav_path=wav, speech_cache=chirp_cache(work / "speech", lang))
    return wav


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        wav = short_session_wav(Path(tmp))
        print(digest(wav), wav.stat().st_size, file=sys.stdout)
