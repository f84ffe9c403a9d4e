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
    """A readable live timeline: time, exercise, phase, what is said, a strength bar.

    A phase's line is printed when it ends, with the strongest squeeze seen during it;
    lines are held back until then so the view stays in time order.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._exercise = ""
        self._phase: dict | None = None
        self._peak = 0.0
        self._held: list[tuple[float, str]] = []

    def feedback(self, fb: Feedback) -> None:
        if fb.strength_pct > self._peak:
            self._peak = fb.strength_pct

    @staticmethod
    def _ts(t: float) -> str:
        minutes, seconds = divmod(round(t, 2), 60)
        return f"{int(minutes):3d}:{seconds:05.2f}"

    def _flush_phase(self) -> None:
        d = self._phase
        if d is not None:
            self._phase = None
            rep = f"#{d['rep']}" if "rep" in d else "  "
            peak = max(self._peak, 0.0)
            self._held.append((d["start"] - 1e-6, f"{self._ts(d['start'])}  {d.get('exercise', self._exercise):<11} "
                               f"{rep:>3} {d['phase']:<17} {strength_bar(peak, d.get('level_pct', 0))} "
                               f"max {peak:3.0f}% (asked {d.get('level_pct', 0):.0f}%)"))
        self._held.sort(key=lambda x: x[0])
        self.out.write("".join(line + "\n" for _, line in self._held))
        self._held.clear()

    def emit(self, e: Event) -> None:
        d = e.data
        ts = self._ts(e.t)
        if e.kind == "phase":
            self._flush_phase()
            self._exercise = d.get("exercise", self._exercise)
            self._phase = d
            self._peak = -1e9
            return
        if e.kind == "say":
            line = f"{ts}  {'':<11}     » {d['text']}"
        elif e.kind == "rep":
            self._flush_phase()
            line = (f"{ts}  {d['exercise']:<11} #{d['rep']:<2} rep {d['status']:<8} peak {d['peak_pct']:5.1f}%"
                    f" ({d['peak_cmh2o']:.1f} cmH2O) held {d['held_s']:.1f}/{d['hold_asked_s']:.1f}s"
                    f" release {'ok' if d['release_complete'] else 'incomplete'}")
        elif e.kind == "calibration":
            self._flush_phase()
            # The MVC is the rise above rest, never an absolute pressure: say so in the words.
            line = (f"{ts}  calibration rest {d['rest_cmh2o']:.1f} cmH2O, MVC {d['mvc_cmh2o']:.1f} cmH2O above rest"
                    f" ({d['oxford_band']})")
        elif e.kind in ("command", "warning", "exercise", "session", "setting", "stim", "probe"):
            if e.kind == "session" and d.get("state") in ("paused", "stopped", "done"):
                self._flush_phase()
            fields = " ".join(f"{k}={v}" for k, v in d.items())
            line = f"{ts}  [{e.kind}] {fields}"
        else:
            return
        self._held.append((e.t, line))
        if self._phase is None:
            self._flush_phase()
