"""Two views of a session for people: a JSON-lines timeline file and a live terminal view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from appliance.events import Event, Feedback


class TimelineWriter:
    """One JSON object per event (`t`, `kind`, and the kind's fields), flushed as it goes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = self.path.open("w", encoding="utf-8")

    def emit(self, event: Event) -> None:
        self._fh.write(json.dumps(event.as_json(), ensure_ascii=False) + "\n")
        if event.kind in ("rep", "session"):
            self._fh.flush()

    def feedback(self, fb: Feedback) -> None:
        return None

    def close(self) -> None:
        self._fh.close()


def strength_bar(pct: float, target: float, width: int = 20) -> str:
    """`██████▌····|···` — the squeeze, with the target marked."""
    scale = 120.0  # the bar runs to 120 %MVC so overshoot shows
    filled = max(0.0, min(pct, scale)) / scale * width
    full = int(filled)
    bar = ["█"] * full + (["▌"] if filled - full >= 0.5 else [])
    bar += ["·"] * (width - len(bar))
    if target > 0:
        mark = min(width - 1, int(target / scale * width))
        bar[mark] = "|" if bar[mark] == "·" else bar[mark]
    return "".join(bar)


class ConsoleTimeline:
    """A readable live timeline: time, exercise, phase, what is said, a strength bar."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._fb: Feedback | None = None
        self._exercise = ""

    def feedback(self, fb: Feedback) -> None:
        self._fb = fb

    def emit(self, e: Event) -> None:
        d = e.data
        ts = f"{int(e.t // 60):3d}:{e.t % 60:05.2f}"
        if e.kind == "phase":
            self._exercise = d.get("exercise", self._exercise)
            pct = self._fb.strength_pct if self._fb else 0.0
            rep = f"#{d['rep']}" if "rep" in d else "  "
            line = (f"{ts}  {self._exercise:<11} {rep:>3} {d['phase']:<17} "
                    f"{strength_bar(pct, d.get('level_pct', 0))} {pct:5.0f}%")
        elif e.kind == "say":
            line = f"{ts}  {'':<11}     » {d['text']}"
        elif e.kind == "rep":
            line = (f"{ts}  {d['exercise']:<11} #{d['rep']:<2} rep {d['status']:<8} peak {d['peak_pct']:5.1f}%"
                    f" ({d['peak_cmh2o']:.1f} cmH2O) held {d['held_s']:.1f}/{d['hold_asked_s']:.1f}s"
                    f" release {'ok' if d['release_complete'] else 'incomplete'}")
        elif e.kind == "calibration":
            line = (f"{ts}  calibration rest {d['rest_cmh2o']:.1f} cmH2O, MVC {d['mvc_cmh2o']:.1f} cmH2O"
                    f" ({d['oxford_band']})")
        elif e.kind in ("command", "warning", "exercise", "session", "setting", "stim", "probe"):
            fields = " ".join(f"{k}={v}" for k, v in d.items())
            line = f"{ts}  [{e.kind}] {fields}"
        else:
            return
        self.out.write(line + "\n")
