"""One session of the device on a simulated clock: `appliance simulate`.

`simulate()` runs the device's supervisor (`appliance.device.appliance.Appliance`) on
`SimulatedEdges`: the simulated patient behind the probe (directly or through the ADC
path), mock GPIO pins, a speaker that renders to `session.wav`, and a patient who says
"start" after the device says it is ready. The same configuration, health checks,
prescription, day plan, stimulation, observations, breath following and control loop
(40 ms ticks while a squeeze is asked, 100 ms otherwise, 5 ms through stimulation, a tick
at every planned moment) as the device; the simulated probe's samples reach the tone at
their own time, as the sampler thread's do on the device (`SimulatedSampler`).
Used by `appliance simulate`, the scenario tests and the benchmarks.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from appliance.clock import SimClock
from appliance.coach.pacing import Pace
from appliance.coach.programme import Programme
from appliance.coach.runner import ScriptedCommand
from appliance.coach.session import Calibration, PhraseTiming, Session
from appliance.events import Event, Feedback, Sink
from appliance.sensor.simulated import Fault, SimulatedPelvicFloor
from appliance.simulation.timeline import ConsoleTimeline, TimelineWriter

log = logging.getLogger(__name__)

START_AT_S = 2.0  # the simulated patient says "start" two seconds after the device is ready
DB_FILES = ("appliance.db", "appliance.db-wal", "appliance.db-shm")


class EventLog:
    """Keeps every event of the session in memory (tests and benchmarks read it)."""

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
    appliance: Any = None  # the supervisor that ran it (appliance.device.appliance.Appliance)


class SimulationError(Exception):
    """The simulated device could not run a session (it said why on its speaker and log)."""


def simulate(
    out_dir: Path | None = None,
    lang: str | None = "nl",
    patient: str = "average",
    seed: int = 0,
    script: Sequence[ScriptedCommand] = (),
    programme: Programme | str | None = None,
    faults: Sequence[Fault] = (),
    fault_rate: float | None = None,
    console: TextIO | None = None,
    extra_sinks: Sequence[Sink] = (),
    tick_s: float | None = None,
    sample_rate_hz: float = 100.0,
    calibration: Calibration | None = None,
    pace: Pace | None = None,
    max_seconds: float = 3 * 3600.0,
    auto_start: bool = True,
    timing: PhraseTiming | None = None,
    via_adc: bool | Any = None,
    *,
    state_dir: Path | None = None,
    config_path: Path | None = None,
    wav_path: Path | None = None,
    audio: bool | None = None,
    speech_cache: Path | None = None,
    start_wall: datetime | None = None,
) -> SimulationResult:
    """Run the device for one session on a simulated clock.

    With `state_dir` the device uses the patient enrolled there (prescription, plan of the
    day, post-op gate, stimulation, language) and stores into its database; `programme`
    (a name or a Programme) overrides the prescription's plan. Without it the state is `out_dir` (a fresh
    database, the leaflet's defaults) or a temporary directory. `out_dir` also gets
    timeline.jsonl. `wav_path` (or `audio=True`) renders the spoken phrases and the tone,
    and the coach times its prompts on them; otherwise phrase durations are estimated.
    `via_adc` reads the floor through the real probe code path (MCP3xxx chip simulator,
    gpiozero, ADC sampler, probe) with the configuration's `[sensor]`. As on the device,
    the probe is always observed and the breath followed; `tick_s` defaults to the device's.
    """
    from appliance.device.appliance import Appliance, RunOptions
    from appliance.device.edges import SimulatedEdges, SimulatedPatient
    from appliance.device.wiring import CONTROL_TICK_S

    temp = None
    if state_dir is None:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stale in DB_FILES:
                (out_dir / stale).unlink(missing_ok=True)
            state_dir = out_dir
        else:
            temp = tempfile.TemporaryDirectory(prefix="appliance-sim-")
            state_dir = Path(temp.name)
    events = EventLog()
    sinks: list[Sink] = [events]
    timeline = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        timeline = TimelineWriter(out_dir / "timeline.jsonl")
        sinks.append(timeline)
    sinks.extend(extra_sinks)
    clock = SimClock(wall_start=start_wall)
    room: list[Sink] = [ConsoleTimeline(console, clock)] if console is not None else []
    edges = SimulatedEdges(SimulatedPatient(patient, seed, tuple(faults), fault_rate, sample_rate_hz),
                           clock=clock, wav_path=wav_path, via_adc=via_adc or False,
                           start_after_ready=auto_start, start_after_ready_s=START_AT_S,
                           extra_sinks=sinks, room_sinks=room)
    options = RunOptions(
        config_path=config_path,
        state_dir=state_dir,
        programme=programme if isinstance(programme, str) else None,
        programme_file=programme if isinstance(programme, Programme) else None,
        sessions=1,
        calibration=calibration,
        audio=bool(wav_path) if audio is None else audio,
        speech_cache=speech_cache,
        tick_s=tick_s or CONTROL_TICK_S,
        script=tuple(script),
        max_session_s=max_seconds,
        serve_until=clock.now() + max_seconds + 600.0,
        timing=timing,
        language=lang,
        pace=pace,
    )
    device = Appliance(options, edges)
    try:
        device.main()
    finally:
        edges.close()
        if timeline is not None:
            timeline.close()
        if temp is not None:
            temp.cleanup()
    record = device.records[-1] if device.records else None
    if record is None:
        raise SimulationError(f"the simulated device ran no session: {device.health.needs_clinic or 'not started'}")
    extra = {"observed": record.source, "perfect": record.perfect}
    return SimulationResult(record.session, events, edges.floors[-1], out_dir, record.session.session_time(),
                            extra, device)
