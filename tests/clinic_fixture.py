"""Shared by the clinic tests: a state directory filled by the device itself.

`filled_state_dir` enrolls a patient and runs the device on a simulated clock over the
lending period (`appliance.simulation.lending.simulate_days`, as `appliance simulate
--days` does): the main session at the patient's time, short sets on reminders, the
weekly PERFECT on Mondays, this week's targets. The prescription keeps the main session
short (ex1, ex7, ex8) so weeks simulate in seconds; each lending is simulated once (per
version of the code: the cache is keyed by a hash of the sources, and shared by the
test processes under a file lock) and copied for every test that asks for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

from appliance.clinic.enrolment import enroll
from appliance.simulation.lending import simulate_days

EXAMPLE = Path(__file__).parent.parent / "examples" / "prescription.toml"
CODE = "GNT-2026-0042"
SHORT_LENDING_DAYS, LONG_LENDING_DAYS = 2, 14
# A main session a physiotherapist might prescribe to a patient who knows her floor:
# the squeeze and hold, walking, and jumping; two reminders a day for a short set.
FIXTURE_RX = """
[exercise.awareness]
enabled = false
[exercise.ex2]
enabled = false
[exercise.ex3]
enabled = false
[exercise.ex4]
enabled = false
[exercise.ex5]
enabled = false
[exercise.ex6]
enabled = false
"""

REPO = Path(__file__).resolve().parents[1]
# Modules that only read what the device stored: a change to them does not change the lending.
READ_ONLY = frozenset(f"appliance/clinic/{name}" for name in (
    "report.py", "summary.py", "summary_page.py", "tables.py", "wording.py", "charts.py", "traces.py",
    "report-nl.toml", "report-en.toml"))


def _code_version() -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in [*(REPO / "appliance").rglob("*.py"), *(REPO / "appliance").rglob("*.toml"),
                               Path(__file__), EXAMPLE] if p.relative_to(REPO).as_posix() not in READ_ONLY)
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_cache_root = Path(tempfile.gettempdir()) / f"appliance-clinic-fixture-{_code_version()}"


def prescription_file(tmp: Path, code: str = CODE, extra: str = "") -> Path:
    text = EXAMPLE.read_text().replace('code = "GNT-2026-0042"', f'code = "{code}"')
    # No surgery dates: the weeks simulated here are after the post-operative gate.
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("surgery_date", "catheter_removal")))
    path = tmp / f"rx-{code}.toml"
    path.write_text(text + "\n" + extra)
    return path


def _lending_prescription(tmp: Path, code: str) -> Path:
    path = prescription_file(tmp, code, FIXTURE_RX)
    text = path.read_text()
    text = text.replace('times = ["08:30", "11:00", "14:00", "17:30", "20:30"]', 'times = ["08:30", "17:30"]')
    text = text.replace("enabled = false                  # no jumping until the clinic says so", "enabled = true")
    path.write_text(text)
    return path


def filled_state_dir(tmp: Path, days: int = LONG_LENDING_DAYS, code: str = CODE,
                     first_day: date = date(2026, 3, 2)) -> Path:
    """Enrolled, then at least `days` of training by the device (2 or 14 days are simulated)."""
    length = SHORT_LENDING_DAYS if days <= SHORT_LENDING_DAYS else LONG_LENDING_DAYS
    if days > LONG_LENDING_DAYS:
        raise ValueError(f"the fixture simulates at most {LONG_LENDING_DAYS} days")
    built = _cache_root / f"{code}-{first_day}-{length}"
    _cache_root.mkdir(parents=True, exist_ok=True)
    with open(_cache_root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it right now
        if not (built / "complete").exists():
            shutil.rmtree(built, ignore_errors=True)
            enroll(built, _lending_prescription(_cache_root, code),
                   datetime.combine(first_day, datetime.min.time(), UTC))
            simulate_days(built, length, first_day=first_day, patient="weak", seed=1)
            # What the service writes next to the database: a log and a timeline of the last session.
            (built / "logs").mkdir(exist_ok=True)
            (built / "logs" / "appliance.log").write_text(f"session for {code} finished\n")
            (built / "timeline.jsonl").write_text('{"kind": "rep", "peak_cmh2o": 12.34}\n')
            (built / "complete").write_text("")
    state = tmp / "state"
    shutil.copytree(built, state, ignore=shutil.ignore_patterns("complete"))
    return state


def copy_state(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
