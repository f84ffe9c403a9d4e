"""The electrostimulation line: one GPIO output that gates an external, certified stimulator.

The line is high only while every interlock holds; any stop, fault, hang, signal or exit
drives it low. Split by idea:

- `limits`: `HARD_LIMITS` and the contraindication checklist, the one reviewed place;
- `prescription`: the clinician's `[stim]` table, parsed against the limits;
- `line`: the `Line` protocol, `StimLine` + `StimWatchdog` (in-process) and
  `RelayedLine` (the device's line, held by the relay process), exit handlers;
- `relay`: the small separate process that holds the pin on a 200 ms lease;
- `controller`: `StimController`, every interlock in one decision, and `open_stim`.

The package imports nothing above it (no coach, no patient plan): putting the stim
exercise into a programme is the day plan's job (`appliance.patient.today`).
"""

from __future__ import annotations

from appliance.stim.controller import (
    PHRASE_BEGINS,
    PHRASE_REST,
    PHRASE_STOPPED,
    PHRASE_TRIGGERED,
    PHRASE_UNAVAILABLE,
    STIM_EXERCISE_ID,
    StimContext,
    StimController,
    StimCue,
    StimState,
    open_stim,
    stim_sessions_on,
)
from appliance.stim.limits import CONTRAINDICATIONS, HARD_LIMITS, StimLimits
from appliance.stim.line import (
    Line,
    RelayedLine,
    RelayError,
    StimLine,
    StimWatchdog,
    drive_low,
    install_exit_handlers,
    open_relayed_line,
)
from appliance.stim.prescription import (
    StimMode,
    StimPrescription,
    parse_stim_prescription,
    postoperative,
)

__all__ = [
    "CONTRAINDICATIONS", "HARD_LIMITS", "PHRASE_BEGINS", "PHRASE_REST", "PHRASE_STOPPED",
    "PHRASE_TRIGGERED", "PHRASE_UNAVAILABLE", "STIM_EXERCISE_ID", "Line", "RelayError",
    "RelayedLine", "StimContext", "StimController", "StimCue", "StimLimits", "StimLine",
    "StimMode", "StimPrescription", "StimState", "StimWatchdog", "drive_low",
    "install_exit_handlers", "open_relayed_line", "open_stim", "parse_stim_prescription",
    "postoperative", "stim_sessions_on",
]

