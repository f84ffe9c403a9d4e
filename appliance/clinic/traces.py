"""The report's last page: three sessions' pressure traces (first, middle, last), with
the phases shaded and what the device said written where it said it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.text import Text

from appliance.clinic.charts import A4, header, session_time
from appliance.clinic.summary import Kind, Summary, counts_for_strength
from appliance.clinic.wording import Wording


def _trace(db_path: Path, session_id: int) -> tuple[np.ndarray, list[tuple], list[tuple[float, str, bool]]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        samples = np.array(db.execute("SELECT t, cmh2o, pct FROM samples WHERE session_id=? ORDER BY t",
                                      (session_id,)).fetchall(), dtype=float).reshape(-1, 3)
        events = [(t, kind, json.loads(d)) for t, kind, d in db.execute(
            "SELECT t, kind, data FROM events WHERE session_id=? AND kind IN ('phase', 'say') ORDER BY t",
            (session_id,))]
    finally:
        db.close()
    phases = [(e[2]["start"], e[2]["end"], e[2]["phase"]) for e in events if e[1] == "phase"]
    # What the patient heard: the stored text, as spoken (never the phrase key).
    # The counting aloud ("een, twee...") is left out: it would hide the cues. A correction
    # of the patient's technique is marked (shown in bold).
    says = [(float(e[2].get("at", e[0])), str(e[2].get("text") or ""), e[2].get("priority") == "correction")
            for e in events if e[1] == "say" and not str(e[2].get("phrase", "")).startswith("count.")]
    return samples, phases, says


PHASE_SHADES = {"contract": ("0.85", ""), "hold": ("0.7", ""), "move": ("0.7", "//"), "release": ("0.93", "..")}


LABEL_ROWS = 5  # rows of what the device said, above the curve
LABEL_ROW_STEP = 0.07  # axes fraction between two rows
LABEL_GAP_PX = 6.0  # at least this much between a label's end and the next label on its row
MIN_LABEL_CHARS = 6  # a label shorter than this is left out (its line still shows when it was said)
MAX_LABEL_CHARS = 40  # a long explanation shows its start: the rows stay free for the cues around it


def _capped(text: str) -> str:
    """`text`, or its first words up to `MAX_LABEL_CHARS` and "…"."""
    if len(text) <= MAX_LABEL_CHARS:
        return text
    cut = text[:MAX_LABEL_CHARS].rsplit(" ", 1)[0]
    return cut.rstrip(",.;:") + "…"


def _shorten(label, text: str, right: float, renderer) -> bool:
    """Shorten `label` (with "…", at a word's end when it can) until it ends before `right`
    (pixels); False when what would be left is a stub, and the label is removed."""
    if label.get_window_extent(renderer).x1 <= right:
        return True
    words = text.split()
    for k in range(len(words) - 1, 0, -1):  # whole words first: "Adem uit, en span…"
        label.set_text(" " + " ".join(words[:k]).rstrip(",.;:") + "…")
        if label.get_window_extent(renderer).x1 <= right and len(" ".join(words[:k])) >= MIN_LABEL_CHARS:
            return True
    for n in range(len(text) - 1, MIN_LABEL_CHARS - 1, -1):
        label.set_text(" " + text[:n].rstrip() + "…")
        if label.get_window_extent(renderer).x1 <= right:
            return True
    label.remove()
    return False


def _said_labels(ax, shown: list[tuple[float, str, bool]]) -> None:
    """What the device said, each at its line, on rows so that no two labels touch: each on
    the first row free at its moment; when none is, on the row free soonest, the label before
    it there shortened to end in time. Every label ends inside the chart; corrections in bold."""
    renderer = ax.figure.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1 - 1.0
    to_px = ax.transData.transform
    rows: list[list[tuple[float, Text, str]]] = [[] for _ in range(LABEL_ROWS)]  # (x px, label, text)
    ends = [-np.inf] * LABEL_ROWS
    for at, full, correction in shown:
        text = _capped(full)
        ax.axvline(at, color="0.4", lw=0.5)
        x = float(to_px((at, 0.0))[0])
        free = [r for r in range(LABEL_ROWS) if ends[r] + LABEL_GAP_PX <= x]
        row = free[0] if free else min(range(LABEL_ROWS), key=lambda r: ends[r])
        label = ax.text(at, 0.98 - row * LABEL_ROW_STEP, " " + text, transform=ax.get_xaxis_transform(),
                        fontsize=6, va="top", clip_on=False, weight="bold" if correction else "normal",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.4})
        rows[row].append((x, label, text))
        ends[row] = label.get_window_extent(renderer).x1
    for placed in rows:
        for i, (_x, label, text) in enumerate(placed):
            limit = placed[i + 1][0] - LABEL_GAP_PX if i + 1 < len(placed) else right
            _shorten(label, text, min(limit, right), renderer)


def page_traces(summary: Summary, w: Wording, db_path: Path, tz):
    candidates = [s for s in summary.sessions if s.kind == Kind.MAIN and s.reps]
    if not candidates:
        return None
    picks = list(dict.fromkeys([candidates[0].id, candidates[len(candidates) // 2].id, candidates[-1].id]))
    by_id = {s.id: s for s in candidates}
    fig = plt.figure(figsize=A4)
    header(fig, summary, w, w("page.traces"))
    for k, sid in enumerate(picks):
        s = by_id[sid]
        samples, phases, says = _trace(db_path, sid)
        # The first exercise that trains strength (ex1 rather than the awareness warm-up) when there is one.
        usable = [r for r in s.reps if r["status"] == "complete" and counts_for_strength(r)] or s.reps
        main_ex = next((r["exercise"] for r in usable if r["exercise"] != "awareness"), usable[0]["exercise"])
        reps = [r for r in usable if r["exercise"] == main_ex][:3]
        t0, t1 = reps[0]["t_start"] - 1.0, reps[-1]["t_end"] + 0.5
        ax = fig.add_axes((0.10, 0.685 - k * 0.295, 0.84, 0.20))
        for start, end, kind in phases:
            if end > t0 and start < t1 and kind in PHASE_SHADES:
                shade, hatch = PHASE_SHADES[kind]
                ax.axvspan(max(start, t0), min(end, t1), facecolor=shade, hatch=hatch, edgecolor="0.6", lw=0)
        m = (samples[:, 0] >= t0) & (samples[:, 0] <= t1)
        ax.plot(samples[m, 0], samples[m, 1], color="black", lw=1.1, label=w("chart.pressure"))
        if s.mvc_cmh2o and s.rest_cmh2o is not None:
            target = float(reps[0]["target_pct"])
            ax.axhline(s.rest_cmh2o + s.mvc_cmh2o * target / 100, color="black", ls="--", lw=0.8,
                       label=w("chart.target", pct=f"{target:.0f}"))
            ax.axhline(s.rest_cmh2o, color="black", ls=":", lw=0.8, label=w("chart.rest"))
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + (hi - lo) * 0.6)  # room for the rows of what was said
        shown = [(a, text, c) for a, text, c in says if t0 <= a <= t1 and text]
        ax.set_xlim(t0, t1)  # before the labels are fitted to it
        _said_labels(ax, shown)
        ex = reps[0]["exercise"]
        title = "chart.trace_title_postop" if s.postop else "chart.trace_title"
        ax.set_title(w(title, when=w.day(session_time(s, tz).date(), weekday=True)
                       + f" {session_time(s, tz):%H:%M}", exercise=w.exercise(ex), first=reps[0]["rep"],
                       last=reps[-1]["rep"], mvc=w.num(s.mvc_cmh2o)), fontsize=8.5, loc="left")
        ax.set_xlim(t0, t1)
        ax.set_ylabel("cmH2O")
        ax.set_xlabel(f"{w('chart.trace_axis')}; {w('chart.shading')}", fontsize=7)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=3, fontsize=6.5, frameon=False)
    return fig
