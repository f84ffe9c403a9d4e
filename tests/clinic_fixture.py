"""Shared by the clinic tests: a state directory filled with simulated weeks of one patient."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from appliance.clinic.enrolment import enroll
from appliance.coach.programme import load_programme
from appliance.simulation.lending import simulate_lending

EXAMPLE = Path(__file__).parent.parent / "examples" / "prescription.toml"
CODE = "GNT-2026-0042"


def prescription_file(tmp: Path, code: str = CODE, extra: str = "") -> Path:
    text = EXAMPLE.read_text().replace('code = "GNT-2026-0042"', f'code = "{code}"')
    # No surgery dates: the weeks simulated here are after the post-operative gate.
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("surgery_date", "catheter_removal")))
    path = tmp / f"rx-{code}.toml"
    path.write_text(text + "\n" + extra)
    return path


def filled_state_dir(tmp: Path, days: int = 21, code: str = CODE, first_day: date = date(2026, 3, 2)) -> Path:
    """Enrolled, then `days` of training: one or two short sets a day, a weekly PERFECT."""
    state = tmp / "state"
    enroll(state, prescription_file(tmp, code))
    lp = load_programme("leaflet")
    short, moving = lp.only("ex1"), lp.only("ex7", "ex8")

    def plan(day, i):
        out = [("08:30", short)]
        if i % 2:
            out.append(("17:30", short))
        if i % 7 == 0:
            out.append(("10:00", "perfect"))
        if i % 7 == 3:
            out.append(("19:00", moving))
        return out

    simulate_lending(state, code, first_day, days, plan, patient="weak")
    # What the service writes next to the database: a log and a timeline of the last session.
    (state / "logs").mkdir(exist_ok=True)
    (state / "logs" / "appliance.log").write_text(f"session for {code} finished\n")
    (state / "timeline.jsonl").write_text('{"kind": "rep", "peak_cmh2o": 12.34}\n')
    return state


def copy_state(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
