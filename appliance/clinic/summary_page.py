"""The report's first page: the lending period read in one minute.

The facts (dates, programme, post-op gate, prescription), a table of the weeks (first
and last three when there are more than four) with every figure of
`appliance.clinic.summary`, and three plain sentences: stronger or not, adherence,
and what to look at.
"""

from __future__ import annotations

import textwrap

from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D

from appliance.clinic.summary import TECHNIQUE_WARNINGS, Summary, WeekFigures
from appliance.clinic.wording import Wording
from appliance.patient.progress import POWER_TYPICAL_ERROR_CMH2O
from appliance.sensor.signal import (
    RELEASE_LOOK_S,
    RELEASE_MAX_PCT,
    RELEASE_STILL_FRACTION,
    RELEASE_STILL_MIN_CMH2O,
    RELEASE_WINDOW_S,
)

MAX_WEEK_COLUMNS = 4
CELL_CHARS = 24  # a week column's width in characters at 8 pt
CHAR_PT = 5.0  # a character of 8 pt text, wide enough for digits (DejaVu Sans: 5.1 pt)
MIN_CELL_CHARS = 12
GOOD_ADHERENCE_PCT = 80.0
FAIR_ADHERENCE_PCT = 50.0
HELD_WELL_PCT = 80.0  # mean hold at target below this share of the time asked: look at the holds
RELEASE_LOOK_PCT = 20.0


def release_note(w: Wording) -> str:
    """What "incomplete release" means, with the figures the device judges it by
    (`appliance.sensor.signal.RepRecorder._released`)."""
    return w("summary.release_note", look=w.num(RELEASE_LOOK_S), window=w.num(RELEASE_WINDOW_S),
             pct=w.pct(RELEASE_MAX_PCT), cmh2o=w.num(RELEASE_STILL_MIN_CMH2O),
             fraction=w.pct(100 * RELEASE_STILL_FRACTION))


# --- The three sentences -----------------------------------------------------------------------

def interpretation(summary: Summary, w: Wording) -> list[str]:
    """Stronger, the same or weaker; adherence against the prescription; what to look at."""
    return [_strength_sentence(summary, w), _adherence_sentence(summary, w), _look_sentence(summary, w)]


def _strength_sentence(summary: Summary, w: Wording) -> str:
    change = summary.strength
    if change is not None:
        return w(f"interpretation.{change.verdict}", first=w.num(change.first_cmh2o), last=w.num(change.last_cmh2o),
                 wfirst=change.first_week, wlast=change.last_week, error=w.num(POWER_TYPICAL_ERROR_CMH2O))
    measured = [wk for wk in summary.weeks if wk.mvc_cmh2o is not None]
    if measured:
        return w("interpretation.one_measure", mvc=w.num(measured[0].mvc_cmh2o), band=w.band(measured[0].oxford_band))
    return w("interpretation.postop_only")


def _adherence_sentence(summary: Summary, w: Wording) -> str:
    rates = [p for p in (summary.main_pct, summary.short_pct) if p is not None]
    low = min(rates) if rates else 0.0
    level = "good" if low >= GOOD_ADHERENCE_PCT else "fair" if low >= FAIR_ADHERENCE_PCT else "low"
    return w(f"interpretation.adherence_{level}", main=w.pct(summary.main_pct),
             short=w.pct(summary.short_pct) if summary.short_pct is not None else "–")


def _look_sentence(summary: Summary, w: Wording) -> str:
    last = [wk for wk in summary.weeks if wk.trained_sessions] or summary.weeks
    week = last[-1]
    if week.warnings and max(week.warnings.values()) > 0:
        problem = max(TECHNIQUE_WARNINGS, key=lambda k: week.warnings[k])
        return w("interpretation.look_technique", problem=w(f"technique.{problem}"), n=week.warnings[problem],
                 week=week.index, sessions=week.sessions_with_warnings, trained=week.trained_sessions)
    release = week.incomplete_release_pct
    if release is not None and release >= RELEASE_LOOK_PCT:
        return w("interpretation.look_release", week=week.index, pct=w.pct(release))
    if week.held_pct is not None and week.held_pct < HELD_WELL_PCT:
        return w("interpretation.look_endurance", week=week.index, held=w.num(week.held_s),
                 asked=w.num(week.hold_asked_s))
    if summary.unlock_date is not None and summary.unlock_date > summary.last_day:
        return w("interpretation.look_postop", unlock=w.day(summary.unlock_date))
    return w("interpretation.look_nothing", pct=w.pct(week.held_pct if week.held_pct is not None else 100.0))


# --- The table of weeks ------------------------------------------------------------------------

def shown_weeks(summary: Summary) -> list[WeekFigures]:
    weeks = summary.weeks
    return weeks if len(weeks) <= MAX_WEEK_COLUMNS else [weeks[0], *weeks[-(MAX_WEEK_COLUMNS - 1):]]


def _done_of(w: Wording, done: int, asked: int, pct: float | None) -> str:
    return w("summary.done_of", done=done, asked=asked, pct=w.pct(pct)) if asked else w("summary.none_prescribed")


def week_cells(summary: Summary, wk: WeekFigures, w: Wording, width: int = CELL_CHARS) -> list[str]:
    """One column of the table: the week's figures as the page prints them (row order of `row_labels`)."""
    if wk.mvc_cmh2o is not None:
        mvc = w("summary.mvc_value", mvc=w.num(wk.mvc_cmh2o), band=w.band(wk.oxford_band)).replace(" · ", "\n")
    elif wk.postop_sessions:
        mvc = w("summary.mvc_postop")
    else:
        mvc = w("summary.mvc_none")
    held = (w("summary.endurance_value", held=w.num(wk.held_s), asked=w.num(wk.hold_asked_s), pct=w.pct(wk.held_pct))
            if wk.held_s is not None else "–")
    if wk.perfect:
        p = wk.perfect
        perfect = w("summary.perfect_value", power=w.num(p["power_cmh2o"]), endurance=w.num(p["endurance_s"]),
                    repetitions=p["repetitions"], fast=p["fast"]).replace(" · ", "\n", 1)
    else:
        perfect = w("summary.perfect_none")
    items = [f"{w(f'technique.{k}')} {wk.warnings[k]}" for k in TECHNIQUE_WARNINGS if wk.warnings[k]]
    technique = (w("summary.technique_value", items="\n".join(items), sessions=wk.sessions_with_warnings,
                   trained=wk.trained_sessions) if items else w("summary.technique_none"))
    release = (w("summary.release_value", n=wk.incomplete_release, judged=wk.release_judged,
                 pct=w.pct(wk.incomplete_release_pct)) if wk.release_judged else "–")
    cells = [_done_of(w, wk.main_done, wk.main_prescribed, wk.main_pct),
             _done_of(w, wk.short_done, wk.short_prescribed, wk.short_pct),
             mvc, held, perfect, technique, release]
    if summary.stim_allowed_from is not None or summary.stim_sessions:
        stops = ", ".join(sorted({stop_reason(r, w) for r in wk.stim_stops}))
        cells.append(w("summary.stim_value", sessions=wk.stim_sessions, stops=len(wk.stim_stops))
                     + (f"\n({stops})" if stops else ""))
    cells += [str(wk.sessions_stopped), str(wk.artefact_reps)]
    return [wrap_cell(c, width) for c in cells]


def wrap_cell(text: str, width: int) -> str:
    """Each line of a cell wrapped to `width` characters (its own line breaks kept); a number
    and its unit stay together."""
    glued = text.replace(" %", "\u00a0%").replace(" s ", "\u00a0s ").replace(" cmH2O", "\u00a0cmH2O")
    wrapped = "\n".join(textwrap.fill(line, width) if len(line) > width else line for line in glued.split("\n"))
    return wrapped.replace("\u00a0", " ")


def row_labels(summary: Summary, w: Wording) -> list[str]:
    rows = ["summary.main", "summary.short", "summary.mvc", "summary.endurance", "summary.perfect",
            "summary.technique", "summary.release"]
    if summary.stim_allowed_from is not None or summary.stim_sessions:
        rows.append("summary.stim")
    rows += ["summary.stopped", "summary.artefacts"]
    return [textwrap.fill(w(k), 24) for k in rows]


def stop_reason(reason: str, w: Wording) -> str:
    head = reason.split(":", 1)[0]
    return w(f"stim_reason.{head}") if w.has(f"stim_reason.{head}") else w("stim_reason.other")


# --- The page -----------------------------------------------------------------------------------

def _facts(summary: Summary, w: Wording) -> list[tuple[str, str]]:
    lending = w("summary.lending_value", first=w.day(summary.first_day), last=w.day(summary.last_day),
                days=summary.days)
    if summary.enrolled is not None and summary.first_day < summary.enrolled <= summary.last_day:
        lending += f" · {w('summary.enrolled', date=w.day(summary.enrolled))}"
    trained = ", ".join(w.exercise(e) for e in summary.exercises_trained)
    programme = w.programme(summary.programme) + (f": {trained}" if trained else "")
    facts = [(w("summary.lending"), lending), (w("summary.programme"), programme)]
    if summary.unlock_date is not None:
        start = summary.surgery_date or summary.catheter_removal_date
        assert start is not None
        if summary.postop_days:
            postop = w("summary.postop_value", surgery=w.day(start), unlock=w.day(summary.unlock_date),
                       days=summary.postop_days)
        else:  # the whole period after the gate opened: no "0 days of awareness only"
            postop = w("summary.postop_value_before", surgery=w.day(start), unlock=w.day(summary.unlock_date))
        if summary.catheter_removal_date is not None:
            postop += f"; {w('summary.postop_catheter', date=w.day(summary.catheter_removal_date))}"
        facts.append((w("summary.postop"), postop))
    else:
        facts.append((w("summary.postop"), w("summary.no_postop")))
    facts.append((w("summary.prescribed"), w("summary.prescribed_value", short=summary.short_sets_per_day,
                                             progression=w("summary.on" if summary.progression else "summary.off"))))
    stim = (w("summary.stim_from", date=w.day(summary.stim_allowed_from)) if summary.stim_allowed_from
            else w("summary.stim_none"))
    if summary.stim_stops:
        reasons = ", ".join(sorted({stop_reason(r, w) for r in summary.stim_stops}))
        stim += f"; {w('summary.stim_stops', reasons=reasons)}"
    facts.append((w("summary.stim"), stim))
    return facts


def draw(fig: MplFigure, summary: Summary, w: Wording) -> None:
    """Page 1 on an A4 figure whose header is already drawn."""
    y = 0.91
    for label, value in _facts(summary, w):
        lines = textwrap.wrap(value, 78) or [""]
        fig.text(0.06, y, label, fontsize=8.5, weight="bold", va="top")
        fig.text(0.27, y, "\n".join(lines), fontsize=8.5, va="top", linespacing=1.3)
        y -= 0.0165 * len(lines) + 0.005
    y -= 0.01
    weeks = shown_weeks(summary)
    labels = row_labels(summary, w)
    x0, label_w = 0.06, 0.22
    col_w = (0.94 - x0 - label_w) / max(1, len(weeks))
    # Characters of 8 pt text that fit a column of the A4 page (595 pt wide), less a gap: with
    # four weeks "10 van 328 herhalingen" (held to 24 characters) ran into the next column.
    columns = [week_cells(summary, wk, w, max(MIN_CELL_CHARS, int(col_w * 595 / CHAR_PT) - 2)) for wk in weeks]
    line_h = 0.0135

    def rule(at: float, width: float = 0.6) -> None:
        fig.add_artist(Line2D([x0, 0.94], [at, at], color="black", lw=width, transform=fig.transFigure))

    rule(y + 0.004, 1.0)
    for i, wk in enumerate(weeks):
        head = (f"{w('summary.week')} {wk.index}\n"
                + w("summary.week_dates", start=w.day(max(wk.start, summary.first_day), year=False),
                    end=w.day(min(wk.end, summary.last_day), year=False)))
        fig.text(x0 + label_w + i * col_w, y - 0.004, head, fontsize=8.5, weight="bold", va="top")
    y -= 2 * line_h + 0.012
    rule(y + 0.004)
    for r, label in enumerate(labels):
        cells = [col[r] for col in columns]
        n_lines = max([label.count("\n") + 1] + [c.count("\n") + 1 for c in cells])
        fig.text(x0, y - 0.004, label, fontsize=8, weight="bold", va="top", linespacing=1.25)
        for i, cell in enumerate(cells):
            fig.text(x0 + label_w + i * col_w, y - 0.004, cell, fontsize=8, va="top", linespacing=1.25)
        y -= n_lines * line_h + 0.008
        rule(y + 0.004, 0.3)
    note = "\n".join([textwrap.fill(w("summary.main_note"), 120), textwrap.fill(release_note(w), 120)])
    fig.text(x0, y - 0.004, note, fontsize=6.5, va="top", color="0.25")
    y -= 0.02 + 0.0105 * (note.count("\n") + 1)
    fig.text(0.06, y, w("summary.interpretation"), fontsize=11, weight="bold", va="top")
    y -= 0.025
    for k, sentence in enumerate(interpretation(summary, w), start=1):
        lines = textwrap.wrap(sentence, 100)
        fig.text(0.06, y, f"{k}.", fontsize=9, va="top")
        fig.text(0.085, y, "\n".join(lines), fontsize=9, va="top", linespacing=1.3)
        y -= 0.018 * len(lines) + 0.008
