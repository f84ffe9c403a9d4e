"""The clinic's USB stick, with a folder standing in for it."""

from __future__ import annotations

import pytest
from clinic_fixture import CODE, filled_state_dir, prescription_file

from appliance.clinic.enrolment import current_enrolment, status
from appliance.clinic.usbstick import STICK_EXPORT_DIR, STICK_KEY_FILE, StickAction, handle_stick, pair


@pytest.fixture()
def clinic_stick(tmp_path):
    stick = tmp_path / "clinic-stick"
    stick.mkdir()
    return stick


def _tree(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*"))


def test_pairing_keeps_only_a_hash_of_the_clinic_key(tmp_path, clinic_stick):
    state = tmp_path / "state"
    pair(state, clinic_stick)
    key = (clinic_stick / STICK_KEY_FILE).read_text().strip()
    assert len(key) == 64
    assert key not in (state / "clinic.key").read_text()


def test_a_stick_with_the_key_and_a_prescription_enrolls_and_the_device_says_so(tmp_path, clinic_stick):
    state = tmp_path / "state"
    pair(state, clinic_stick)
    (clinic_stick / "prescription.toml").write_bytes(prescription_file(tmp_path).read_bytes())
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.ENROLLED and out.phrase == "clinic.enrolled"
    assert current_enrolment(state).code == CODE
    assert CODE not in out.detail


def test_a_stick_without_the_key_gets_nothing_and_changes_nothing(tmp_path, clinic_stick):
    state = filled_state_dir(tmp_path, days=2)
    pair(state, clinic_stick)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / STICK_KEY_FILE).write_text("f" * 64 + "\n")  # a key, but not this clinic's
    (stranger / "prescription.toml").write_bytes(prescription_file(tmp_path, "GNT-2026-0666").read_bytes())
    state_before, stick_before = _tree(state), _tree(stranger)
    out = handle_stick(stranger, state)
    assert out.action is StickAction.IGNORED and out.phrase == "clinic.stick_unknown"
    assert _tree(state) == state_before and _tree(stranger) == stick_before
    (stranger / "prescription.toml").unlink()
    stick_before = _tree(stranger)
    assert handle_stick(stranger, state).action is StickAction.IGNORED
    assert _tree(stranger) == stick_before  # no export either
    assert current_enrolment(state).code == CODE


def test_a_device_never_paired_ignores_every_stick(tmp_path, clinic_stick):
    (clinic_stick / STICK_KEY_FILE).write_text("a" * 64)
    (clinic_stick / "prescription.toml").write_bytes(prescription_file(tmp_path).read_bytes())
    assert handle_stick(clinic_stick, tmp_path / "state").action is StickAction.IGNORED
    assert not (tmp_path / "state").exists()


def test_a_stick_with_the_key_and_no_prescription_receives_the_export(tmp_path, clinic_stick):
    state = filled_state_dir(tmp_path, days=2)
    pair(state, clinic_stick)
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.EXPORTED and out.phrase == "clinic.exported"
    folders = list((clinic_stick / STICK_EXPORT_DIR).iterdir())
    assert len(folders) == 1 and folders[0].name.startswith(CODE)
    names = {p.name for p in folders[0].iterdir()}
    assert {"sessions.csv", "repetitions.csv", "observations.fhir.json", "report.pdf"} <= names
    rows = (folders[0] / "sessions.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == status(state).sessions


def test_a_clinic_stick_cannot_enroll_over_another_patient_or_with_a_bad_file(tmp_path, clinic_stick):
    state = filled_state_dir(tmp_path, days=1)
    pair(state, clinic_stick)
    (clinic_stick / "prescription.toml").write_bytes(prescription_file(tmp_path, "GNT-2026-0099").read_bytes())
    before = (state / "prescription.toml").read_bytes()
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.enroll_refused"
    assert (state / "prescription.toml").read_bytes() == before
    (clinic_stick / "prescription.toml").write_text('[patient]\ncode = "Marie Peeters"\n')
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.stick_invalid"
    assert "patient.code" in out.detail
