"""`appliance clinic report` on two weeks the device trained: every figure of the summary and
every chart's series against the database, in Dutch and English, PDF, PNG, CSV and FHIR."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from datetime import date, datetime, timedelta
from statistics import median
from zoneinfo import ZoneInfo

import pytest
from clinic_fixture import CODE, filled_state_dir

from appliance.cli import main
from appliance.clinic.enrolment import current_prescription, db_path, status
from appliance.clinic.report import strength_series, targets_by_column
from appliance.clinic.summary import TECHNIQUE_WARNINGS, figures, summarise
from appliance.clinic.summary_page import interpretation
from appliance.clinic.tables import fhir_bundle
from appliance.clinic.wording import Wording, placeholders

TZ = ZoneInfo("Europe/Brussels")
# What an internal key looks like: a dotted phrase key, a snake_case id, an exercise id.
INTERNAL_KEY = re.compile(r"\b(?:[a-z]+\.[a-z_]+(?:\.[a-z_]+)*|[a-z]+_[a-z_]+|ex[1-8]|awareness)\b")


@pytest.fixture(scope="module")
def two_weeks(tmp_path_factory):
    """Two weeks as the device trained them (clinic_fixture: the device on a simulated clock)."""
    return filled_state_dir(tmp_path_factory.mktemp("report"), days=14)


@pytest.fixture(scope="module")
def report_nl(two_weeks, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-nl")
    assert main(["clinic", "report", "--state-dir", str(two_weeks), "--out", str(out)]) == 0
    return out


def _db(state) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path(state)}?mode=ro", uri=True)


def _summary(state, lang: str | None = None):
    return summarise(db_path(state), CODE, current_prescription(state), lang)


def _plans(db: sqlite3.Connection) -> dict[int, dict]:
    return {sid: json.loads(d) for sid, d in db.execute("SELECT session_id, data FROM events WHERE kind='plan'")}


def _week_of(started_utc: str, monday: date) -> int:
    return (datetime.fromisoformat(started_utc).astimezone(TZ).date() - monday).days // 7 + 1


def _page_one_text(pdf, tmp_path) -> str:
    out = tmp_path / "page1.txt"
    subprocess.run(["pdftotext", "-f", "1", "-l", "1", "-layout", str(pdf), str(out)], check=True)
    return out.read_text()


# --- Page 1's figures against the database ---------------------------------------------------------

def test_adherence_counts_each_week_s_main_sessions_and_short_sets_against_the_prescription(two_weeks):
    s = _summary(two_weeks)
    rx = current_prescription(two_weeks)
    monday = s.weeks[0].start
    db = _db(two_weeks)
    plans = _plans(db)
    done: dict[tuple[int, str], int] = defaultdict(int)
    for sid, started, complete in db.execute(
            "SELECT s.id, s.started_utc, (SELECT COUNT(*) FROM repetitions r WHERE r.session_id=s.id "
            "AND r.status='complete') FROM sessions s"):
        if complete:
            kind = "short" if plans[sid]["short_set"] else "main"
            done[(_week_of(started, monday), kind)] += 1
    assert len(s.weeks) == 2 and [w.days for w in s.weeks] == [7, 7]
    for w in s.weeks:
        assert w.main_done == done[(w.index, "main")] and w.main_prescribed == 7
        assert w.short_done == done[(w.index, "short")] and w.short_prescribed == 7 * len(rx.reminders.times)
        assert w.short_pct == pytest.approx(100 * w.short_done / w.short_prescribed)
    assert s.main_pct == pytest.approx(100 * sum(w.main_done for w in s.weeks) / 14)


def test_mvc_above_rest_is_each_week_s_median_of_the_squeezes_measured(two_weeks):
    s = _summary(two_weeks)
    monday = s.weeks[0].start
    db = _db(two_weeks)
    plans = _plans(db)
    measured: dict[int, list[float]] = defaultdict(list)
    for sid, data in db.execute("SELECT session_id, data FROM events WHERE kind='calibration'"):
        d = json.loads(data)
        started = db.execute("SELECT started_utc FROM sessions WHERE id=?", (sid,)).fetchone()[0]
        if d.get("squeezes_cmh2o") and not plans[sid]["postop"]:
            measured[_week_of(started, monday)].append(d["mvc_cmh2o"])
    assert all(measured[w.index] for w in s.weeks)  # a maximal squeeze every day the patient trained
    for w in s.weeks:
        assert w.mvc_cmh2o == pytest.approx(round(median(measured[w.index]), 1))
        assert w.mvc_measurements == len(measured[w.index])
    change = s.strength
    assert change is not None and (change.first_week, change.last_week) == (1, 2)
    assert change.delta_cmh2o == pytest.approx(s.weeks[1].mvc_cmh2o - s.weeks[0].mvc_cmh2o)


def test_perfect_is_shown_as_the_device_stored_it_each_week(two_weeks):
    s = _summary(two_weeks)
    db = _db(two_weeks)
    stored = [json.loads(d) for (d,) in db.execute(
        "SELECT e.data FROM events e JOIN sessions s ON s.id = e.session_id WHERE e.kind='perfect' "
        "ORDER BY s.started_utc")]
    assert len(stored) == 2  # one PERFECT a week, on the prescription's Monday
    assert [p for _, p in s.perfects] == stored
    assert [w for w, _ in s.perfects] == [1, 2]


def test_endurance_is_the_mean_time_held_at_target_in_the_holds(two_weeks):
    s = _summary(two_weeks)
    monday = s.weeks[0].start
    db = _db(two_weeks)
    plans = _plans(db)
    held: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for sid, started, ex, h, asked in db.execute(
            "SELECT r.session_id, s.started_utc, r.exercise, r.held_s, r.hold_asked_s FROM repetitions r "
            "JOIN sessions s ON s.id = r.session_id WHERE r.status='complete' AND r.hold_asked_s > 0 "
            "AND r.peak_cmh2o IS NOT NULL"):
        if ex not in ("ex7", "ex8") and not plans[sid]["perfect"]:
            held[_week_of(started, monday)].append((h or 0.0, asked))
    for w in s.weeks:
        reps = held[w.index]
        assert w.hold_reps == len(reps) > 0
        assert w.held_s == pytest.approx(round(sum(h for h, _ in reps) / len(reps), 1))
        assert w.hold_asked_s == pytest.approx(round(sum(a for _, a in reps) / len(reps), 1))


def test_technique_problems_per_week_are_the_warnings_the_device_spoke_and_the_releases(two_weeks):
    s = _summary(two_weeks)
    monday = s.weeks[0].start
    db = _db(two_weeks)
    spoken: dict[tuple[int, str], int] = defaultdict(int)
    for started, data in db.execute("SELECT s.started_utc, e.data FROM events e JOIN sessions s "
                                    "ON s.id = e.session_id WHERE e.kind='warning'"):
        spoken[(_week_of(started, monday), json.loads(data)["warning"])] += 1
    not_released: dict[int, int] = defaultdict(int)
    plans = _plans(db)
    for sid, started, ex, released in db.execute(
            "SELECT r.session_id, s.started_utc, r.exercise, r.release_complete FROM repetitions r "
            "JOIN sessions s ON s.id = r.session_id WHERE r.release_complete IS NOT NULL"):
        if ex not in ("ex7", "ex8") and not plans[sid]["perfect"]:
            not_released[_week_of(started, monday)] += released == 0
    for w in s.weeks:
        assert w.warnings == {k: spoken[(w.index, k)] for k in TECHNIQUE_WARNINGS}
        assert w.incomplete_release == not_released[w.index]


def test_the_three_sentences_say_stronger_or_not_adherence_and_what_to_look_at(two_weeks):
    s = _summary(two_weeks, "nl")
    words = Wording.load("nl")
    sentences = interpretation(s, words)
    assert len(sentences) == 3
    change = s.strength
    expected = {"better": "Sterker", "same": "Ongeveer gelijk", "worse": "Zwakker"}[change.verdict]
    assert sentences[0].startswith(expected) and words.num(change.first_cmh2o) in sentences[0]
    assert f"{s.main_pct:.0f} %" in sentences[1] and f"{s.short_pct:.0f} %" in sentences[1]
    assert not any(INTERNAL_KEY.search(x) for x in sentences)


# --- The charts' series against the database -----------------------------------------------------

def test_targets_chart_shows_the_targets_stored_with_each_repetition(two_weeks):
    s = _summary(two_weeks)
    columns, table = targets_by_column(s)
    db = _db(two_weeks)
    plans = _plans(db)
    applied: dict[tuple[str, date], list[float]] = defaultdict(list)
    for sid, started, ex, target in db.execute("SELECT r.session_id, s.started_utc, r.exercise, r.target_pct "
                                               "FROM repetitions r JOIN sessions s ON s.id = r.session_id"):
        if not plans[sid]["perfect"] and ex not in ("ex7", "ex8"):  # probe out: no strength target
            applied[(ex, datetime.fromisoformat(started).astimezone(TZ).date())].append(target)
    assert not {"ex7", "ex8"} & set(targets_by_column(s)[1])
    assert [a for a, _ in columns] == [s.first_day + timedelta(days=i) for i in range(14)]
    for ex, cells in table.items():
        for (day, _), cell in zip(columns, cells, strict=True):
            stored = applied.get((ex, day))
            assert cell == ((min(stored), max(stored)) if stored else None)
    # The plan said the same targets as the repetitions carry (as prescribed: the coach may
    # have stepped a set's target, and then stored the prescribed one beside it).
    for sid, plan in plans.items():
        for (target,) in db.execute("SELECT DISTINCT COALESCE(target_prescribed_pct, target_pct) FROM repetitions"
                                    " WHERE session_id=? AND exercise='ex1'", (sid,)):
            assert target == plan["targets"]["ex1"]


def test_movement_repetitions_are_marked_and_count_with_the_peak_outside_the_movement(two_weeks, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(two_weeks, state)
    db = sqlite3.connect(db_path(state))
    if "artefact" not in {row[1] for row in db.execute("PRAGMA table_info(repetitions)")}:
        db.execute("ALTER TABLE repetitions ADD COLUMN artefact INTEGER")  # a database from before the flag
    flagged = [r for (r,) in db.execute("SELECT id FROM repetitions WHERE exercise='ex1' ORDER BY id LIMIT 7")]
    # the device stores a flagged repetition's peak outside the movement: the squeeze's own
    db.executemany("UPDATE repetitions SET artefact=1, peak_cmh2o=999 WHERE id=?", [(r,) for r in flagged])
    blank = db.execute("SELECT id FROM repetitions WHERE exercise='ex1' ORDER BY id DESC LIMIT 1").fetchone()[0]
    db.execute("UPDATE repetitions SET peak_cmh2o=NULL, peak_pct=NULL WHERE id=?", (blank,))
    db.commit()
    db.close()
    s = _summary(state)
    series = strength_series(s)
    assert len(series["artefacts"]) == 7 and all(v == 999 for _, v in series["artefacts"])
    assert max(v for _, v in series["peaks"]) == 999  # they count: their stored peak is the squeeze's
    assert sum(w.artefact_reps for w in s.weeks) == 7
    db = _db(two_weeks)
    holds = sum(db.execute("SELECT status='complete' AND hold_asked_s > 0 FROM repetitions WHERE id=?",
                           (r,)).fetchone()[0] for r in [blank])
    assert holds > 0
    assert sum(w.hold_reps for w in s.weeks) == sum(w.hold_reps for w in _summary(two_weeks).weeks) - holds


def test_post_operative_weeks_give_their_dates_and_no_maximal_squeeze(two_weeks, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(two_weeks, state)
    rx = state / "prescription.toml"
    rx.write_text(rx.read_text().replace("[patient]", "[patient]\nsurgery_date = 2026-01-26", 1))
    db = sqlite3.connect(db_path(state))
    first_week = [sid for sid, started in db.execute("SELECT id, started_utc FROM sessions")
                  if datetime.fromisoformat(started).astimezone(TZ).date() < date(2026, 3, 9)]
    for sid in first_week:
        (data,) = db.execute("SELECT data FROM events WHERE session_id=? AND kind='plan'", (sid,)).fetchone()
        db.execute("UPDATE events SET data=? WHERE session_id=? AND kind='plan'",
                   (json.dumps({**json.loads(data), "postop": True}), sid))
    db.commit()
    db.close()
    s = _summary(state, "nl")
    assert (s.surgery_date, s.unlock_date) == (date(2026, 1, 26), date(2026, 3, 9))
    assert s.postop_days == 7 and s.weeks[0].postop_sessions == len(first_week)
    assert s.weeks[0].mvc_cmh2o is None and s.strength is None  # a reference squeeze is not an MVC
    out = tmp_path / "out"
    assert main(["clinic", "report", "--state-dir", str(state), "--out", str(out)]) == 0
    text = _page_one_text(out / "report.pdf", tmp_path)
    assert "operatie 26 jan 2026" in text and "volledig programma vanaf 9 mrt 2026" in text
    assert "zachte referentieknijp" in text


# --- The pages -------------------------------------------------------------------------------------

def test_a_period_after_the_post_operative_weeks_does_not_count_zero_days_of_them(two_weeks):
    from dataclasses import replace

    from appliance.clinic.summary_page import _facts

    s = _summary(two_weeks, "nl")
    w = Wording.load("nl")
    label = w("summary.postop")
    after = replace(s, surgery_date=date(2026, 1, 5), unlock_date=date(2026, 2, 16))
    assert after.postop_days == 0  # every session of the period on the full programme
    (fact,) = [v for k, v in _facts(after, w) if k == label]
    assert fact == "operatie 5 jan 2026; volledig programma sinds 16 feb 2026"
    # (a period with post-operative days names them: test_post_operative_weeks_give_their_dates...)


def test_a_period_without_technique_problems_says_so_instead_of_a_flat_line_at_zero(two_weeks):
    from dataclasses import replace

    import matplotlib.pyplot as plt

    from appliance.clinic.report import page_quality

    s = _summary(two_weeks, "nl")
    clean = replace(s, weeks=[replace(wk, warnings=dict.fromkeys(wk.warnings, 0), incomplete_release=0)
                              for wk in s.weeks])
    w = Wording.load("nl")
    for summary, empty in ((clean, True), (s, False)):
        fig = page_quality(summary, w)
        technique = next(ax for ax in fig.axes if ax.get_title(loc="left") == w("chart.technique_title"))
        texts = [t.get_text() for t in technique.texts]
        assert technique.get_ylim()[0] == 0 and technique.get_ylim()[1] >= 1  # counts, never below zero
        assert (w("chart.technique_empty") in texts) is empty
        plt.close(fig)


def test_what_the_device_said_over_the_traces_ends_inside_the_chart(two_weeks):
    import matplotlib.pyplot as plt

    from appliance.clinic.traces import page_traces

    s = _summary(two_weeks, "nl")
    w = Wording.load("nl")
    fig = page_traces(s, w, db_path(two_weeks), current_prescription(two_weeks).tz)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = 0
    for ax in fig.axes:
        right = ax.get_window_extent(renderer).x1
        for t in ax.texts:
            labels += 1
            assert t.get_window_extent(renderer).x1 <= right + 1.0, t.get_text()  # not cut off mid-word
    assert labels >= 10
    plt.close(fig)


def test_report_on_two_weeks_writes_five_a4_pages_that_render(report_nl, tmp_path):
    pdf = report_nl / "report.pdf"
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+5$", info, re.M) and "595.44 x 841.68 pts (A4)" in info
    assert sorted(p.name for p in report_nl.glob("report-*.png")) == [f"report-{i}.png" for i in range(1, 6)]
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 5 and all(p.stat().st_size > 5000 for p in pages)


def test_page_one_is_the_dutch_summary_in_cmh2o_without_internal_keys(two_weeks, report_nl, tmp_path):
    text = _page_one_text(report_nl / "report.pdf", tmp_path)
    s = _summary(two_weeks, "nl")
    w = Wording.load("nl")
    for label in ("Hoofdsessies", "Korte reeksen", "MVC boven rust", "Vastgehouden op doel", "PERFECT (gemeten)",
                  "Techniekwaarschuwingen", "Onvolledig ontspannen", "Samengevat"):
        assert label in text
    assert CODE in text and "2 mrt 2026 tot 15 mrt 2026 (14 dagen)" in text
    for wk in s.weeks:
        assert f"{w.num(wk.mvc_cmh2o)} cmH2O" in text and w.band(wk.oxford_band) in text
        assert f"{wk.short_done} van {wk.short_prescribed}" in text
    assert not INTERNAL_KEY.findall(text), INTERNAL_KEY.findall(text)


def test_lang_en_writes_the_report_in_english(two_weeks, tmp_path):
    out = tmp_path / "en"
    assert main(["clinic", "report", "--state-dir", str(two_weeks), "--out", str(out), "--lang", "en"]) == 0
    text = _page_one_text(out / "report.pdf", tmp_path)
    assert "Main sessions" in text and "MVC above rest" in text and "In short" in text
    assert "Hoofdsessies" not in text
    assert not INTERNAL_KEY.findall(text), INTERNAL_KEY.findall(text)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["label"] for r in rows if r["figure"] == "main_pct"} == {"main sessions in % of the prescription"}


def test_report_refuses_without_an_enrolled_patient(tmp_path, capsys):
    assert main(["clinic", "report", "--state-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no patient is enrolled" in capsys.readouterr().err


# --- CSV and FHIR ----------------------------------------------------------------------------------

def test_summary_csv_and_fhir_carry_the_figures_of_page_one(two_weeks, report_nl):
    s = _summary(two_weeks)
    expected = {(f.key, f.week): f.value for f in figures(s)}
    rows = list(csv.DictReader((report_nl / "summary.csv").open()))
    assert {(r["figure"], int(r["week"])): r["value"] for r in rows} == {k: str(v) for k, v in expected.items()}
    bundle = json.loads((report_nl / "observations.fhir.json").read_text())
    fhir = {}
    for e in bundle["entry"]:
        res = e["resource"]
        code = res["code"]["coding"][0]["code"]
        if code.startswith("summary-"):
            week = int(res["note"][0]["text"].split()[-1]) if "note" in res else 0
            value = (res.get("valueQuantity", {}).get("value") if "valueQuantity" in res else
                     res.get("valueInteger") if "valueInteger" in res else
                     res["valueCodeableConcept"]["coding"][0]["code"].removeprefix("oxford-"))
            fhir[(code.removeprefix("summary-"), week)] = value
    assert fhir == expected
    assert ("mvc_cmh2o", 2) in fhir and ("perfect_power", 1) in fhir and ("main_pct", 0) in fhir


def test_fhir_mvc_observations_are_the_squeezes_measured(two_weeks, report_nl):
    bundle = json.loads((report_nl / "observations.fhir.json").read_text())
    mvc = [e["resource"]["valueQuantity"]["value"] for e in bundle["entry"]
           if e["resource"]["code"]["coding"][0]["code"] == "mvc-squeeze-pressure"]
    db = _db(two_weeks)
    measured = [json.loads(d)["mvc_cmh2o"] for (d,) in db.execute(
        "SELECT data FROM events WHERE kind='calibration' ORDER BY session_id") if json.loads(d).get("squeezes_cmh2o")]
    assert sorted(mvc) == sorted(round(v, 2) for v in measured)
    assert len(mvc) < status(two_weeks).sessions  # short sets carry the day's calibration over
    assert all(e["resource"]["subject"]["identifier"]["value"] == CODE for e in bundle["entry"])


def test_fhir_bundle_validates_against_the_r4_structure(two_weeks):
    r4b = pytest.importorskip("fhir.resources.R4B.bundle", reason="fhir.resources is a dev dependency")
    s = _summary(two_weeks)
    bundle = fhir_bundle(s, Wording.load("nl"))
    parsed = r4b.Bundle.model_validate(bundle)
    assert len(parsed.entry) == len(bundle["entry"]) > 50
    broken = json.loads(json.dumps(bundle))
    del broken["entry"][0]["resource"]["code"]  # an Observation says what it observes: the validator must refuse
    with pytest.raises(ValueError):
        r4b.Bundle.model_validate(broken)


# --- The words -------------------------------------------------------------------------------------

def test_dutch_and_english_report_catalogues_have_the_same_keys_and_blanks():
    nl, en = Wording.load("nl"), Wording.load("en")
    assert nl.keys() == en.keys()
    for key in nl.keys():
        if isinstance(nl.texts[key], str):
            assert placeholders(nl.texts[key]) == placeholders(en.texts[key]), key
        else:
            assert len(nl.texts[key]) == len(en.texts[key]), key


def test_every_exercise_of_the_leaflet_has_its_name_in_both_languages():
    from appliance.coach.programme import load_programme

    ids = {e.id for name in ("leaflet", "postop", "perfect", "stim") for e in load_programme(name).exercises}
    for lang in ("nl", "en"):
        w = Wording.load(lang)
        assert {i: w.exercise(i) != i for i in ids} == dict.fromkeys(ids, True)


def test_stimulation_sessions_and_their_stops_are_counted_from_the_line_s_events(two_weeks, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(two_weeks, state)
    db = sqlite3.connect(db_path(state))
    plans = _plans(db)
    mains = sorted(sid for sid, plan in plans.items() if not plan["short_set"] and not plan["perfect"])[:3]
    for k, sid in enumerate(mains):
        db.execute("INSERT INTO events(session_id, t, kind, data) VALUES (?, 50, 'stim', ?)",
                   (sid, json.dumps({"state": "on", "reason": "", "mode": "cyclic", "work_phase": 1})))
        if k == 1:  # the patient said stop during the second
            db.execute("INSERT INTO events(session_id, t, kind, data) VALUES (?, 60, 'stim', ?)",
                       (sid, json.dumps({"state": "interrupted", "reason": "command:stop:voice", "mode": "cyclic",
                                         "work_phase": 2})))
    db.commit()
    db.close()
    s = _summary(state, "nl")
    assert s.stim_sessions == 3 and s.stim_stops == ("command:stop:voice",)
    out = tmp_path / "out"
    assert main(["clinic", "report", "--state-dir", str(state), "--out", str(out)]) == 0
    text = _page_one_text(out / "report.pdf", tmp_path)
    assert "patiënt zei stop of drukte op de knop" in text and not INTERNAL_KEY.findall(text)
    rows = {(r["figure"], r["week"]): r["value"] for r in csv.DictReader((out / "summary.csv").open())}
    assert int(rows[("stim_sessions", "1")]) + int(rows[("stim_sessions", "2")]) == 3


def test_the_terminal_says_the_mvc_is_above_rest():
    import io

    from appliance.events import Event
    from appliance.simulation.timeline import ConsoleTimeline

    out = io.StringIO()
    view = ConsoleTimeline(out)
    view.emit(Event(12.0, "calibration", {"rest_cmh2o": 26.8, "mvc_cmh2o": 20.7, "oxford_band": "weak"}))
    assert "rest 26.8 cmH2O, MVC 20.7 cmH2O above rest (weak)" in out.getvalue()


def test_what_the_device_said_over_the_traces_is_readable_no_two_sentences_touching(two_weeks):
    import matplotlib.pyplot as plt

    from appliance.clinic.traces import page_traces

    fig = page_traces(_summary(two_weeks, "nl"), Wording.load("nl"), db_path(two_weeks),
                      current_prescription(two_weeks).tz)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
        assert len(boxes) >= 8
        for i, (a, ba) in enumerate(boxes):
            for b, bb in boxes[i + 1:]:
                assert not ba.overlaps(bb), (a, b)
    plt.close(fig)


@pytest.mark.parametrize(("lang", "definition"), [("nl", "Onvolledig ontspannen: 1,5 s na het begin van de rust"),
                                                  ("en", "Incomplete release: 1.5 s into the rest")])
def test_page_one_says_what_incomplete_release_means(two_weeks, tmp_path, lang, definition):
    """The figure is judged 1.5 s into the rest (appliance.sensor.signal): the page says so."""
    out = tmp_path / "report"
    assert main(["clinic", "report", "--state-dir", str(two_weeks), "--out", str(out), "--lang", lang]) == 0
    text = " ".join(_page_one_text(out / "report.pdf", tmp_path).split())
    assert definition in text
    assert ("10 % van de MVC" if lang == "nl" else "10 % of the MVC") in text


def test_dense_speech_over_a_trace_never_overlaps_and_ends_inside_the_chart():
    """Breath cues every two seconds and a correction among them (exercise 2 with a fault):
    the rows of what was said never touch, and every label ends inside the chart."""
    import matplotlib.pyplot as plt

    from appliance.clinic.traces import _said_labels
    from appliance.voice.phrases import Catalogue

    cat = Catalogue.load("nl")
    keys = ["cue.breathe_in", "cue.exhale_contract", "breath.in_1", "breath.out_hold", "correct.push_down_explain",
            "breath.in_2", "breath.out_hold", "breath.in_3", "cue.release", "caution.no_abdomen", "cue.last_rep"]
    said = [(10.0 + 1.6 * i, cat.text(k), k.startswith("correct.")) for i, k in enumerate(keys)]
    fig = plt.figure(figsize=(8.27, 11.69))
    ax = fig.add_axes((0.10, 0.6, 0.84, 0.2))
    ax.set_xlim(9.0, 70.0)  # three repetitions, as on the report's last page
    _said_labels(ax, said)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    assert len(boxes) >= 8  # shortened, rarely left out
    assert any(t.get_fontweight() == "bold" for t in ax.texts)  # the correction stands out
    for i, (a, ba) in enumerate(boxes):
        assert ba.x1 <= right + 1.0, a
        for b, bb in boxes[i + 1:]:
            assert not ba.overlaps(bb), (a, b)
    plt.close(fig)
