"""A test voice pack spoken by flite, a voice the project itself never uses.

A cue's recording is flite's prefix and flite's keyword part joined with a short gap, so
where its keyword starts in the file is known exactly (`truth`), independently of the
device's own alignment.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from appliance.voice.loudness import speech_bounds
from appliance.voice.phrases import Catalogue
from appliance.voice.voicepack import read_recording

# What a short English postop session says (the rest falls back to the synthesizer).
SESSION_KEYS = (
    "session.welcome", "session.start", "session.done",
    "calibrate.intro_gentle", "calibrate.rest", "calibrate.squeeze_gentle", "calibrate.squeeze_release",
    "calibrate.again_gentle", "calibrate.done_gentle",
    "caution.postop", "caution.catheter", "caution.low_belly_pressure", "caution.breathe",
    "caution.five_moments", "caution.see_doctor",
    "exercise.awareness.title", "exercise.awareness.position", "exercise.awareness.relax",
    "exercise.awareness.explain",
    "cue.inhale", "cue.breathe_in", "cue.squeeze_awareness", "cue.exhale_contract", "cue.release",
    "cue.last_rep",
)
LEAD_S, GAP_S, TAIL_S = 0.2, 0.04, 0.3


def flite(text: str, path: Path) -> tuple[np.ndarray, int]:
    subprocess.run(["flite", "-t", text, "-o", str(path)], check=True, capture_output=True, timeout=60)
    rec = read_recording(path, path.stem)
    return rec.samples, rec.sample_rate


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())


def make_flite_pack(directory: Path, keys: tuple[str, ...] = SESSION_KEYS, lang: str = "en") -> dict[str, float]:
    """Record `keys` with flite into `directory`; returns each cue's true keyword time (s)."""
    directory.mkdir(parents=True, exist_ok=True)
    cat = Catalogue.load(lang)
    truth: dict[str, float] = {}
    scratch = directory / "scratch"
    scratch.mkdir(exist_ok=True)
    for key in keys:
        prefix = cat.keyword_prefix(key)
        text = cat.text(key)
        if not prefix:
            flite(text, directory / f"{key}.wav")
            continue
        a, rate = flite(prefix.strip(" ,"), scratch / "a.wav")
        b, _ = flite(text[len(prefix):], scratch / "b.wav")
        a0, a1 = speech_bounds(a, rate)
        b0, b1 = speech_bounds(b, rate)
        lead, gap = np.zeros(int(LEAD_S * rate)), np.zeros(int(GAP_S * rate))
        x = np.concatenate([lead, a[a0:a1], gap, b[b0:b1], np.zeros(int(TAIL_S * rate))])
        truth[key] = (lead.size + (a1 - a0) + gap.size) / rate
        write_wav(directory / f"{key}.wav", x, rate)
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()
    (directory / "voice.toml").write_text(
        f'language = "{lang}"\nspeaker = "flite (kal), a test voice"\nlicence = "flite licence (BSD-like)"\n'
        "date = 2026-12-07\n")
    return truth
