"""The export's tables: sessions.csv, repetitions.csv, summary.csv and a FHIR R4 Bundle.

summary.csv and the Bundle's summary Observations carry the figures of the report's
first page (`appliance.clinic.summary.figures`), so the three never disagree.
"""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from appliance.clinic.summary import Figure, Summary, figures, summarise
from appliance.clinic.wording import Wording
from appliance.patient.prescription import Prescription
from appliance.patient.progress import rep_met

LOCAL_SYSTEM = "urn:appliance:pelvic-floor"  # our own code system: no standard code we are sure of
CODE_SYSTEM_NOTE = (
    "Codes: LOINC 8867-4 is not used; no LOINC or SNOMED CT code is known to us for vaginal squeeze "
    "pressure, the Modified Oxford grade by manometry, PERFECT or training adherence, so every "
    f"Observation.code uses the local system {LOCAL_SYSTEM}. Units are UCUM (cm[H2O], s, %, /d)."
)
SESSION_FIELDS = ("id", "started_utc", "ended_utc", "status", "programme", "kind", "postop", "lang", "rest_cmh2o",
                  "mvc_cmh2o", "mvc_measured", "oxford_band", "reps_complete", "reps_partial")
REP_FIELDS = ("session_id", "exercise", "rep", "status", "ended_utc", "target_pct", "peak_cmh2o", "peak_pct",
              "time_to_peak_s", "held_s", "hold_asked_s", "steadiness_pct", "release_complete", "onset_s",
              "mean_hold_pct", "artefact", "met_target")
SUMMARY_FIELDS = ("figure", "label", "week", "start", "end", "value", "unit")


def write_tables(db_path: Path, out_dir: Path, code: str, rx: Prescription | None, lang: str | None = None,
                 enrolled: date | None = None, *, summary: Summary | None = None) -> list[Path]:
    """Write sessions.csv, repetitions.csv, summary.csv and the FHIR bundle; `summary`, when
    the caller has read the database already for the report, is not read again."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary or summarise(db_path, code, rx, lang, enrolled)
    words = Wording.load(summary.lang)
    stored = {s.id: s for s in summary.sessions}
    s_path = out_dir / "sessions.csv"
    with s_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SESSION_FIELDS)
        for s in summary.sessions:
            row = {"postop": int(s.postop), "mvc_measured": int(s.mvc_measured),
                   "reps_complete": sum(r["status"] == "complete" for r in s.reps),
                   "reps_partial": sum(r["status"] == "partial" for r in s.reps)}
            w.writerow([row[k] if k in row else getattr(s, k) for k in SESSION_FIELDS])
    r_path = out_dir / "repetitions.csv"
    with r_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(REP_FIELDS)
        for sid in stored:
            for r in stored[sid].reps:
                w.writerow([_rep_value(r, k) for k in REP_FIELDS])
    sum_path = out_dir / "summary.csv"
    with sum_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SUMMARY_FIELDS)
        for f in figures(summary):
            w.writerow([f.key, words(f"figure.{f.key}"), f.week, f.start.isoformat(), f.end.isoformat(),
                        f.value, f.unit])
    f_path = out_dir / "observations.fhir.json"
    f_path.write_text(json.dumps(fhir_bundle(summary, words), indent=1, ensure_ascii=False))
    return [s_path, r_path, sum_path, f_path]


def _rep_value(rep: dict, key: str) -> Any:
    if key == "met_target":
        return int(rep_met(rep))
    if key == "artefact":
        return int(bool(rep.get("artefact")))
    return rep.get(key)


def _coding(code: str, display: str) -> dict:
    return {"coding": [{"system": LOCAL_SYSTEM, "code": code, "display": display}], "text": display}


def _qty(value: float, unit: str, ucum: str) -> dict:
    return {"value": round(float(value), 2), "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}


def _value(f: Figure, words: Wording) -> dict:
    if isinstance(f.value, str):  # an Oxford band
        return {"valueCodeableConcept": _coding(f"oxford-{f.value}", words.band(f.value))}
    if f.unit:
        return {"valueQuantity": _qty(f.value, f.unit, f.ucum)}
    return {"valueInteger": int(f.value)}


def fhir_bundle(summary: Summary, words: Wording) -> dict:
    """A FHIR R4 Bundle (type collection) of Observations about the patient code: the
    report's summary figures (per week and for the period), each measured MVC and each
    stored PERFECT result, and the sessions trained per day."""
    code = summary.code
    subject = {"identifier": {"system": "urn:appliance:patient-code", "value": code}, "display": code}
    entries = []

    def observation(key: str, category: str, when: dict, **value: Any) -> None:
        uid = uuid.uuid5(uuid.NAMESPACE_URL, f"{LOCAL_SYSTEM}/{code}/{key}")
        resource = {
            "resourceType": "Observation",
            "id": str(uid),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "subject": subject,
            **when,
            "device": {"display": "voice-guided pelvic-floor trainer"},
            **value,
        }
        entries.append({"fullUrl": f"urn:uuid:{uid}", "resource": resource})

    for f in figures(summary):
        observation(f"summary/{f.key}/{f.week}", "activity" if f.key.endswith(("done", "prescribed", "pct"))
                    else "exam", {"effectivePeriod": {"start": f.start.isoformat(), "end": f.end.isoformat()}},
                    code=_coding(f"summary-{f.key}", words(f"figure.{f.key}")),
                    **({"note": [{"text": f"week {f.week}"}]} if f.week else {}),
                    **_value(f, words))
    for s in summary.sessions:
        at = {"effectiveDateTime": s.started_utc}
        if s.mvc_measured and not s.postop and s.mvc_cmh2o is not None:
            observation(f"mvc/{s.id}", "exam", at,
                        code=_coding("mvc-squeeze-pressure", "Pelvic floor maximal squeeze pressure above rest"),
                        valueQuantity=_qty(s.mvc_cmh2o, "cmH2O", "cm[H2O]"))
        if s.perfect:
            p = s.perfect
            observation(f"perfect/{s.id}", "exam", at,
                        code=_coding("perfect", "PERFECT pelvic floor assessment"),
                        component=[
                            {"code": _coding("perfect-power", "Power (peak squeeze above rest)"),
                             "valueQuantity": _qty(p["power_cmh2o"], "cmH2O", "cm[H2O]")},
                            {"code": _coding("perfect-endurance", "Endurance (hold >= 50 %MVC)"),
                             "valueQuantity": _qty(p["endurance_s"], "s", "s")},
                            {"code": _coding("perfect-repetitions", "Repetitions of the endurance hold"),
                             "valueInteger": int(p["repetitions"])},
                            {"code": _coding("perfect-fast", "Fast 1-second contractions in a row"),
                             "valueInteger": int(p["fast"])},
                        ])
    per_day: dict[date, int] = {}
    for s in summary.sessions:
        if s.trained:
            per_day[s.day] = per_day.get(s.day, 0) + 1
    for day, n in sorted(per_day.items()):
        observation(f"sets/{day}", "activity", {"effectiveDateTime": day.isoformat()},
                    code=_coding("training-sets-per-day", "Pelvic floor training sessions completed per day"),
                    valueQuantity=_qty(n, "sets/day", "/d"))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{LOCAL_SYSTEM}/{code}/bundle")),
        "meta": {"tag": [{"system": LOCAL_SYSTEM, "code": "code-system-note", "display": CODE_SYSTEM_NOTE}]},
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": entries,
    }
