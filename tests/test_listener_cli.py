"""`appliance listen --wav`: one JSON line per accepted command, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from pulse_fixture import FLITE_EN, have_tools, normalize_level, synthesize

pytestmark = pytest.mark.skipif(not have_tools("flite", "sox"), reason="flite and sox needed")


def listen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "listen", *args], capture_output=True, text=True, timeout=120
    )


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)  # a stereo file at another rate: the CLI mixes down and resamples
        w.setsampwidth(2)
        w.setframerate(rate)
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        w.writeframes(np.repeat(pcm, 2).tobytes())


def test_a_recording_of_two_commands_prints_two_json_lines(tmp_path):
    gap = np.zeros(16000, np.float32)
    pause = normalize_level(synthesize("pause", FLITE_EN[0]), 0.1)
    stop = normalize_level(synthesize("stop", FLITE_EN[1]), 0.1)
    x = np.concatenate([gap, pause, gap, stop, gap])
    x = x + np.random.default_rng(0).normal(0, 0.003, len(x)).astype(np.float32)
    n = int(len(x) * 22050 / 16000)
    x22 = np.interp(np.arange(n) * 16000 / 22050, np.arange(len(x)), x)
    write_wav(tmp_path / "two.wav", x22, 22050)
    out = listen("--wav", str(tmp_path / "two.wav"), "--lang", "en", "--engine", "pocketsphinx")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["command"] for line in lines] == ["pause", "stop"]
    assert set(lines[0]) == {"t", "command", "text", "confidence"}
    pause_end = (16000 + len(pause)) / 16000
    assert pause_end < lines[0]["t"] < pause_end + 0.6
    assert lines[1]["t"] > lines[0]["t"] + 1.0


def test_without_a_model_it_says_so_in_one_sentence(tmp_path):
    write_wav(tmp_path / "s.wav", np.zeros(1600), 16000)
    out = listen("--wav", str(tmp_path / "s.wav"), "--lang", "nl", "--engine", "vosk", "--model", str(tmp_path / "no"))
    assert out.returncode == 2
    assert "no vosk recognizer for nl" in out.stderr and "no Vosk model" in out.stderr


def test_a_file_that_is_not_a_wav_is_named(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    out = listen("--wav", str(bad), "--lang", "en", "--engine", "pocketsphinx")
    assert out.returncode == 2
    assert str(bad) in out.stderr and "not a PCM WAV" in out.stderr
