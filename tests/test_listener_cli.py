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


def _device_output(seconds: float, rate: int = 22050) -> np.ndarray:
    """What a real Mixer renders while the feedback tone glides over its range (220-880 Hz)."""
    from appliance.voice.audio import Mixer
    from appliance.voice.tone import ToneCue, ToneParams

    mixer = Mixer(rate, volume=1.0)
    out = []
    while mixer.frame_now() < seconds * rate:
        t = mixer.frame_now() / rate
        hz = 220.0 * 4 ** (0.5 - 0.5 * np.cos(2 * np.pi * t / 6.0))  # 220 -> 880 -> 220 Hz in 6 s
        mixer.set_tone(ToneParams(float(hz), 0.5, ToneCue.FOLLOW))
        block = np.zeros(512)
        mixer.render(block)
        out.append(block)
    return np.concatenate(out)


def test_the_echo_canceller_takes_the_devices_own_tone_out_of_a_recording(tmp_path):
    """The patient says "stop" over the device's tone, as loud as the word (0 dB), 120 ms late
    through a small room: with the device's output as the reference the canceller finds the
    delay, removes the tone and the word is heard; without it the tone buries it."""
    out22 = np.concatenate([_device_output(8.0), np.zeros(22050)])  # the tone, then quiet
    write_wav(tmp_path / "out.wav", out22, 22050)
    n16 = int(len(out22) * 16000 / 22050)
    leak = np.fft.irfft(np.fft.rfft(out22)[: n16 // 2 + 1], n16) * n16 / len(out22)
    room = np.zeros(960)  # direct sound and a 60 ms diffuse tail 3 dB below it
    tail = np.random.default_rng(5).normal(0.0, 1.0, 944) * 10 ** (-3 * np.arange(944) / 944)
    room[0], room[16:] = 1.0, tail * np.sqrt(0.5 / np.sum(tail**2))
    leak = np.concatenate([np.zeros(int(0.12 * 16000)), np.convolve(leak, room)])[:n16]
    stop = normalize_level(synthesize("stop", FLITE_EN[0]), 0.1)
    at = 4 * 16000
    mic = leak * 0.1 / np.sqrt(np.mean(leak[16000 : 8 * 16000] ** 2))  # 0 dB: the tone as loud as the word
    mic[at : at + len(stop)] += stop
    mic += np.random.default_rng(1).normal(0, 0.003, len(mic))
    write_wav(tmp_path / "mic.wav", mic, 16000)

    args = ["--wav", str(tmp_path / "mic.wav"), "--lang", "en", "--engine", "pocketsphinx"]
    cancelled = listen(*args, "--reference", str(tmp_path / "out.wav"), "--clean", str(tmp_path / "clean.wav"))
    assert cancelled.returncode == 0, cancelled.stderr
    assert [json.loads(line)["command"] for line in cancelled.stdout.splitlines()] == ["stop"]
    report = cancelled.stderr.strip().splitlines()[-1]
    delay_ms = float(report.split("delay ")[1].split(" ms")[0])
    removed_db = float(report.split("(")[-1].split(" dB removed")[0])
    assert 100 <= delay_ms <= 160, report  # 120 ms, plus the resampler's few ms
    assert removed_db >= 15, report
    with wave.open(str(tmp_path / "clean.wav")) as w:
        assert w.getframerate() == 16000 and abs(w.getnframes() - len(mic)) < 800

    uncancelled = listen(*args)
    assert [json.loads(line)["command"] for line in uncancelled.stdout.splitlines()] != ["stop"]


def test_a_reference_without_a_recording_is_refused_in_one_sentence(tmp_path):
    write_wav(tmp_path / "out.wav", np.zeros(1600), 16000)
    out = listen("--reference", str(tmp_path / "out.wav"), "--lang", "en", "--engine", "pocketsphinx")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.endswith("--reference needs --wav (the microphone recording it was heard in)")
