"""Wipe: every trace of the patient goes, and a byte scan of what is left proves it."""

from __future__ import annotations

import sqlite3

import pytest
from clinic_fixture import CODE, copy_state, filled_state_dir, prescription_file

from appliance.cli import main
from appliance.clinic.enrolment import DEVICE_FILES, enroll, fingerprints, patient_files, scan_file, status, wipe


@pytest.fixture(scope="module")
def weeks(tmp_path_factory):
    """Two weeks of a patient's sessions, as the device leaves them (WAL included)."""
    return filled_state_dir(tmp_path_factory.mktemp("wipe"), days=14)


def _all_bytes(state):
    return b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())


def test_the_scan_finds_traces_that_a_plain_delete_leaves_in_sqlite_free_pages(weeks, tmp_path):
    state = copy_state(weeks, tmp_path / "naive")
    fp = fingerprints(state)
    assert len(fp.values) > 500  # thousands of stored sample values to look for
    db = sqlite3.connect(state / "appliance.db")
    db.execute("PRAGMA secure_delete=OFF")
    for table in ("samples", "repetitions", "events", "exercises", "sessions"):
        db.execute(f"DELETE FROM {table}")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert db_rows(state) == 0
    found = scan_file(state / "appliance.db", fp)
    assert any("patient code" in f.what for f in found)
    assert any("stored value" in f.what for f in found)


def db_rows(state):
    db = sqlite3.connect(state / "appliance.db")
    try:
        return sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                   for t in ("samples", "repetitions", "events", "sessions"))
    finally:
        db.close()


def test_wipe_after_weeks_of_sessions_leaves_no_code_and_no_sample_anywhere(weeks, tmp_path, capsys):
    state = copy_state(weeks, tmp_path / "device")
    (state / "clinic.key").write_text("0" * 64 + "\n")  # the unit's own files stay
    (state / "probe.toml").write_text("offset_counts = 12\n")
    speech = state / "speech"
    speech.mkdir()
    (speech / "a.json").write_text('{"text": "Adem ^uit, en span aan."}')
    (speech / "a.wav").write_bytes(b"RIFF generic")
    (speech / "b.json").write_text(f'{{"text": "Goed gedaan {CODE}"}}')  # a patient-specific phrase
    (speech / "b.wav").write_bytes(b"RIFF patient")
    fp = fingerprints(state)
    assert CODE.encode() in _all_bytes(state)
    assert status(state).sessions >= 30
    before = {p.name for p in patient_files(state)}
    assert {"appliance.db", "prescription.toml", "enrolment.json", "appliance.log", "timeline.jsonl"} <= before

    assert main(["clinic", "wipe", "--yes", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "found no trace of the patient" in out and "free pages" in out

    left = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    # appliance.db.reserve: the store's reserve for a full disk, zeros (scanned all the same).
    assert left == ["appliance.db.reserve", "clinic.key", "probe.toml", "speech/a.json", "speech/a.wav"]
    everything = _all_bytes(state)
    assert CODE.encode().lower() not in everything.lower()
    for p in state.rglob("*"):
        if p.is_file():
            assert scan_file(p, fp) == []
    assert status(state).code is None and status(state).sessions == 0
    # The device is ready for the next patient.
    enroll(state, prescription_file(tmp_path, "GNT-2026-0099"))


def test_wipe_report_names_what_it_checked(weeks, tmp_path):
    state = copy_state(weeks, tmp_path / "device2")
    rep = wipe(state)
    assert rep.clean and rep.db_rows_deleted > 10000
    assert rep.checked_files >= 1 and rep.checked_bytes > 0
    lines = "\n".join(rep.lines())
    assert "stored sample values" in lines and "8-byte doubles" in lines
    assert not (state / "appliance.db-wal").exists() and not (state / "appliance.db").exists()
    assert set(DEVICE_FILES) >= {p.name for p in state.iterdir()}


def test_wipe_reports_a_trace_it_cannot_remove(weeks, tmp_path, capsys):
    state = copy_state(weeks, tmp_path / "device3")
    (state / "clinic.key").write_text(f"note: {CODE}\n")  # a kept device file that names the patient
    assert main(["clinic", "wipe", "--yes", "--state-dir", str(state)]) == 1
    assert "TRACE FOUND" in capsys.readouterr().out
