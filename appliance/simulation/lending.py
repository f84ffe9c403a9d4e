"""A simulated lending period: weeks of sessions at the patient's local times, into a state dir.

The same coach, store and sinks as `appliance.simulation.simulate`, but with a `SimClock`
whose wall clock walks through the weeks (`set_wall`), the patient code on every
session, a jump counter, and a patient who gets a little stronger each week. Used by
the clinic tests and `bench/clinic_weeks.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from appliance.clock import SimClock
from appliance.coach.programme import Programme, load_programme
from appliance.coach.runner import ScriptedCommand, run
from appliance.coach.session import Session
from appliance.commands import Command
from appliance.events import Sink
from appliance.patient.progress import PERFECT_PROGRAMME, JumpCounter, assess_perfect, store_perfect
from appliance.sensor.simulated import PROFILES, SimulatedPelvicFloor
from appliance.store import Store, StoreSink
from appliance.voice.phrases import Catalogue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRun:
    when_local: datetime
    programme: str
    session_id: int | None
    reps: int
    state: str


def run_session(store: Store, clock: SimClock, programme: Programme, catalogue: Catalogue, code: str,
                patient: str = "average", seed: int = 0, strength: float = 1.0,
                extra_sinks: Sequence[Sink] = (), script: Sequence[ScriptedCommand] = ()) -> tuple[Session, StoreSink]:
    """One session at the clock's current wall time, stored with the patient code."""
    base = PROFILES[patient]
    prof = replace(base, mvc_cmh2o=base.mvc_cmh2o * strength,
                   fatigue_per_s=base.fatigue_per_s / max(strength, 0.5))
    floor = SimulatedPelvicFloor(prof, seed=seed, start=clock.now())
    store_sink = StoreSink(store, clock, programme.id, catalogue.lang, patient_code=code)
    jumps = JumpCounter(store_sink)
    sinks: list[Sink] = [store_sink, jumps, floor, *extra_sinks]
    session = Session(programme, catalogue, clock, sinks)
    full = sorted([*script, ScriptedCommand(2.0, Command.START)], key=lambda c: c.t)
    run(session, floor, clock, tick_s=0.01, script=full, max_seconds=3600.0)
    store.flush()
    return session, store_sink


def simulate_lending(
    state_dir: Path,
    code: str,
    first_day: date,
    days: int,
    plan: Callable[[date, int], Sequence[tuple[str, str | Programme]]],
    tz: str = "Europe/Brussels",
    lang: str = "nl",
    patient: str = "average",
    weekly_gain: float = 0.04,
    db_name: str = "appliance.db",
) -> list[SessionRun]:
    """Run `plan(day, day_index)` → [(local "HH:MM", programme)] for every day into the state dir.

    The patient's strength grows by `weekly_gain` a week. A `perfect` session is scored
    and its PERFECT result stored, as the device does after the weekly assessment.
    """
    zone = ZoneInfo(tz)
    catalogue = Catalogue.load(lang)
    cache: dict[str, Programme] = {}
    clock = SimClock()
    store = Store(Path(state_dir) / db_name)
    runs: list[SessionRun] = []
    try:
        for i in range(days):
            day = first_day + timedelta(days=i)
            for j, (hhmm, prog) in enumerate(plan(day, i)):
                if isinstance(prog, str):
                    prog = cache.setdefault(prog, load_programme(prog, catalogue.keys()))
                local = datetime.combine(day, time(int(hhmm[:2]), int(hhmm[3:])), zone)
                clock.set_wall(local.astimezone(ZoneInfo("UTC")))
                strength = 1.0 + weekly_gain * i / 7.0
                session, sink = run_session(store, clock, prog, catalogue, code, patient,
                                            seed=i * 10 + j, strength=strength)
                if prog.id == PERFECT_PROGRAMME and sink.session_id is not None:
                    result = assess_perfect(store.path, sink.session_id)
                    if result is not None:
                        store_perfect(store.path, sink.session_id, result)
                runs.append(SessionRun(local, prog.id, sink.session_id, len(session.reps), session.state.value))
    finally:
        store.close()
    return runs
