"""The physiotherapist's report: a PDF and its PNG pages (matplotlib, Agg), in the clinic's language.

Page 1 is the summary (appliance.clinic.summary_page); then adherence against the
prescription, strength with the Oxford bands, PERFECT as measured and the targets as
applied, repetitions and technique per week, and pressure traces with what the device
said. Every series is read from the database (appliance.clinic.summary); greys, hatches
and markers keep it readable printed in black and white on A4.
"""

from __future__ import annotations

import logging
import textwrap
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from statistics import median
from zoneinfo import ZoneInfo

import matplotlib
import matplotlib.dates
import matplotlib.ticker

matplotlib.use("Agg")  # headless device: never touch a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from appliance.clinic import summary_page  # noqa: E402
from appliance.clinic.charts import (  # noqa: E402
    A4,
    GREYS,
    HATCHES,
    date_axis,
    day_x,
    header,
    legend_below,
    postop_shading,
)
from appliance.clinic.summary import (  # noqa: E402
    EXERCISE_ORDER,
    NOT_STRENGTH,
    TECHNIQUE_WARNINGS,
    Kind,
    Summary,
    counts_for_strength,
    is_artefact,
    summarise,
)
from appliance.clinic.tables import write_tables  # noqa: E402,F401  (the export's tables, beside the report)
from appliance.clinic.traces import page_traces  # noqa: E402
from appliance.clinic.wording import Wording  # noqa: E402
from appliance.patient.prescription import Prescription  # noqa: E402
from appliance.patient.progress import rep_met  # noqa: E402

log = logging.getLogger(__name__)

PNG_DPI = 100
# Modified Oxford bands by manometry (Angelo et al. 2017), cmH2O above rest.
OXFORD_BANDS = (("none", 0.0, 7.5), ("very_weak", 7.5, 14.5), ("weak", 14.5, 26.5), ("moderate", 26.5, 41.5),
                ("good", 41.5, 60.5), ("strong", 60.5, 200.0))


# --- Page 2: adherence ---------------------------------------------------------------------------

def page_adherence(summary: Summary, w: Wording):
    fig = plt.figure(figsize=A4)
    header(fig, summary, w, w("page.adherence"))
    first, last = summary.first_day, summary.last_day
    days = [first + timedelta(days=i) for i in range(summary.days)]
    counts: dict[str, dict[date, int]] = {k: defaultdict(int) for k in (Kind.MAIN, Kind.SHORT, Kind.PERFECT)}
    for s in summary.sessions:
        if s.trained:
            counts[s.kind][s.day] += 1
    asked = 1 + summary.short_sets_per_day
    # Calendar: one row a week, the day's sessions against the prescription.
    monday = first - timedelta(days=first.weekday())
    n_weeks = (last - monday).days // 7 + 1
    grid = np.full((n_weeks, 7), np.nan)
    for d in days:
        grid[(d - monday).days // 7, d.weekday()] = sum(c[d] for c in counts.values())
    # The three charts stacked down the page, each as tall as its weeks need: with eight
    # weeks the calendar ran over the weekly chart.
    height = min(0.24, 0.045 * n_weeks + 0.02)
    ax = fig.add_axes((0.14, 0.86 - height, 0.72, height))
    cmap = plt.get_cmap("Greys").with_extremes(bad="white")
    # Light greys only: a full day is mid-grey, so the black numbers stay readable.
    ax.imshow(np.minimum(grid, asked), cmap=cmap, vmin=0, vmax=asked * 2.2, aspect="auto")
    for wk in range(n_weeks):
        for dd in range(7):
            if not np.isnan(grid[wk, dd]):
                day = monday + timedelta(days=7 * wk + dd)
                text = f"{counts[Kind.MAIN][day] + counts[Kind.PERFECT][day]}+{counts[Kind.SHORT][day]}"
                ax.text(dd, wk, text, ha="center", va="center", fontsize=8 if n_weeks <= 8 else 6)
    ax.set_xticks(range(7), [w.weekday(i) for i in range(7)])
    sep = "\n" if n_weeks <= 8 else " · "
    ax.set_yticks(range(n_weeks), [f"{w('chart.week')} {i + 1}{sep}{w.day(monday + timedelta(weeks=i), year=False)}"
                                   for i in range(n_weeks)], fontsize=8 if n_weeks <= 4 else 7 if n_weeks <= 8 else 6)
    ax.tick_params(length=0)
    ax.set_title(w("chart.heatmap", n=f"1+{summary.short_sets_per_day}"), fontsize=10)
    top = 0.86 - height - 0.05
    weekly = min(0.20, max(0.13, 0.02 * len(summary.weeks) + 0.02))
    ax = fig.add_axes((0.12, top - weekly, 0.66, weekly))
    _weekly_adherence(ax, summary, w)
    top -= weekly + 0.08
    daily = min(0.30, top - 0.14)
    ax = fig.add_axes((0.12, 0.14, 0.80, daily))
    x = matplotlib.dates.date2num([datetime.combine(d, datetime.min.time()) for d in days])
    bottom = np.zeros(len(days))
    for kind, grey, hatch, label in ((Kind.MAIN, "0.2", "", "chart.main"), (Kind.PERFECT, "0.2", "xx", "chart.perfect"),
                                     (Kind.SHORT, "0.85", "///", "chart.short")):
        vals = np.array([counts[kind][d] for d in days], dtype=float)
        if vals.any() or kind != Kind.PERFECT:
            ax.bar(x, vals, 0.75, bottom=bottom, color=grey, hatch=hatch, edgecolor="black", lw=0.5, label=w(label))
        bottom += vals
    ax.axhline(asked, color="black", lw=1.2, ls="--", label=w("chart.prescribed_line", n=asked))
    if any(s.postop for s in summary.sessions):
        postop_shading(ax, summary)
        ax.bar([x[0]], [0], color="none", edgecolor="0.6", hatch="\\\\", label=w("chart.postop_days"))
    ax.set_ylim(0, max(asked + 1, float(bottom.max()) + 1))
    ax.set_ylabel(w("chart.sets"))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # sessions: no "2.5"
    ax.set_title(w("chart.sets_per_day"), fontsize=10)
    date_axis(ax, w, first, last)
    legend_below(ax, ncol=3, gap=0.045 / daily)  # under the dates, however tall the chart
    return fig


def _weekly_adherence(ax, summary: Summary, w: Wording) -> None:
    """Each week's main sessions and short sets in % of what was prescribed for its days."""
    weeks = summary.weeks
    x = np.arange(len(weeks))
    for k, (values, label) in enumerate((([wk.main_pct for wk in weeks], "summary.main"),
                                         ([wk.short_pct for wk in weeks], "summary.short"))):
        vals = [np.nan if v is None else v for v in values]
        bars = ax.barh(x + (k - 0.5) * 0.38, vals, 0.38, color=GREYS[k * 2], hatch=HATCHES[k * 2],
                       edgecolor="black", lw=0.5, label=w(label))
        for bar, v in zip(bars, values, strict=True):
            if v is not None and len(weeks) <= 12:  # more weeks: the bars and page 1 say it
                ax.text(101.5, bar.get_y() + bar.get_height() / 2, f"{v:.0f} %", va="center",
                        fontsize=7 if len(weeks) <= 5 else 5.5)
    ax.axvline(100, color="black", lw=1, ls="--")
    ax.set_xlim(0, 125)
    ax.set_yticks(x, [f"{w('chart.week')} {wk.index}" for wk in weeks], fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlabel("%", fontsize=8)
    ax.set_title(w("chart.adherence_weeks"), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


# --- Page 3: strength, PERFECT as measured, targets as applied -------------------------------------

def targets_by_column(summary: Summary) -> tuple[list[tuple[date, date]], dict[str, list[tuple[float, float] | None]]]:
    """The targets applied (stored with each repetition), per day, or per week in a long
    lending: for each exercise the lowest and highest target of that day or week."""
    per_day = (summary.last_day - summary.first_day).days < 21
    if per_day:
        columns = [(summary.first_day + timedelta(days=i),) * 2 for i in range(summary.days)]
    else:
        columns = [(max(wk.start, summary.first_day), min(wk.end, summary.last_day)) for wk in summary.weeks]
    found: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in columns])
    for s in summary.sessions:
        if s.kind == Kind.PERFECT:
            continue
        col = next(i for i, (a, b) in enumerate(columns) if a <= s.day <= b)
        for r in s.reps:
            if r["exercise"] not in NOT_STRENGTH:  # walking and hopping: probe out, no strength target
                found[r["exercise"]][col].append(float(r["target_pct"]))
    table = {ex: [(min(v), max(v)) if v else None for v in cols] for ex, cols in found.items()}
    return [(a, b) for a, b in columns], table


def _targets_table(ax, summary: Summary, w: Wording) -> None:
    """Targets as applied: a number per exercise and day (or week); a change is boxed."""
    columns, table = targets_by_column(summary)
    order = [e for e in EXERCISE_ORDER if e in table] + sorted(set(table) - set(EXERCISE_ORDER))
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylim(len(order) - 0.5, -0.5)
    for row, ex in enumerate(order):
        before = None
        for col, cell in enumerate(table[ex]):
            if cell is None:
                continue
            lo, hi = cell
            text = f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}"
            changed = before is not None and cell != before
            ax.text(col, row, text, ha="center", va="center", fontsize=7 if len(columns) < 16 else 6,
                    weight="bold" if changed else "normal",
                    bbox={"boxstyle": "square,pad=0.2", "fc": "0.85", "ec": "black", "lw": 0.5} if changed else None)
            before = cell
    for d in (i for i, (a, _) in enumerate(columns) if any(s.postop and s.day == a for s in summary.sessions)):
        ax.axvspan(d - 0.5, d + 0.5, facecolor="none", edgecolor="0.8", hatch="\\\\", lw=0, zorder=0)
    ax.set_yticks(range(len(order)), [w.exercise(e) for e in order], fontsize=7.5)
    single = all(a == b for a, b in columns)
    ax.set_xticks(range(len(columns)), [w.day(a, year=False) if single else
                                        f"{w('chart.week')} {i + 1}" for i, (a, _) in enumerate(columns)],
                  fontsize=7, rotation=45 if single else 0)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.set_title(w("chart.targets_title"), fontsize=9.5, loc="left")


def strength_series(summary: Summary) -> dict[str, list[tuple[int, float]]]:
    """(session id, cmH2O) per series the strength chart draws: measured MVC, the post-op
    reference estimate, each session's median repetition peak (a movement repetition's peak outside the movement),
    the movement-flagged repetitions' peaks."""
    out: dict[str, list[tuple[int, float]]] = {"mvc": [], "postop": [], "peaks": [], "artefacts": []}
    for s in summary.sessions:
        if s.mvc_measured and s.mvc_cmh2o is not None:
            out["postop" if s.postop else "mvc"].append((s.id, float(s.mvc_cmh2o)))
        if s.kind == Kind.PERFECT:
            continue
        peaks = [float(r["peak_cmh2o"]) for r in s.reps if counts_for_strength(r)]
        if peaks:
            out["peaks"].append((s.id, median(peaks)))
        out["artefacts"] += [(s.id, float(r["peak_cmh2o"])) for r in s.reps
                             if r.get("artefact") and r.get("peak_cmh2o") is not None]
    return out


def page_strength(summary: Summary, w: Wording, tz):
    fig = plt.figure(figsize=A4)
    header(fig, summary, w, w("page.strength"))
    when = {s.id: day_x(s, tz) for s in summary.sessions}
    series = strength_series(summary)
    ax = fig.add_axes((0.10, 0.665, 0.66, 0.245))
    top = max([v for pts in series.values() for _, v in pts] + [30.0]) * 1.15
    for i, (band, lo, hi) in enumerate(OXFORD_BANDS):
        if lo >= top:
            break
        ax.axhspan(lo, min(hi, top), color="0.93" if i % 2 else "white", lw=0)
        ax.axhline(lo, color="0.6", lw=0.5, ls=":")
        ax.text(1.01, (lo + min(hi, top)) / 2, w.band(band), transform=ax.get_yaxis_transform(), fontsize=7,
                va="center", clip_on=False)
    styles = {"mvc": dict(marker="o", color="black", ls="none", ms=5, label=w("chart.mvc_points")),
              "postop": dict(marker="o", mfc="white", color="black", ls="none", ms=5, label=w("chart.mvc_postop")),
              "peaks": dict(marker="x", color="0.3", ls="none", ms=5, label=w("chart.rep_peaks")),
              "artefacts": dict(marker="v", mfc="white", color="0.5", ls="none", ms=4, label=w("chart.artefacts"))}
    for name, pts in series.items():
        if pts:
            ax.plot([when[sid] for sid, _ in pts], [v for _, v in pts], **styles[name])  # type: ignore[arg-type]
    perfect = [(when[s.id], float(s.perfect["power_cmh2o"])) for s in summary.sessions if s.perfect]
    if perfect:
        ax.plot(*zip(*perfect, strict=True), marker="D", color="black", mfc="0.6", ls="none", ms=6,
                label=w("chart.perfect_p"))
    ax.set_ylim(0, top)
    ax.set_ylabel(w("chart.cmh2o"))
    ax.set_title(w("chart.mvc_title"), fontsize=9.5, loc="left")
    date_axis(ax, w, summary.first_day, summary.last_day)
    legend_below(ax, ncol=2, fontsize=7)

    ax = fig.add_axes((0.10, 0.385, 0.66, 0.16))
    measured = summary.perfects
    if measured:
        x = np.arange(len(measured))
        for k, (field, label) in enumerate((("endurance_s", "chart.perfect_e"), ("repetitions", "chart.perfect_r"),
                                            ("fast", "chart.perfect_f"))):
            values = [float(p[field]) for _, p in measured]
            ax.bar(x + (k - 1) * 0.25, values, 0.25, color=GREYS[k], hatch=HATCHES[k], edgecolor="black", lw=0.5,
                   label=w(label))
            for xi, v in zip(x + (k - 1) * 0.25, values, strict=True):  # a zero is a score too: print it
                # "10" rather than "10,0": side by side, "10,0" and "10" read as "10,010".
                digits = 1 if field == "endurance_s" and v != round(v) else 0
                ax.text(xi, v + 0.2, w.num(v, digits), ha="center", va="bottom",
                        fontsize=7 if len(measured) <= 5 else 5.5)
        ax.set_xticks(x, [f"{w('chart.week')} {i}\n{w.day(date.fromisoformat(p['day']), year=False)}"
                          if p.get("day") else f"{w('chart.week')} {i}" for i, p in measured], fontsize=7.5)
        ax.set_ylim(0, 11.5)
        ax.set_xlim(-0.6, max(2, len(measured)) - 0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, w("chart.perfect_none"), ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_title(w("chart.perfect_title"), fontsize=9.5, loc="left")

    rows = len(targets_by_column(summary)[1])
    tall = min(0.25, 0.035 * rows + 0.04)  # one exercise: one line, not a quarter page of white
    _targets_table(fig.add_axes((0.25, 0.32 - tall, 0.69, tall)), summary, w)
    return fig


# --- Page 4: repetitions and technique -----------------------------------------------------------

def _short_name(w: Wording, exercise_id: str) -> str:
    """An exercise's name on two or three short lines under a bar."""
    return textwrap.fill(w.exercise(exercise_id), 13, break_long_words=False, break_on_hyphens=False)


def page_quality(summary: Summary, w: Wording):
    fig = plt.figure(figsize=A4)
    header(fig, summary, w, w("page.quality"))
    by_ex: dict[str, list[dict]] = defaultdict(list)
    for s in summary.sessions:
        if s.kind != Kind.PERFECT:
            for r in s.reps:
                by_ex[r["exercise"]].append(r)
    order = [e for e in EXERCISE_ORDER if e in by_ex] + sorted(set(by_ex) - set(EXERCISE_ORDER))
    ax = fig.add_axes((0.10, 0.66, 0.84, 0.24))
    x = np.arange(len(order))
    if order:
        series: list[tuple[list[float], str]] = [
            ([float(100 * np.mean([r["status"] == "complete" for r in by_ex[e]])) for e in order], "chart.completed"),
            ([float(100 * np.mean([rep_met(r) for r in by_ex[e]])) if e not in NOT_STRENGTH else np.nan
              for e in order], "chart.met"),
            ([float(100 * np.mean([min(1.0, (r["held_s"] or 0) / r["hold_asked_s"]) for r in by_ex[e]
                                    if r["hold_asked_s"]] or [np.nan])) for e in order], "chart.held"),
            ([float(100 * np.mean([float(bool(r["release_complete"])) for r in by_ex[e]
                                   if r["release_complete"] is not None] or [np.nan])) for e in order],
             "chart.released")]
        for k, (vals, label) in enumerate(series):
            ax.bar(x + (k - 1.5) * 0.2, vals, 0.2, color=GREYS[k], hatch=HATCHES[k], edgecolor="black", lw=0.5,
                   label=w(label))
        ax.set_xticks(x, [f"{_short_name(w, e)}\n(n={len(by_ex[e])})" for e in order], fontsize=7)
        ax.set_ylim(0, 105)
    ax.set_ylabel(w("chart.pct_reps"))
    ax.set_title(w("chart.quality_title"), fontsize=9.5, loc="left")
    legend_below(ax, ncol=4)

    ax = fig.add_axes((0.10, 0.37, 0.84, 0.19))
    strength = [e for e in order if e not in NOT_STRENGTH]
    data = [[(r["peak_pct"] or 0) / max(1.0, r["target_pct"]) * 100 for r in by_ex[e] if counts_for_strength(r)]
            for e in strength]
    kept = [(e, d) for e, d in zip(strength, data, strict=True) if d]
    if kept:
        ax.boxplot([d for _, d in kept], tick_labels=[_short_name(w, e) for e, _ in kept],
                   showfliers=False, medianprops={"color": "black"})
        ax.axhline(100, color="black", lw=1, ls="--")
        ax.axhline(90, color="black", lw=0.6, ls=":")
        ax.tick_params(axis="x", labelsize=7)
        dropped = sum(is_artefact(r) for e in strength for r in by_ex[e])
        if dropped:
            # under the exercise names, right: the title above runs the whole width
            ax.text(1.0, -0.24, f"{w('chart.artefacts')}: {dropped}", transform=ax.transAxes, ha="right",
                    va="top", fontsize=7)
    else:
        ax.text(0.5, 0.5, w("chart.no_data"), ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(w("chart.peak_axis"))
    ax.set_title(w("chart.peak_title"), fontsize=9.5, loc="left")

    ax = fig.add_axes((0.10, 0.10, 0.84, 0.18))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    weeks = summary.weeks
    x = np.arange(len(weeks))
    kinds = [*TECHNIQUE_WARNINGS, "incomplete_release"]
    top = 0.0
    for k, kind in enumerate(kinds):
        vals = [wk.warnings[kind] if kind in wk.warnings else wk.incomplete_release for wk in weeks]
        top = max([top, *vals])
        ax.bar(x + (k - 1.5) * 0.2, vals, 0.2, color=GREYS[k], hatch=HATCHES[k], edgecolor="black", lw=0.5,
               label=w(f"technique.{kind}"))
    ax.set_ylim(0, max(top, 1) * 1.15)  # counts: never below zero, and a clean period is not a flat line at 0
    if top == 0:
        ax.text(0.5, 0.5, w("chart.technique_empty"), ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xticks(x, [f"{w('chart.week')} {wk.index}\n{w.day(wk.start, year=False)}" for wk in weeks], fontsize=7.5)
    ax.set_ylabel(w("chart.count"))
    ax.set_title(w("chart.technique_title"), fontsize=9.5, loc="left")
    legend_below(ax, ncol=4)
    return fig


# --- The report ----------------------------------------------------------------------------------

def write_report(db_path: Path, out_dir: Path, code: str, rx: Prescription | None, lang: str | None = None,
                 enrolled: date | None = None, *, summary: Summary | None = None) -> list[Path]:
    """Write report.pdf and report-<n>.png pages in `lang` (else the prescription's); returns the paths.
    `summary`: the database as the tables already read it (else it is read here)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary or summarise(db_path, code, rx, lang, enrolled)
    w = Wording.load(summary.lang)
    tz = rx.tz if rx else ZoneInfo("UTC")  # as appliance.clinic.summary reads the days
    first = plt.figure(figsize=A4)
    header(first, summary, w, w("page.summary"))
    summary_page.draw(first, summary, w)
    figs = [first, page_adherence(summary, w), page_strength(summary, w, tz), page_quality(summary, w)]
    traces = page_traces(summary, w, db_path, tz)  # appliance.clinic.traces
    if traces is not None:
        figs.append(traces)
    pdf_path = out_dir / "report.pdf"
    paths = [pdf_path]
    with PdfPages(pdf_path, metadata={"Title": f"{w('page.title')} {code}"}) as pdf:
        for i, fig in enumerate(figs, start=1):
            fig.text(0.06, 0.018, w("page.footer"), fontsize=6, color="0.3")
            fig.text(0.94, 0.03, w("page.number", n=i, total=len(figs)), ha="right", fontsize=7, color="0.3")
            pdf.savefig(fig)
            png = out_dir / f"report-{i}.png"
            fig.savefig(png, dpi=PNG_DPI)
            paths.append(png)
            plt.close(fig)
    return paths
