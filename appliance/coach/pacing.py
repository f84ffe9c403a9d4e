"""Breath pacing: the in- and out-breath the coach's cues ride on.

A calm default rhythm (4 s in, 6 s out) that `slower`/`faster` change in steps,
never beyond what is comfortable (3–6 s in, 4–9 s out).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MIN_INHALE_S, MAX_INHALE_S = 3.0, 6.0
MIN_EXHALE_S, MAX_EXHALE_S = 4.0, 9.0
STEP = 1.15  # one `slower`/`faster` stretches or shrinks the breath by 15 %


@dataclass(frozen=True)
class Pace:
    inhale_s: float = 4.0
    exhale_s: float = 6.0

    @property
    def breath_s(self) -> float:
        return self.inhale_s + self.exhale_s

    @property
    def breaths_per_minute(self) -> float:
        return 60.0 / self.breath_s

    def slower(self) -> Pace | None:
        """The next slower pace, or None when already at the slowest."""
        return self._scaled(STEP)

    def faster(self) -> Pace | None:
        return self._scaled(1.0 / STEP)

    def _scaled(self, factor: float) -> Pace | None:
        inhale = min(max(self.inhale_s * factor, MIN_INHALE_S), MAX_INHALE_S)
        exhale = min(max(self.exhale_s * factor, MIN_EXHALE_S), MAX_EXHALE_S)
        if abs(inhale - self.inhale_s) < 1e-6 and abs(exhale - self.exhale_s) < 1e-6:
            return None
        return replace(self, inhale_s=round(inhale, 3), exhale_s=round(exhale, 3))

    def validated(self, file: str = "(prescription)") -> Pace:
        from appliance.config import check_range

        check_range(file, "pace.inhale_s", self.inhale_s, MIN_INHALE_S, MAX_INHALE_S)
        check_range(file, "pace.exhale_s", self.exhale_s, MIN_EXHALE_S, MAX_EXHALE_S)
        return self


class BreathFollower:
    """Times the out-breath cue on the patient's own breathing when the probe shows it clearly.

    The session asks, when it plans the in-breath before an out-breath cue, how long that
    in-breath should last. With a confident breath estimate
    (`appliance.sensor.breath.BreathDetector`) the answer ends on the patient's next
    out-breath; otherwise (or if that is far off) the paced length stands.
    """

    def __init__(self, detector, min_confidence: float = 0.75, max_stretch: float = 1.6) -> None:
        self.detector = detector
        self.min_confidence = min_confidence
        self.max_stretch = max_stretch  # never wait longer than this × the paced in-breath
        self.decisions: list[tuple[float, bool, float]] = []  # (clock time, followed, seconds)

    def inhale_seconds(self, now: float, paced_s: float, min_s: float) -> float:
        """Seconds from `now` (clock time) to the cue's transition; at least `min_s`."""
        est = self.detector.estimate(now)
        seconds = paced_s
        followed = False
        if est.confidence >= self.min_confidence and est.next_out_s is not None and est.period_s:
            t_out = est.next_out_s
            while t_out - now < min_s:
                t_out += est.period_s  # too soon for the cue: the out-breath after
            if t_out - now <= max(paced_s, min_s) * self.max_stretch:
                seconds, followed = t_out - now, True
        self.decisions.append((now, followed, seconds))
        return seconds
