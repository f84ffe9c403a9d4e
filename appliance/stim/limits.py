"""The hard limits of electrostimulation and the contraindication checklist: reviewed in one place.

Nothing else in the package may widen these; every other module reads them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class StimLimits:
    """Limits no prescription can exceed; change them only after clinical review.

    Sources (see the team's CLINICAL.md, "Electrostimulation"):
    - work at most 10 s, rest at least as long as work: clinic trial protocols cycle
      5 s on / 10 s off; on-times beyond 10 s are outside what the leaflet's clinic uses.
    - rest at least 3 s: before every work phase the patient is told and has
      `announce_seconds` (3 s) to say stop, and that warning is spoken during the rest.
    - session at most 30 min: INNOVO uses 30-min sessions; home vaginal stimulation
      runs 20-30 min a day.
    - one stim session a day unless prescribed, never more than two.
    - no stimulation within 12 weeks after childbirth or pelvic surgery (contraindication).
    - trigger threshold 10-90 %MVC: below 10 % noise and breath ripple would fire it,
      above 90 % a weak patient (the very patients stim is for) would never reach it.
    - the control loop must tick at least every 200 ms or the watchdog drops the line.
    """

    min_work_seconds: float = 1.0
    max_work_seconds: float = 10.0
    min_rest_seconds: float = 3.0
    max_rest_seconds: float = 60.0
    max_session_minutes: float = 30.0
    default_sessions_per_day: int = 1
    max_sessions_per_day: int = 2
    postoperative_weeks: int = 12
    announce_seconds: float = 3.0
    min_trigger_pct: float = 10.0
    max_trigger_pct: float = 90.0
    watchdog_seconds: float = 0.2

    @property
    def max_on_seconds(self) -> float:
        """The longest the line may be asked to stay high: a work phase and one watchdog period."""
        return self.max_work_seconds + self.watchdog_seconds


HARD_LIMITS = StimLimits()

# The contraindication checklist (CLINICAL.md); every item must be answered "no".
CONTRAINDICATIONS: Mapping[str, str] = MappingProxyType(
    {
        "pacemaker": "a pacemaker or other implanted stimulator",
        "pregnancy_or_trying": "pregnancy or trying to conceive",
        "recent_birth_or_pelvic_surgery": "less than 12 weeks after childbirth or pelvic surgery",
        "infection": "a urinary or vaginal infection or discharge",
        "pelvic_cancer": "pelvic cancer",
        "epilepsy": "epilepsy",
        "broken_skin": "broken skin at the electrode",
        "no_sensation": "no sensation at the electrode",
        "metal_implant_or_iud": "metal implants or a conductive IUD near the field",
        "large_prolapse": "a large prolapse",
        "cannot_report_discomfort": "cognitive impairment that prevents reporting discomfort",
        "urinary_retention": "urinary retention",
    }
)

