"""A whole session against the simulated pelvic floor, as the device would run it.

`simulate()` wires the same coach, store and sinks as the device, with a `SimClock`
and `SimulatedPelvicFloor` in place of the real clock and probe. Used by
`appliance simulate`, the scenario tests and the benchmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from appliance.clock import SimClock
from appliance.coach.pacing import Pace
from appliance.coach.programme import Programme, load_programme
from appliance.coach.runner import ScriptedCommand, run
from appliance.coach.session import Calibration, PhraseTiming, Session
from appliance.commands import Command
from appliance.config import SensorConfig
from appliance.events import Event, Feedback, Sink
from appliance.sensor.simulated import Fault, SimulatedPelvicFloor, profile
from appliance.simulation.timeline import ConsoleTimeline, TimelineWriter
from appliance.store import Store, StoreSink
from appliance.voice.phrases import Catalogue

log = logging.getLogger(__name__)

START_AT_S = 2.0  # the simulated patient says "start" two seconds after the welcome


class EventLog:
    """Keeps every event in memory (tests and benchmarks read it)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def feedback(self, fb: Feedback) -> None:
        return None

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


@dataclass
class SimulationResult:
    session: Session
    log: EventLog
    floor: SimulatedPelvicFloor
    out_dir: Path | None
    duration_s: float
    extra: dict = field(default_factory=dict)


def simulate(
    out_dir: Path | None = None,
    lang: str = "nl",
    patient: str = "average",
    seed: int = 0,
    script: Sequence[ScriptedCommand] = (),
    programme: Programme | str = "leaflet",
    faults: Sequence[Fault] = (),
    fault_rate: float | None = None,
    console: TextIO | None = None,
    extra_sinks: Sequence[Sink] = (),
    tick_s: float = 0.01,
    sample_rate_hz: float = 100.0,
    calibration: Calibration | None = None,
    pace: Pace | None = None,
    max_seconds: float = 3 * 3600.0,
    auto_start: bool = True,
    timing: PhraseTiming | None = None,
    via_adc: SensorConfig | None = None,
    observe: bool = False,
    follow_breath: bool = False,
) -> SimulationResult:
    """Run one session in simulation; with `out_dir`, write appliance.db and timeline.jsonl.

    With `via_adc` (a sensor configuration) the coach reads the simulated pelvic floor
    through the real probe code path: MCP3xxx chip simulator, gpiozero, ADC sampler, Probe.
    With `observe`, probe status, breath and technique reach the coach as observations
    (appliance.sensor.technique.ObservedSource; in `extra["observed"]`). With `follow_breath`
    (implies `observe`) the out-breath cues follow the breath read from the probe.
    """
    catalogue = Catalogue.load(lang)
    prog = programme if isinstance(programme, Programme) else load_programme(programme, catalogue.keys())
    clock = SimClock()
    floor = SimulatedPelvicFloor(profile(patient, tuple(faults), fault_rate), seed=seed,
                                 sample_rate_hz=sample_rate_hz)
    events = EventLog()
    sinks: list[Sink] = [events]
    closers = []
    store = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("appliance.db", "appliance.db-wal", "appliance.db-shm"):
            (out_dir / stale).unlink(missing_ok=True)
        store = Store(out_dir / "appliance.db")
        sinks.insert(0, StoreSink(store, clock, prog.id, lang, source="simulation"))
        timeline = TimelineWriter(out_dir / "timeline.jsonl")
        sinks.append(timeline)
        closers.append(timeline.close)
    sinks.append(floor)
    if console is not None:
        sinks.append(ConsoleTimeline(console))
    sinks.extend(extra_sinks)
    source = floor
    if via_adc is not None:
        from appliance.sensor.mcp_sim import ResampledPressure, simulated_adc_probe

        source, *_ = simulated_adc_probe(ResampledPressure(floor), via_adc, clock, seed=seed)
        closers.append(source.close)
        sample_rate_hz = source.sample_rate_hz
    session = Session(prog, catalogue, clock, sinks, pace=pace, sample_rate_hz=sample_rate_hz,
                      calibration=calibration, timing=timing)
    extra: dict = {}
    if observe or follow_breath:
        from appliance.sensor.technique import observe as observe_source

        source = observe_source(source, session, follow_breath)
        extra["observed"] = source
        closers.insert(0, source.technique.finish)
    full_script = list(script)
    if auto_start:
        full_script.append(ScriptedCommand(START_AT_S, Command.START))
    try:
        run(session, source, clock, tick_s=tick_s, script=full_script, max_seconds=max_seconds)
    finally:
        for close in closers:
            close()
        if store is not None:
            store.close()
    return SimulationResult(session, events, floor, out_dir, session.session_time(), extra)
