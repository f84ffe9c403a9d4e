"""The physiotherapist's report: PDF and PNG pages (matplotlib, Agg), CSV tables, FHIR R4.

`appliance clinic report --out DIR` and the export both call `write_tables` and
`write_report` on the device's database. Pages: adherence calendar, trends (MVC,
PERFECT, targets), repetition quality per exercise, representative pressure traces.
"""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib
import matplotlib.dates

matplotlib.use("Agg")  # headless device: never touch a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from appliance.patient.prescription import Prescription  # noqa: E402
from appliance.patient.progress import (  # noqa: E402
    PERFECT_PROGRAMME,
    Week,
    load_sessions,
    local_day,
    rep_met,
    sets_per_day,
)
from appliance.patient.today import training_weeks  # noqa: E402

log = logging.getLogger(__name__)

LOCAL_SYSTEM = "urn:appliance:pelvic-floor"  # our own code system: no standard code we are sure of
CODE_SYSTEM_NOTE = (
    "Codes: LOINC 8867-4 is not used; no LOINC or SNOMED CT code is known to us for vaginal squeeze "
    "pressure, the Modified Oxford grade by manometry, PERFECT or training adherence, so every "
    f"Observation.code uses the local system {LOCAL_SYSTEM}. Units are UCUM (cm[H2O], s, /d)."
)
SESSION_FIELDS = ("id", "started_utc", "ended_utc", "status", "programme", "lang", "rest_cmh2o",
                  "mvc_cmh2o", "oxford_band", "reps_complete", "reps_partial")
REP_FIELDS = ("session_id", "exercise", "rep", "status", "ended_utc", "target_pct", "peak_cmh2o", "peak_pct",
              "time_to_peak_s", "held_s", "hold_asked_s", "steadiness_pct", "release_complete", "onset_s",
              "mean_hold_pct", "met_target")
TARGET_SETS_PER_DAY = 5  # the leaflet's five moments a day
A4 = (8.27, 11.69)


# --- Tables ---------------------------------------------------------------------------------

def write_tables(db_path: Path, out_dir: Path, code: str, rx: Prescription | None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = load_sessions(db_path)
    s_path = out_dir / "sessions.csv"
    with s_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SESSION_FIELDS)
        for s in sessions:
            row = dict(s, reps_complete=sum(r["status"] == "complete" for r in s["reps"]),
                       reps_partial=sum(r["status"] == "partial" for r in s["reps"]))
            w.writerow([row.get(k) for k in SESSION_FIELDS])
    r_path = out_dir / "repetitions.csv"
    with r_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(REP_FIELDS)
        for s in sessions:
            for r in s["reps"]:
                w.writerow([r.get(k) if k != "met_target" else int(rep_met(r)) for k in REP_FIELDS])
    f_path = out_dir / "observations.fhir.json"
    f_path.write_text(json.dumps(fhir_bundle(sessions, code, rx), indent=1, ensure_ascii=False))
    return [s_path, r_path, f_path]


def _coding(code: str, display: str) -> dict:
    return {"coding": [{"system": LOCAL_SYSTEM, "code": code, "display": display}], "text": display}


def _qty(value: float, unit: str, ucum: str) -> dict:
    return {"value": round(float(value), 2), "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}


def fhir_bundle(sessions: list[dict], code: str, rx: Prescription | None) -> dict:
    """A FHIR R4 Bundle (type collection) of Observations about the patient code."""
    subject = {"identifier": {"system": "urn:appliance:patient-code", "value": code}, "display": code}
    tz = rx.tz if rx else ZoneInfo("UTC")
    entries = []

    def observation(key: str, category: str, when: str, **value) -> None:
        uid = uuid.uuid5(uuid.NAMESPACE_URL, f"{LOCAL_SYSTEM}/{code}/{key}")
        resource = {
            "resourceType": "Observation",
            "id": str(uid),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "subject": subject,
            "effectiveDateTime": when,
            "device": {"display": "voice-guided pelvic-floor trainer"},
            **value,
        }
        entries.append({"fullUrl": f"urn:uuid:{uid}", "resource": resource})

    for s in sessions:
        if s["mvc_cmh2o"] is not None:
            observation(f"mvc/{s['id']}", "exam", s["started_utc"],
                        code=_coding("mvc-squeeze-pressure", "Pelvic floor maximal squeeze pressure above rest"),
                        valueQuantity=_qty(s["mvc_cmh2o"], "cmH2O", "cm[H2O]"))
            observation(f"oxford/{s['id']}", "exam", s["started_utc"],
                        code=_coding("oxford-band-manometry", "Modified Oxford band by manometry"),
                        valueCodeableConcept=_coding(f"oxford-{s['oxford_band']}", s["oxford_band"]))
        if s["perfect"]:
            p = s["perfect"]
            observation(f"perfect/{s['id']}", "exam", s["started_utc"],
                        code=_coding("perfect", "PERFECT pelvic floor assessment"),
                        component=[
                            {"code": _coding("perfect-power", "Power (peak squeeze)"),
                             "valueQuantity": _qty(p["power_cmh2o"], "cmH2O", "cm[H2O]")},
                            {"code": _coding("perfect-endurance", "Endurance (hold >= 50 %MVC)"),
                             "valueQuantity": _qty(p["endurance_s"], "s", "s")},
                            {"code": _coding("perfect-repetitions", "Repetitions of the endurance hold"),
                             "valueInteger": int(p["repetitions"])},
                            {"code": _coding("perfect-fast", "Fast 1-second contractions in a row"),
                             "valueInteger": int(p["fast"])},
                        ])
    for day, n in sorted(sets_per_day(sessions, tz).items()):
        observation(f"sets/{day}", "activity", day.isoformat(),
                    code=_coding("training-sets-per-day", "Pelvic floor training sets completed per day"),
                    valueQuantity=_qty(n, "sets/day", "/d"))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{LOCAL_SYSTEM}/{code}/bundle")),
        "meta": {"tag": [{"system": LOCAL_SYSTEM, "code": "code-system-note", "display": CODE_SYSTEM_NOTE}]},
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": entries,
    }


# --- The PDF --------------------------------------------------------------------------------

def _weeks(sessions: list[dict], rx: Prescription | None, tz: ZoneInfo) -> tuple[list[Week], date, date]:
    """The lending period's calendar weeks, with the targets the device trained at: the
    same rule, applied by the same function (appliance.patient.today), as on the device."""
    if rx is not None:
        return training_weeks(sessions, rx)
    days = [local_day(s["started_utc"], tz) for s in sessions]
    first, last = min(days), max(days)
    return [], first - timedelta(days=first.weekday()), last  # calendar weeks start on Monday


def _header(fig, code: str, rx: Prescription | None, first: date, last: date, title: str) -> None:
    prog = rx.programme if rx else "?"
    fig.text(0.06, 0.965, f"Pelvic floor training report - patient {code}", fontsize=14, weight="bold")
    fig.text(0.06, 0.945, f"{first:%d %b %Y} to {last:%d %b %Y} - programme {prog} - {title}",
             fontsize=9, color="0.3")


def _page_adherence(pdf_figs: list, sessions, rx, code, tz, first, last, weeks) -> None:
    per_day = sets_per_day(sessions, tz)
    n_weeks = (last - first).days // 7 + 1
    grid = np.full((n_weeks, 7), np.nan)
    for w in range(n_weeks):
        for d in range(7):
            day = first + timedelta(days=7 * w + d)
            if day <= last:
                grid[w, d] = per_day.get(day, 0)
    fig = plt.figure(figsize=A4)
    _header(fig, code, rx, first, last, "adherence")
    ax = fig.add_axes((0.12, 0.50, 0.62, 0.40))
    cmap = plt.get_cmap("YlGn").with_extremes(bad="0.93")
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=TARGET_SETS_PER_DAY, aspect="auto")
    for w in range(n_weeks):
        for d in range(7):
            if not np.isnan(grid[w, d]):
                v = int(grid[w, d])
                ax.text(d, w, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v >= 4 else "black")
    ax.set_xticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    ax.set_yticks(range(n_weeks), [f"wk {w + 1}\n{first + timedelta(weeks=w):%d %b}" for w in range(n_weeks)],
                  fontsize=8)
    ax.set_title(f"Sets completed per day (leaflet: at least {TARGET_SETS_PER_DAY} moments a day)", fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    cb.set_label("sets")
    ax2 = fig.add_axes((0.12, 0.10, 0.80, 0.30))
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    counts = [per_day.get(d, 0) for d in days]
    ax2.bar(days, counts, color="#4a8", width=0.8)
    ax2.axhline(TARGET_SETS_PER_DAY, color="#c33", lw=1, ls="--", label=f"{TARGET_SETS_PER_DAY} a day")
    active = [c for c in counts if c]
    mean = float(np.mean(counts)) if counts else 0.0
    ax2.set_title(f"Sets per day: mean {mean:.1f}, {sum(c >= TARGET_SETS_PER_DAY for c in counts)} of "
                  f"{len(counts)} days at {TARGET_SETS_PER_DAY}+, {len(counts) - len(active)} days without training",
                  fontsize=10)
    ax2.set_ylabel("sets")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%d %b"))
    ax2.tick_params(axis="x", labelsize=7, labelrotation=45)
    pdf_figs.append(fig)


def _page_trends(pdf_figs: list, sessions, rx, code, tz, first, last, weeks) -> None:
    fig = plt.figure(figsize=A4)
    _header(fig, code, rx, first, last, "strength, endurance and targets")
    ax = fig.add_axes((0.12, 0.68, 0.80, 0.24))
    cal = [(datetime.fromisoformat(s["started_utc"]).astimezone(tz), s["mvc_cmh2o"]) for s in sessions
           if s["mvc_cmh2o"] is not None]
    for lo, hi, name, colour in ((7.5, 14.5, "very weak", "#fde0dd"), (14.6, 26.5, "weak", "#fcc5c0"),
                                 (26.6, 41.5, "moderate", "#fff7bc"), (41.6, 60.5, "good", "#d9f0a3"),
                                 (60.6, 80, "strong", "#addd8e")):
        ax.axhspan(lo, hi, color=colour, alpha=0.6, lw=0)
        ax.text(1.005, (lo + hi) / 2, name, transform=ax.get_yaxis_transform(), fontsize=7, va="center",
                clip_on=True)
    if cal:
        t, v = zip(*cal, strict=True)
        ax.plot(t, v, ".", color="#236", ms=4, label="MVC at each session's calibration")
        perfect = [(datetime.fromisoformat(s["started_utc"]).astimezone(tz), s["perfect"]["power_cmh2o"])
                   for s in sessions if s["perfect"]]
        if perfect:
            pt, pv = zip(*perfect, strict=True)
            ax.plot(pt, pv, "D-", color="#c50", ms=5, label="PERFECT power")
        top = max(v) * 1.25
        ax.set_ylim(max(0, min(v) * 0.6), max(top, 30))
    ax.set_ylabel("cmH2O above rest")
    ax.set_title("Maximal squeeze (MVC) and Modified Oxford band (Angelo et al. 2017)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(axis="x", labelsize=7)

    ax = fig.add_axes((0.12, 0.38, 0.80, 0.22))
    perf = [(s["perfect"]["day"], s["perfect"]) for s in sessions if s["perfect"]]
    if perf:
        labels = [d for d, _ in perf]
        x = np.arange(len(perf))
        ax.plot(x, [p["endurance_s"] for _, p in perf], "o-", label="Endurance (s at >= 50 %MVC)")
        ax.plot(x, [p["repetitions"] for _, p in perf], "s-", label="Repetitions of that hold")
        ax.plot(x, [p["fast"] for _, p in perf], "^-", label="Fast 1-s contractions")
        ax.set_xticks(x, labels, fontsize=7, rotation=30)
        ax.set_ylim(0, 10.8)
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no PERFECT assessment stored", ha="center", transform=ax.transAxes)
    ax.set_title("Weekly PERFECT assessment (Laycock & Jerwood 2001; each counted up to 10)", fontsize=10)

    ax = fig.add_axes((0.12, 0.07, 0.80, 0.22))
    if weeks:
        week_x = [w.index for w in weeks]
        exs = sorted({ex for w in weeks for ex in w.targets if any(ex in ww.reps for ww in weeks)})
        for ex in exs:
            ax.step(week_x, [w.targets.get(ex, np.nan) for w in weeks], where="mid", label=f"{ex} target %MVC")
        ax.set_ylabel("%MVC")
        ax.set_xlabel("week")
        ax.set_xticks(week_x)
        walks = [(w.index, w.walk_s) for w in weeks if w.walk_s is not None and w.reps.get("ex7")]
        jumps = [(w.index, w.jumps_best) for w in weeks if w.jumps_best is not None]
        ax2 = ax.twinx()
        if walks:
            ax2.plot(*zip(*walks, strict=True), "k--", lw=1, label="ex7 walking time (s)")
        if jumps:
            ax2.plot(*zip(*jumps, strict=True), "kx", ms=7, label="ex8 jumps (best)")
        ax2.set_ylabel("s / jumps")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", ncol=2)
        rule = "on" if rx and rx.progression.enabled else "off"
        ax.set_title(f"Targets week by week (progression rule {rule}), walking time and jumps", fontsize=10)
    pdf_figs.append(fig)


def _page_quality(pdf_figs: list, sessions, rx, code, tz, first, last, weeks) -> None:
    fig = plt.figure(figsize=A4)
    _header(fig, code, rx, first, last, "repetition quality per exercise")
    by_ex: dict[str, list[dict]] = defaultdict(list)
    for s in sessions:
        if s["programme"] != PERFECT_PROGRAMME:
            for r in s["reps"]:
                by_ex[r["exercise"]].append(r)
    order: list[str] = [e for e in ("awareness", "ex1", "ex2", "ex3", "ex4", "ex5", "ex6", "ex7", "ex8") if e in by_ex]
    order += sorted(set(by_ex) - set(order))
    ax = fig.add_axes((0.12, 0.56, 0.80, 0.34))
    x = np.arange(len(order))
    if order:
        complete = [100 * np.mean([r["status"] == "complete" for r in by_ex[e]]) for e in order]
        met = [100 * np.mean([rep_met(r) for r in by_ex[e]]) for e in order]
        held = [100 * np.mean([(r["held_s"] or 0) / r["hold_asked_s"] for r in by_ex[e] if r["hold_asked_s"]]
                              or [np.nan]) for e in order]
        released = [100 * np.mean([bool(r["release_complete"]) for r in by_ex[e]]) for e in order]
        for k, (vals, name) in enumerate(((complete, "completed"), (met, "met target"),
                                          (held, "hold time kept"), (released, "released fully"))):
            ax.bar(x + (k - 1.5) * 0.2, vals, 0.2, label=name)
        ax.set_xticks(x, [f"{e}\n(n={len(by_ex[e])})" for e in order], fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of repetitions")
        ax.legend(fontsize=7, ncol=4, loc="lower left")
    ax.set_title("How the repetitions went", fontsize=10)
    ax = fig.add_axes((0.12, 0.10, 0.80, 0.36))
    # ex7 holds a third of the target and ex8's landings spike the pressure: their goals are
    # walking time and jumps (page 2), so their peaks are not compared with the target here.
    order = [e for e in order if e not in ("ex7", "ex8")]
    if order:
        data = [[(r["peak_pct"] or 0) / max(1.0, r["target_pct"]) * 100 for r in by_ex[e]] for e in order]
        ax.boxplot(data, tick_labels=order, showfliers=False)
        ax.axhline(100, color="#c33", lw=1, ls="--")
        ax.axhline(90, color="#c33", lw=0.6, ls=":")
        ax.set_ylabel("peak as % of the target")
        steady = [np.nanmean([r["steadiness_pct"] for r in by_ex[e] if r["hold_asked_s"]] or [np.nan]) for e in order]
        for i, sd in enumerate(steady, start=1):
            if not np.isnan(sd):
                ax.text(i, ax.get_ylim()[1] * 0.97, f"SD {sd:.1f}", ha="center", va="top", fontsize=7)
    ax.set_title("Peak reached against the target (dashed: target, dotted: 90 %); "
                 "SD: steadiness of the holds in %MVC", fontsize=9)
    pdf_figs.append(fig)


def _trace(db_path: Path, session_id: int) -> tuple[np.ndarray, list[tuple], list[tuple]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        samples = np.array(db.execute("SELECT t, cmh2o, pct FROM samples WHERE session_id=? ORDER BY t",
                                      (session_id,)).fetchall(), dtype=float).reshape(-1, 3)
        events = [(t, kind, json.loads(d)) for t, kind, d in db.execute(
            "SELECT t, kind, data FROM events WHERE session_id=? AND kind IN ('phase', 'say') ORDER BY t",
            (session_id,))]
    finally:
        db.close()
    phases = [(e[2]["start"], e[2]["end"], e[2]["phase"], e[2].get("exercise"), e[2].get("rep"))
              for e in events if e[1] == "phase"]
    says = [(e[2].get("at", e[0]), e[2]["phrase"]) for e in events if e[1] == "say"]
    return samples, phases, says


PHASE_COLOURS = {"contract": "#fdd49e", "hold": "#fc8d59", "move": "#ef6548", "release": "#d4eeff",
                 "calibrate_squeeze": "#ccc"}


def _page_traces(pdf_figs: list, db_path, sessions, rx, code, tz, first, last) -> None:
    candidates = [s for s in sessions if s["programme"] != PERFECT_PROGRAMME and s["reps"]]
    if not candidates:
        return
    picks = [candidates[0], candidates[len(candidates) // 2], candidates[-1]]
    fig = plt.figure(figsize=A4)
    _header(fig, code, rx, first, last, "representative pressure traces")
    for k, s in enumerate(picks):
        samples, phases, says = _trace(db_path, s["id"])
        reps = [r for r in s["reps"] if r["status"] == "complete"][:3] or s["reps"][:3]
        t0 = reps[0]["t_start"] - 1.0
        t1 = reps[-1]["t_end"] + 0.5
        ax = fig.add_axes((0.10, 0.68 - k * 0.30, 0.84, 0.22))
        for start, end, kind, _ex, _rep in phases:
            if end > t0 and start < t1 and kind in PHASE_COLOURS:
                ax.axvspan(max(start, t0), min(end, t1), color=PHASE_COLOURS[kind], alpha=0.6, lw=0)
        m = (samples[:, 0] >= t0) & (samples[:, 0] <= t1)
        ax.plot(samples[m, 0], samples[m, 1], color="#123", lw=1.1, label="probe pressure")
        mvc = s["mvc_cmh2o"]
        rest = s["rest_cmh2o"]
        if mvc and rest is not None:
            target = reps[0]["target_pct"]
            ax.axhline(rest + mvc * target / 100, color="#c33", ls="--", lw=0.8, label=f"target {target:.0f} %MVC")
            ax.axhline(rest, color="0.5", ls=":", lw=0.8, label="rest")
        ymax = ax.get_ylim()[1]
        shown = [(a, p) for a, p in says if t0 <= a <= t1 and not p.startswith("count.")]
        for i, (at, phrase) in enumerate(shown):
            ax.axvline(at, color="#363", lw=0.6)
            ax.text(at, ymax - (i % 3) * (ymax * 0.045), " " + phrase.replace("cue.", ""), fontsize=6,
                    color="#363", va="top", rotation=0, clip_on=True)
        when = datetime.fromisoformat(s["started_utc"]).astimezone(tz)
        ex = reps[0]["exercise"]
        ax.set_title(f"{when:%a %d %b %H:%M} - {ex}, repetitions {reps[0]['rep']}-{reps[-1]['rep']} "
                     f"(MVC {mvc or 0:.1f} cmH2O)", fontsize=9)
        ax.set_xlim(t0, t1)
        ax.set_ylabel("cmH2O")
        ax.set_xlabel("session time (s); green lines: spoken cues; shading: contract, hold, release", fontsize=7)
        ax.legend(fontsize=6, loc="upper right")
    pdf_figs.append(fig)


def write_report(db_path: Path, out_dir: Path, code: str, rx: Prescription | None) -> list[Path]:
    """Write report.pdf and report-<n>.png pages; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = load_sessions(db_path)
    if not sessions:
        raise ValueError("no stored sessions to report on")
    tz = rx.tz if rx else ZoneInfo("UTC")
    weeks, first, last = _weeks(sessions, rx, tz)
    figs: list = []
    _page_adherence(figs, sessions, rx, code, tz, first, last, weeks)
    _page_trends(figs, sessions, rx, code, tz, first, last, weeks)
    _page_quality(figs, sessions, rx, code, tz, first, last, weeks)
    _page_traces(figs, db_path, sessions, rx, code, tz, first, last)
    pdf_path = out_dir / "report.pdf"
    paths = [pdf_path]
    with PdfPages(pdf_path, metadata={"Title": f"Pelvic floor training report {code}"}) as pdf:
        for i, fig in enumerate(figs, start=1):
            fig.text(0.94, 0.02, f"page {i}/{len(figs)}", ha="right", fontsize=7, color="0.4")
            pdf.savefig(fig)
            png = out_dir / f"report-{i}.png"
            fig.savefig(png, dpi=80)
            paths.append(png)
            plt.close(fig)
    return paths

