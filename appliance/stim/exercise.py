"""The stim exercise in a programme: the one module of `appliance.stim` that imports the coach.

It belongs with the day's plan (`appliance/patient/today.py`) and moves there; until
then `appliance.stim.with_stim_exercise` still finds it (lazily, so importing the
stim package never imports the coach).
"""

from __future__ import annotations

from dataclasses import replace

from appliance.coach.programme import Programme, load_programme
from appliance.stim.controller import STIM_EXERCISE_ID


def with_stim_exercise(programme: Programme, after: str = "awareness") -> Programme:
    """The programme with the stim exercise (coach/programmes/stim.toml) after `after`.

    Call only when the prescription enables stim today (`DayPlan.stim_allowed`); the
    controller still checks every interlock itself. At the start if `after` is absent.
    """
    stim = load_programme("stim").exercise(STIM_EXERCISE_ID)
    exercises = [e for e in programme.exercises if e.id != STIM_EXERCISE_ID]
    ids = [e.id for e in exercises]
    at = ids.index(after) + 1 if after in ids else 0
    return replace(programme, exercises=(*exercises[:at], stim, *exercises[at:]))
