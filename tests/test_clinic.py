"""Enroll, status and export, with the refusals that keep two patients' data apart."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import pytest
from clinic_fixture import CODE, filled_state_dir, prescription_file

from appliance.cli import main
from appliance.clinic.enrolment import ClinicRefusal, current_enrolment, enroll, export, status
from appliance.config import ConfigError


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return filled_state_dir(tmp_path_factory.mktemp("clinic"), days=8)


def test_enroll_installs_the_prescription_and_status_names_only_the_code(tmp_path, capsys):
    state_dir = tmp_path / "state"
    rx = prescription_file(tmp_path)
    e = enroll(state_dir, rx, datetime(2026, 3, 2, 9, tzinfo=UTC))
    assert e.code == CODE and (state_dir / "prescription.toml").read_bytes() == rx.read_bytes()
    assert (state_dir / "prescription.toml").stat().st_mode & 0o077 == 0  # patient data: owner only
    assert main(["clinic", "status", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert f"patient: {CODE}" in out and "2026-03-02 09:00" in out and "sessions: 0" in out


def test_enrolling_the_same_code_again_updates_the_prescription_and_keeps_the_date(tmp_path):
    state_dir = tmp_path / "state"
    enroll(state_dir, prescription_file(tmp_path), datetime(2026, 3, 2, tzinfo=UTC))
    changed = prescription_file(tmp_path, extra="[exercise.ex2]\nrepetitions = 6\n")
    e = enroll(state_dir, changed, datetime(2026, 3, 20, tzinfo=UTC))
    assert e.since_utc == datetime(2026, 3, 2, tzinfo=UTC)
    assert "repetitions = 6" in (state_dir / "prescription.toml").read_text()


def test_enroll_refuses_a_second_patient_while_the_first_is_on_the_device(state, tmp_path, capsys):
    before = (state / "prescription.toml").read_bytes()
    with pytest.raises(ClinicRefusal, match="GNT-2026-0042 is enrolled"):
        enroll(state, prescription_file(tmp_path, "GNT-2026-0099"))
    assert (state / "prescription.toml").read_bytes() == before
    assert current_enrolment(state).code == CODE
    rc = main(["clinic", "enroll", "--state-dir", str(state), str(prescription_file(tmp_path, "GNT-2026-0099"))])
    assert rc == 2 and "export and wipe" in capsys.readouterr().err


def test_enroll_refuses_sessions_of_an_unenrolled_patient(state, tmp_path):
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "appliance.db").write_bytes((state / "appliance.db").read_bytes())
    with pytest.raises(ClinicRefusal, match="unenrolled patient"):
        enroll(orphan, prescription_file(tmp_path, "GNT-2026-0099"))
    assert not (orphan / "prescription.toml").exists()


def test_enroll_refuses_a_bad_prescription_naming_file_key_and_value(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[patient]\ncode = "GNT-0042"\n[exercise.ex1]\nrepetitions = 99\n')
    with pytest.raises(ConfigError) as err:
        enroll(tmp_path / "state", bad)
    assert err.value.key == "exercise.ex1.repetitions" and err.value.value == 99 and str(bad) in str(err.value)
    assert not (tmp_path / "state" / "prescription.toml").exists()


def test_status_counts_sessions_and_storage(state):
    st = status(state)
    assert st.code == CODE and st.sessions >= 12 and st.repetitions > 80
    assert st.patient_bytes > (state / "appliance.db").stat().st_size * 0.5


def test_export_writes_tables_matching_the_database(state, tmp_path):
    files = export(state, tmp_path / "out", datetime(2026, 3, 10, tzinfo=UTC), with_report=False)
    names = {f.name for f in files}
    assert {"sessions.csv", "repetitions.csv", "summary.csv", "observations.fhir.json", "prescription.toml"} <= names
    folder = files[0].parent
    assert folder.name.startswith(CODE)
    sessions = list(csv.DictReader((folder / "sessions.csv").open()))
    reps = list(csv.DictReader((folder / "repetitions.csv").open()))
    st = status(state)
    assert len(sessions) == st.sessions and len(reps) == st.repetitions
    bundle = json.loads((folder / "observations.fhir.json").read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    codes = [e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]]
    mvc = [c for c in codes if c == "mvc-squeeze-pressure"]
    # One per maximal squeeze measured; a short set that carries the day's calibration over adds none.
    assert len(mvc) == sum(s["mvc_measured"] == "1" for s in sessions) > 0
    assert {e["resource"]["subject"]["identifier"]["value"] for e in bundle["entry"]} == {CODE}


def test_export_writes_the_report_in_the_language_asked(state, tmp_path):
    files = export(state, tmp_path / "out", datetime(2026, 3, 10, tzinfo=UTC), lang="en")
    folder = files[0].parent
    assert (folder / "report.pdf").exists() and (folder / "report-1.png").exists()
    rows = list(csv.DictReader((folder / "summary.csv").open()))
    assert "main sessions done" in {r["label"] for r in rows}


def test_export_refuses_without_a_patient_or_into_the_state_dir(state, tmp_path):
    with pytest.raises(ClinicRefusal, match="no patient is enrolled"):
        export(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ClinicRefusal, match="state directory"):
        export(state, state / "exports")
    fresh = tmp_path / "fresh"
    enroll(fresh, prescription_file(tmp_path))
    with pytest.raises(ClinicRefusal, match="no stored sessions"):
        export(fresh, tmp_path / "out")
