"""`appliance voice check` and `appliance voice record`: a clinic makes and checks its own voice."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from voicepack_fixture import flite, make_flite_pack, write_wav

from appliance.cli.voice import Studio, ensure_info, walk
from appliance.voice.loudness import active_level_db, speech_bounds
from appliance.voice.phrases import Catalogue
from appliance.voice.voicepack import VoicePack, read_recording

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")

KEYS = ("session.welcome", "session.start", "cue.release", "cue.exhale_contract", "count.3")


def appliance(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voice") / "pack"
    make_flite_pack(root, KEYS)
    return root


def copy_pack(pack: Path, to: Path) -> Path:
    shutil.copytree(pack, to)
    return to


def test_a_pack_recorded_with_another_voice_passes_the_check_and_says_what_falls_back(pack):
    r = appliance("voice", "check", str(pack))
    assert r.returncode == 0, r.stdout + r.stderr
    total = len(Catalogue.load("en").keys())
    recorded = sum(Catalogue.load("en").has(k) for k in KEYS)
    assert f"{recorded} of {total} phrases recorded and usable; {total - recorded} fall back" in r.stdout
    assert "spread" in r.stdout and "usable" in r.stdout.splitlines()[-1]
    r = appliance("voice", "check", "--complete", str(pack))
    assert r.returncode == 1 and "incomplete" in r.stdout


def test_clipped_wrong_and_misnamed_recordings_make_the_pack_unusable_and_are_named(pack, tmp_path):
    bad = copy_pack(pack, tmp_path / "bad")
    welcome = read_recording(bad / "session.welcome.wav", "w")
    write_wav(bad / "session.welcome.wav", np.clip(welcome.samples * 40, -1, 1), welcome.sample_rate)
    # the long welcome sentence recorded under "Here we go."
    shutil.copy(pack / "session.welcome.wav", bad / "session.start.wav")
    shutil.copy(pack / "cue.release.wav", bad / "cue.relase.wav")
    r = appliance("voice", "check", str(bad))
    assert r.returncode == 1
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("unusable:")
    for key in ("session.welcome", "session.start", "cue.relase"):
        assert key in last
    assert "cue.release" not in last.replace("cue.relase", "")
    assert "clipped" in r.stdout and "is it this sentence?" in r.stdout


def test_a_folder_without_voice_toml_is_one_sentence(tmp_path):
    r = appliance("voice", "check", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "voice.toml" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_recording_walks_through_each_sentence_trims_levels_and_lets_one_be_redone(tmp_path):
    takes = []

    def microphone() -> tuple[np.ndarray, int]:
        # a quiet take with a second of room noise before and after
        said = ("session.welcome", "session.welcome", "session.start")[len(takes)]
        x, rate = flite(Catalogue.load("en").text(said), tmp_path / "take.wav")
        takes.append(rate)
        room = np.random.default_rng(len(takes)).normal(0, 1e-4, rate)
        return np.concatenate([room, 0.1 * x, room]), rate

    answers = iter(["", "r", "", "", "", "q"])  # record, redo it, record, keep; record, keep; stop
    shown: list[str] = []
    studio = Studio(show=shown.append, ask=lambda prompt: next(answers), record=microphone)
    pack = tmp_path / "pack"
    ensure_info(pack, "en", "Test Speaker", "CC0", studio)
    kept = walk(pack, "en", ["session.welcome", "session.start"], studio)
    assert kept == 2 and len(takes) == 3
    info = VoicePack.load(pack).info
    assert (info.language, info.speaker, info.licence) == ("en", "Test Speaker", "CC0")
    for key in ("session.welcome", "session.start"):
        rec = read_recording(pack / f"{key}.wav", key)
        start, end = speech_bounds(rec.samples, rec.sample_rate)
        assert start / rec.sample_rate < 0.15 and (rec.samples.size - end) / rec.sample_rate < 0.15
        assert active_level_db(rec.samples, rec.sample_rate) == pytest.approx(-19.0, abs=1.0)
    assert any("session.start" in s for s in shown) and any("fine" in s for s in shown)
    r = appliance("voice", "check", str(pack))
    assert r.returncode == 0, r.stdout


def test_redo_of_a_phrase_that_does_not_exist_is_one_sentence(tmp_path):
    r = appliance("voice", "record", str(tmp_path / "p"), "--lang", "nl", "--redo", "cue.relase")
    assert r.returncode != 0 and "cue.relase" in r.stderr and "Traceback" not in r.stderr
