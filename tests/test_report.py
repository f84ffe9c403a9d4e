"""`appliance clinic report` on two weeks the device trained: PDF, PNG pages, CSV and FHIR."""

from __future__ import annotations

import csv
import json
import re
import subprocess

import pytest
from clinic_fixture import CODE, filled_state_dir

from appliance.cli import main
from appliance.clinic.enrolment import status


@pytest.fixture(scope="module")
def two_weeks(tmp_path_factory):
    """Two weeks as the device trained them (clinic_fixture: the device on a simulated clock)."""
    return filled_state_dir(tmp_path_factory.mktemp("report"), days=14)


def test_report_on_two_weeks_writes_a_four_page_pdf_and_its_tables(two_weeks, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["clinic", "report", "--state-dir", str(two_weeks), "--out", str(out)]) == 0
    pdf = out / "report.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+4$", info, re.M)
    assert sorted(p.name for p in out.glob("report-*.png")) == [f"report-{i}.png" for i in range(1, 5)]
    # The pages render (poppler) to real images, not blank sheets.
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 4 and all(p.stat().st_size > 5000 for p in pages)
    st = status(two_weeks)
    sessions = list(csv.DictReader((out / "sessions.csv").open()))
    assert len(sessions) == st.sessions
    bundle = json.loads((out / "observations.fhir.json").read_text())
    perfect = [e["resource"] for e in bundle["entry"]
               if e["resource"]["code"]["coding"][0]["code"] == "perfect"]
    assert len(perfect) == 2  # one PERFECT a week, on the prescription's Monday
    assert [c["code"]["coding"][0]["code"] for c in perfect[0]["component"]] == \
        ["perfect-power", "perfect-endurance", "perfect-repetitions", "perfect-fast"]
    sets = [e["resource"] for e in bundle["entry"]
            if e["resource"]["code"]["coding"][0]["code"] == "training-sets-per-day"]
    assert len(sets) == 14 and sum(s["valueQuantity"]["value"] for s in sets) == \
        sum(1 for s in sessions if int(s["reps_complete"]) > 0)
    assert all(e["resource"]["subject"]["identifier"]["value"] == CODE for e in bundle["entry"])


def test_report_refuses_without_an_enrolled_patient(tmp_path, capsys):
    assert main(["clinic", "report", "--state-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no patient is enrolled" in capsys.readouterr().err
