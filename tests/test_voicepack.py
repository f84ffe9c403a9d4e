"""A clinic's recorded voice: the device speaks the pack's recordings, and the cues still
land their keyword on the breath transition."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from voicepack_fixture import make_flite_pack, write_wav

from appliance.config import ConfigError, load_device_config
from appliance.voice.loudness import TARGET_DBFS, active_level_db, resample
from appliance.voice.phrases import Catalogue
from appliance.voice.speech import PhraseBank, SpeechRenderer, _read_wav
from appliance.voice.voicepack import VoicePack, read_recording

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")

SR = 22050
TRANSITIONS = ("contract", "release", "rest", "calibrate_squeeze", "calibrate_release")


def appliance(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def flite_pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("flite")
    truth = make_flite_pack(root / "pack")
    (root / "appliance.toml").write_text('language = "en"\n[speech]\nvoice_pack = "pack"\n')
    return root, truth


@pytest.fixture(scope="module")
def session_with_pack(flite_pack):
    root, truth = flite_pack
    out = root / "sim"
    r = appliance("simulate", "--config", str(root / "appliance.toml"), "--lang", "en", "--programme", "postop",
                  "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    wav, rate = _read_wav(out / "session.wav")
    events = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    return {"pack": root / "pack", "truth": truth, "wav": wav.astype(np.float64) / 32768.0, "rate": rate,
            "events": events}


def best_match(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Where `needle` fits best in `haystack` and the normalised cross-correlation there."""
    size = 1 << int(np.ceil(np.log2(haystack.size + needle.size)))
    corr = np.fft.irfft(np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size)), size)
    corr = corr[: haystack.size - needle.size + 1]
    energy = np.concatenate([[0.0], np.cumsum(haystack**2)])
    window = np.sqrt(np.maximum(energy[needle.size:] - energy[: -needle.size], 0.0)) * np.linalg.norm(needle)
    ncc = corr / np.maximum(window, 1e-12)
    i = int(np.argmax(ncc))
    return i, float(ncc[i])


def recorded(pack: Path, key: str, rate: int) -> np.ndarray:
    rec = read_recording(pack / f"{key}.wav", key)
    return resample(rec.samples, rec.sample_rate, rate).astype(np.float64)


def test_the_session_pack_passes_voice_check_which_counts_what_falls_back(flite_pack):
    root, _ = flite_pack
    r = appliance("voice", "check", str(root / "pack"))
    assert r.returncode == 0, r.stdout + r.stderr
    total = len(Catalogue.load("en").keys())
    recorded_keys = len(list((root / "pack").glob("*.wav")))
    assert f"{recorded_keys} of {total} phrases recorded and usable; {total - recorded_keys} fall back" in r.stdout


def test_the_welcome_is_the_clinics_recording_not_the_synthesizer(session_with_pack):
    s = session_with_pack
    clip = recorded(s["pack"], "session.welcome", s["rate"])
    start, ncc = best_match(s["wav"][: 60 * s["rate"]], clip)
    assert ncc >= 0.9, f"welcome correlates {ncc:.3f} with its recording"


def test_with_a_recorded_voice_every_cue_keyword_lands_on_the_breath_transition(session_with_pack):
    s = session_with_pack
    rate, events, truth = s["rate"], s["events"], s["truth"]
    says = [e for e in events if e["kind"] == "say"]
    welcome = next(e for e in says if e["phrase"] == "session.welcome")
    # session.wav starts when the device opens its speaker; session time starts later
    file_start, _ = best_match(s["wav"][: 60 * rate], recorded(s["pack"], "session.welcome", rate))
    shift = file_start / rate - welcome["at"]
    transitions = sorted(e["start"] for e in events if e["kind"] == "phase" and e["phase"] in TRANSITIONS)
    errors = {}
    for e in says:
        if e["phrase"] not in truth:
            continue
        clip = recorded(s["pack"], e["phrase"], rate)
        lo = max(0, int((e["at"] + shift - 0.5) * rate))
        at, _ = best_match(s["wav"][lo: lo + clip.size + rate], clip)
        keyword = (lo + at) / rate - shift + truth[e["phrase"]]
        nearest = min(transitions, key=lambda t: abs(keyword - t))
        errors.setdefault(e["phrase"], []).append(keyword - nearest)
    assert {"cue.exhale_contract", "cue.release"} <= set(errors)
    worst = {key: max(abs(x) for x in xs) for key, xs in errors.items()}
    assert all(w <= 0.150 for w in worst.values()), {k: round(1000 * w) for k, w in worst.items()}


def test_a_missing_recording_falls_back_to_the_synthesizer(flite_pack, tmp_path):
    root, _ = flite_pack
    pack = VoicePack.load(root / "pack")
    bank = PhraseBank(Catalogue.load("en"), SpeechRenderer(tmp_path / "cache"), lang="en", rate_wpm=150,
                      sample_rate=SR, pack=pack)
    try:
        recorded_clip = bank.clip("session.welcome")
        synthesized = bank.clip("session.paused")
    finally:
        bank.renderer.close()
    assert "session.paused" in bank.fallback_keys() and "session.welcome" not in bank.fallback_keys()
    flite_len = read_recording(root / "pack" / "session.welcome.wav", "w").duration_s
    assert abs(recorded_clip.duration_s - flite_len) < 0.3
    assert synthesized.samples.size > 0
    # recorded and synthesized phrases are equally loud
    assert abs(active_level_db(recorded_clip.samples, SR) - active_level_db(synthesized.samples, SR)) < 1.0


def test_keyword_times_given_in_voice_toml_are_used_as_they_are(tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 300 * t) * (np.sin(2 * np.pi * 3 * t) > -0.5)
    write_wav(pack / "cue.release.wav", np.concatenate([np.zeros(rate // 2), tone]), rate)
    (pack / "voice.toml").write_text('language = "en"\nspeaker = "s"\nlicence = "l"\ndate = 2026-01-02\n'
                                     '[keywords]\n"cue.release" = 1.1\n')
    bank = PhraseBank(Catalogue.load("en"), SpeechRenderer(tmp_path / "cache", engines=[]), lang="en",
                      rate_wpm=150, sample_rate=SR, pack=VoicePack.load(pack))
    clip = bank.clip("cue.release")
    # 0.5 s of leading silence trimmed to a 30 ms breath: the keyword moves with it
    assert clip.keyword_offset_s == pytest.approx(1.1 - 0.5 + 0.03, abs=0.015)
    assert active_level_db(clip.samples, SR) == pytest.approx(TARGET_DBFS, abs=0.5)


@pytest.mark.parametrize(("toml", "key", "value"), [
    ('language = "fr"\nspeaker = "s"\nlicence = "l"\ndate = 2026-01-02\n', "language", "'fr'"),
    ('language = "en"\nspeaker = "s"\nlicence = "l"\n', "date", "None"),
    ('language = "en"\nspeaker = "s"\nlicence = "l"\ndate = "soon"\n', "date", "'soon'"),
    ('language = "en"\nspeaker = "s"\nlicence = "l"\ndate = 2026-01-02\n[keywords]\n"cue.release" = -1\n',
     "keywords.cue.release", "-1"),
])
def test_a_bad_voice_toml_is_refused_naming_file_key_and_value(tmp_path, toml, key, value):
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "voice.toml").write_text(toml)
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('[speech]\nvoice_pack = "pack"\n')
    with pytest.raises(ConfigError) as err:
        load_device_config(cfg)
    message = str(err.value)
    assert str(cfg) in message and "speech.voice_pack" in message and key in message and value in message


def test_a_pack_named_for_the_wrong_language_is_refused(flite_pack, tmp_path):
    root, _ = flite_pack
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[speech]\nvoice_pack = {{ nl = "{root / "pack"}" }}\n')
    r = appliance("simulate", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-audio", "--quiet")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "speech.voice_pack.nl" in r.stderr and "'en' voice pack" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_selftest_says_how_many_phrases_fall_back_to_the_synthesizer(flite_pack, tmp_path):
    from appliance.device.selftest import SelfTest, Status

    root, _ = flite_pack
    st = SelfTest(load_device_config(root / "appliance.toml"), tmp_path / "state", simulated=True)
    try:
        result = st.check_voice_pack()
    finally:
        st.close()
    total = len(Catalogue.load("en").keys())
    recorded_keys = len(list((root / "pack").glob("*.wav")))
    assert result.status is Status.WARN
    assert f"{recorded_keys} of {total} phrases recorded, {total - recorded_keys} fall back" in result.detail
