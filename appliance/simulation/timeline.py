"""Two views of a session for people: a JSON-lines timeline file and a live terminal view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from appliance.events import Event, Feedback

if TYPE_CHECKING:
    from appliance.clock import Clock


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

    # Held back before the session starts when no session comes: print them as they are.
    MAX_BEFORE = 50

    def __init__(self, out: TextIO, clock: Clock | None = None) -> None:
        self.out = out
        self._exercise = ""
        self._phase: dict | None = None
        self._peak = 0.0
        self._peak_cmh2o = 0.0  # before the MVC is known a strength in % means nothing: the pressure
        self._held: list[tuple[float, str]] = []
        # The device speaks before the session (its ready phrase) on its own clock; with the
        # clock, those lines wait for the session's start and are printed at their time before
        # it (negative), not at 0:00.00 beside the welcome.
        self._clock = clock
        self._before: list[tuple[float, Event]] | None = [] if clock is not None else None

    def feedback(self, fb: Feedback) -> None:
        if fb.strength_pct > self._peak:
            self._peak = fb.strength_pct
        if fb.cmh2o > self._peak_cmh2o:
            self._peak_cmh2o = fb.cmh2o

    @staticmethod
    def _ts(t: float) -> str:
        minutes, seconds = divmod(abs(round(t, 2)), 60)
        sign = "-" if round(t, 2) < 0 else ""
        return f"{sign + str(int(minutes)):>3}:{seconds:05.2f}"

    def _flush_phase(self) -> None:
        d = self._phase
        if d is not None:
            self._phase = None
            rep = f"#{d['rep']}" if "rep" in d else "  "
            peak = max(self._peak, 0.0)
            if str(d["phase"]).startswith("calibrate"):  # no MVC yet: the probe's pressure itself
                shown = f"max {max(self._peak_cmh2o, 0.0):4.1f} cmH2O"
            else:
                shown = f"max {peak:3.0f}% (asked {d.get('level_pct', 0):.0f}%)"
            self._held.append((d["start"] - 1e-6, f"{self._ts(d['start'])}  {d.get('exercise', self._exercise):<11} "
                               f"{rep:>3} {d['phase']:<17} {strength_bar(peak, d.get('level_pct', 0))} {shown}"))
        self._held.sort(key=lambda x: x[0])
        self.out.write("".join(line + "\n" for _, line in self._held))
        self._held.clear()

    def emit(self, e: Event) -> None:
        if self._before is None or self._clock is None:
            self._line(e)
            return
        now = self._clock.now()
        started = e.kind == "session" and e.data.get("state") == "started"
        if not started and len(self._before) < self.MAX_BEFORE:
            self._before.append((now, e))
            return
        before, self._before = self._before, None
        for at, held in before:
            self._line(Event(at - now, held.kind, held.data) if started else held)
        self._line(e)

    def _line(self, e: Event) -> None:
        d = e.data
        ts = self._ts(e.t)
        if e.kind == "phase":
            self._flush_phase()
            self._exercise = d.get("exercise", self._exercise)
            self._phase = d
            self._peak = self._peak_cmh2o = -1e9
            return
        if e.kind == "say":
            line = f"{ts}  {'':<11}     » {d['text']}"
        elif e.kind == "rep":
            self._flush_phase()
            if d.get("peak_pct") is None:  # a daily-life exercise, probe out: timed only
                line = (f"{ts}  {d['exercise']:<11} #{d['rep']:<2} rep {d['status']:<8} no probe,"
                        f" {d['hold_asked_s']:.1f}s asked")
            else:
                line = (f"{ts}  {d['exercise']:<11} #{d['rep']:<2} rep {d['status']:<8} peak {d['peak_pct']:5.1f}%"
                        f" ({d['peak_cmh2o']:.1f} cmH2O) held {d['held_s']:.1f}/{d['hold_asked_s']:.1f}s"
                        f" release {'ok' if d['release_complete'] else 'incomplete'}"
                        + (" movement artefact" if d.get("artefact") else ""))
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
