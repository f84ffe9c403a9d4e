"""What the patient hears, measured on the device's own session.wav (`appliance simulate`)."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest

from appliance.coach.programme import load_programme
from appliance.sensor.simulated import Fault
from appliance.simulation.session import simulate

ACTIVE = ("contract", "hold", "move", "calibrate_squeeze")  # the phases the tone may sound in
HOLDS = ("hold", "move")  # the tone sounds all through these
CLEAR_S = 0.3  # the duck's ramps and a clip's tail stay out of the "alone" stretches


@pytest.fixture(scope="module")
def heard(tmp_path_factory) -> tuple[list[dict], np.ndarray, int]:
    """Calibration and exercise 2 (holds of three breaths, the tone between the breath cues)
    in Dutch: the timeline and session.wav."""
    out = tmp_path_factory.mktemp("heard")
    result = simulate(out_dir=out, lang="nl", seed=3, programme=load_programme("leaflet").only("ex2"),
                      wav_path=out / "session.wav", speech_cache=out / "speech", max_seconds=400.0)
    events = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines() if line.strip()]
    # The WAV starts when the speaker opens (the device says it is ready, the patient says
    # "start"); the timeline counts from the session's start: move it onto the WAV.
    offset = result.session.t0 - result.appliance.edges.speaker.t_open
    assert offset > 1.0  # the ready phrase is in the WAV, before the session
    for e in events:
        for key in ("at", "start", "end"):
            if key in e:
                e[key] += offset
    with wave.open(str(out / "session.wav"), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    return events, x, rate


def mask(n: int, rate: int, spans: list[tuple[float, float]]) -> np.ndarray:
    m = np.zeros(n, bool)
    for a, b in spans:
        m[max(0, int(a * rate)):max(0, min(n, int(b * rate)))] = True
    return m


def db(power: float) -> float:
    return float(10.0 * np.log10(max(power, 1e-12)))


def test_the_patient_hears_the_prompts_clearly_above_the_tone(heard):
    events, x, rate = heard
    speech = [(e["at"], e["at"] + e["duration_s"]) for e in events if e["kind"] == "say"]
    active = [(e["start"], e["end"]) for e in events if e["kind"] == "phase" and e["phase"] in ACTIVE]
    holds = [(e["start"], e["end"]) for e in events if e["kind"] == "phase" and e["phase"] in HOLDS]
    near_tone = mask(len(x), rate, [(a - CLEAR_S, b + CLEAR_S) for a, b in active])
    near_speech = mask(len(x), rate, [(a - CLEAR_S, b + CLEAR_S) for a, b in speech])
    speech_alone = mask(len(x), rate, speech) & ~near_tone
    tone_alone = mask(len(x), rate, holds) & ~near_speech
    w = int(0.05 * rate)
    n = len(x) // w
    whole = tone_alone[: n * w].reshape(n, w).all(axis=1)
    tone_windows = np.mean(x[: n * w].reshape(n, w)[whole] ** 2, axis=1)
    assert speech_alone.sum() > 20 * rate and len(tone_windows) > 40  # enough of each to measure
    speech_db = db(float(np.mean(x[speech_alone] ** 2)))
    tone_db = db(float(np.median(tone_windows)))
    assert tone_db > -40.0  # the tone is there, to be followed
    assert speech_db - tone_db >= 6.0, (speech_db, tone_db)  # 5 dB with the tone at 0.25, 10 dB at 0.15


def test_no_prompt_is_cut_off_and_nothing_clips(heard):
    events, x, _ = heard
    says = [e for e in events if e["kind"] == "say"]
    for a, b in zip(says, says[1:], strict=False):
        assert b["at"] >= a["at"] + a["duration_s"] - 0.01, (a["phrase"], b["phrase"])
    assert np.abs(x).max() < 0.99


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_the_gentle_post_operative_squeeze_is_asked_whole_before_let_go(tmp_path, lang):
    """After surgery the calibration asks a gentle squeeze of 5 s: the request must end
    before "let go" starts (it ran a second into it, cut off mid-sentence)."""
    simulate(out_dir=tmp_path, lang=lang, seed=3, programme="postop", wav_path=tmp_path / "session.wav",
             speech_cache=tmp_path / "speech", max_seconds=75.0)
    says = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()
            if '"say"' in line]
    asked = [i for i, s in enumerate(says) if s["phrase"] == "calibrate.squeeze_gentle"]
    assert len(asked) >= 2
    for i in asked:
        ask, after = says[i], says[i + 1]
        assert after["at"] >= ask["at"] + ask["duration_s"], (ask["text"], after["text"])


@pytest.fixture(scope="module")
def speech_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("speech")


def likeness(x: np.ndarray, clip: np.ndarray, start: int, part: slice) -> float:
    """How alike `part` of the clip and the file from `start` are (1: the same shape)."""
    xs, cs = x[start:start + len(clip)][part], clip[part]
    return float(np.dot(xs, cs) / (np.linalg.norm(xs) * np.linalg.norm(cs) + 1e-12))


def cut_off(result, wav_path) -> list[tuple[float, str, float]]:
    """The phrases not heard whole in session.wav: (at, phrase, likeness of the clip's last 40 %
    to what the file holds there). A phrase heard whole is its own clip there, over the ducked
    tone (likeness ~1); one cut off or spoken over is not (~0)."""
    with wave.open(str(wav_path), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    offset = result.session.t0 - result.appliance.edges.speaker.t_open
    bank = result.appliance.bank
    head, search = int(0.4 * rate), int(0.01 * rate)
    cut = []
    for e in result.log.of("say"):
        clip = bank.clip(e.data["phrase"])
        c = clip.pcm.astype(np.float64) / (32768.0 if clip.pcm.dtype.kind in "iu" else 1.0)
        a = int(round((e.data["at"] + offset) * rate))
        if a + len(c) > len(x):
            continue

        # The timeline's `at` is rounded to the millisecond: find the clip's first sample.
        start = max(range(max(0, a - search), a + search + 1), key=lambda s: likeness(x, c, s, slice(0, head)))
        tail = likeness(x, c, start, slice(len(c) * 6 // 10, len(c)))
        if tail < 0.8:
            cut.append((e.data["at"], e.data["phrase"], round(tail, 2)))
    return cut


@pytest.mark.parametrize(("fault", "seed", "patient"), [
    ("abdominal", 2, "average"),
    ("give_up", 1, "calm_breather"),
    ("late_release", 3, "quick_breather"),
    ("push_down", 3, "strong"),
])
def test_a_correction_is_never_said_over_another_sentence(tmp_path, speech_cache, fault, seed, patient):
    """Never two sentences at once, as a physiotherapist speaks: a correction waits for the
    sentence being said (or is left out when it would come too late), and a cue moved by a
    correction does not run into the next repetition. Heard in session.wav, with faults."""
    result = simulate(out_dir=tmp_path, lang="nl", seed=seed, patient=patient, faults=[Fault(fault)],
                      programme=load_programme("leaflet").only("awareness", "ex1"), wav_path=tmp_path / "session.wav",
                      speech_cache=speech_cache, max_seconds=600.0)
    says = result.log.of("say")
    corrections = [e for e in says if e.data.get("priority") == "correction"]
    assert len(says) > 100 and corrections  # the faults were corrected
    assert cut_off(result, tmp_path / "session.wav") == []
    for w in (e.data for e in result.log.of("warning") if "detected" in e.data and not e.data["said"]):
        assert w["reason"] in ("correction", "speaking") and w["over"]  # the timeline says why
