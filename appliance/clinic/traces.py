"""The report's last page: three sessions' pressure traces (first, middle, last), with
the phases shaded and what the device said written where it said it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from appliance.clinic.charts import A4, header, session_time
from appliance.clinic.summary import Kind, Summary, counts_for_strength
from appliance.clinic.wording import Wording


def _trace(db_path: Path, session_id: int) -> tuple[np.ndarray, list[tuple], list[tuple[float, str]]]:
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
    # The counting aloud ("een, twee...") is left out: it would hide the cues.
    says = [(float(e[2].get("at", e[0])), str(e[2].get("text") or "")) for e in events
            if e[1] == "say" and not str(e[2].get("phrase", "")).startswith("count.")]
    return samples, phases, says


PHASE_SHADES = {"contract": ("0.85", ""), "hold": ("0.7", ""), "move": ("0.7", "//"), "release": ("0.93", "..")}


def _fit_before_right_edge(ax, label, text: str) -> None:
    """Shorten `label` (with "…") until it ends inside the chart; a stub is dropped (the line
    still shows when it was said). Clipped at the edge it was cut off mid-word."""
    renderer = ax.figure.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1
    n = min(len(text), 34)
    while label.get_window_extent(renderer).x1 > right:
        n -= 1
        if n < 6:
            label.remove()
            return
        label.set_text(" " + text[:n].rstrip() + "…")


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
        ax.set_ylim(lo, hi + (hi - lo) * 0.45)
        shown = [(a, text) for a, text in says if t0 <= a <= t1 and text]
        ax.set_xlim(t0, t1)  # before the labels are fitted to it
        for i, (at, text) in enumerate(shown):
            ax.axvline(at, color="0.4", lw=0.5)
            short = text if len(text) <= 34 else text[:33] + "…"
            label = ax.text(at, 0.98 - (i % 4) * 0.075, " " + short, transform=ax.get_xaxis_transform(),
                            fontsize=6, va="top", clip_on=True)
            _fit_before_right_edge(ax, label, text)
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
