"""The clinic's commands refuse bad input in one sentence; enrolment files reach the service user.

Issue 13 items 6, 9 and 10: a binary prescription, a wipe with no terminal to confirm on,
a clinic key saved with a byte-order mark, `sudo appliance clinic enroll`, and the
rendered phrase cache, which is the unit's and not the patient's.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from clinic_fixture import CODE, prescription_file

from appliance.cli import main
from appliance.clinic.enrolment import enroll, patient_files, status, wipe
from appliance.clinic.usbstick import STICK_KEY_FILE, carries_clinic_key, pair


def one_sentence_error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in captured.err + captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_enrolling_a_binary_file_is_one_sentence_and_installs_nothing(tmp_path, capsys):
    rx = tmp_path / "prescription.toml"
    rx.write_bytes(b"\x00\x01\xff\xfePK\x03\x04" * 20)
    state = tmp_path / "state"
    err = one_sentence_error(capsys, ["clinic", "enroll", "--state-dir", str(state), str(rx)])
    assert str(rx) in err and "UTF-8" in err
    assert not (state / "prescription.toml").exists()


def test_enrolling_a_directory_is_one_sentence(tmp_path, capsys):
    err = one_sentence_error(capsys, ["clinic", "enroll", "--state-dir", str(tmp_path / "s"), str(tmp_path)])
    assert "directory" in err


def test_a_refused_code_is_not_repeated_in_the_sentence(tmp_path, capsys):
    rx = tmp_path / "rx.toml"
    rx.write_text(prescription_file(tmp_path, code="GNT-2026-0042\\n").read_text())  # TOML: a trailing newline
    err = one_sentence_error(capsys, ["clinic", "enroll", "--state-dir", str(tmp_path / "s"), str(rx)])
    assert "patient.code" in err and "line break" in err
    assert "GNT-2026-0042" not in err  # the journal is outside the wipe's reach


def test_wipe_without_a_terminal_refuses_and_says_to_use_yes(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state"
    enroll(state, prescription_file(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a pipe or systemd: no terminal
    err = one_sentence_error(capsys, ["clinic", "wipe", "--state-dir", str(state)])
    assert "--yes" in err
    assert (state / "prescription.toml").exists() and status(state).code == CODE


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to the service user needs root")
def test_enroll_as_root_hands_the_prescription_to_the_state_directorys_owner(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4343)  # the service user `appliance` owns /var/lib/appliance
    enroll(state, prescription_file(tmp_path))
    for name in ("prescription.toml", "enrolment.json"):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid) == (4242, 4343), name
        assert st.st_mode & 0o777 == 0o600, name


def test_a_clinic_key_saved_with_a_byte_order_mark_still_opens_the_device(tmp_path):
    stick, state = tmp_path / "stick", tmp_path / "state"
    stick.mkdir()
    key = "ab" * 32
    (stick / STICK_KEY_FILE).write_text(key + "\n")
    pair(state, stick)
    # The clinic opened the key file in Notepad and saved it: UTF-8 with a BOM, CRLF.
    (stick / STICK_KEY_FILE).write_bytes(b"\xef\xbb\xbf" + key.encode() + b"\r\n")
    assert carries_clinic_key(stick, state)
    (stick / STICK_KEY_FILE).write_text("cd" * 32 + "\n")
    assert not carries_clinic_key(stick, state)


def test_pairing_with_a_binary_key_file_is_one_sentence(tmp_path, capsys):
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / STICK_KEY_FILE).write_bytes(b"\xff\xfe\x00" * 40)
    err = one_sentence_error(capsys, ["clinic", "pair", "--state-dir", str(tmp_path / "s"), str(stick)])
    assert STICK_KEY_FILE in err


def _cached_phrase(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"text": text, "voice": "nl"}, ensure_ascii=False))
    (folder / f"{name}.wav").write_bytes(b"RIFF" + name.encode() * 100)


def test_the_rendered_phrase_cache_is_the_units_and_survives_the_wipe(tmp_path):
    from appliance.voice.phrases import Catalogue
    from appliance.voice.speech import marked_text

    state = tmp_path / "state"
    enroll(state, prescription_file(tmp_path))
    cat = Catalogue.load("nl")
    cache = state / "cache" / "speech"
    keys = sorted(cat.keys())[:3]
    for i, key in enumerate(keys):
        _cached_phrase(cache, f"phrase{i}", marked_text(cat, key))  # as SpeechRenderer stores them
    _cached_phrase(cache, "patient", f"Goed gedaan, {CODE}")  # not a catalogue phrase
    (cache / "half.wav.tmp").write_bytes(b"RIFF interrupted")
    (state / "cache" / "other").mkdir()
    (state / "cache" / "other" / "notes.txt").write_text(f"{CODE}\n")
    # clinic status counts patient data, not the phrase cache
    counted = {p.relative_to(state).as_posix() for p in patient_files(state)}
    assert not any(p.startswith("cache/speech/phrase") for p in counted)
    assert "cache/other/notes.txt" in counted
    before = status(state).patient_bytes
    rep = wipe(state)
    assert rep.clean, rep.lines()
    left = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    assert left == [f"cache/speech/phrase{i}.{ext}" for i in range(3) for ext in ("json", "wav")]
    assert before > 0
    assert status(state).patient_bytes == 0
