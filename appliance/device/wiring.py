"""How one session is put together: the only place a coach `Session` is built.

The device, `appliance simulate`, the lending simulation, the scenario tests and the
benchmarks all come through `build_session`, so what is measured is what is shipped:
the same sinks in the same order, the probe's observations, breath following, the
live tone, stimulation and the control tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Protocol

from appliance.clock import Clock
from appliance.coach.pacing import BreathFollower, Pace
from appliance.coach.programme import Programme
from appliance.coach.session import DEFAULT_TONE_VOLUME, Calibration, PhraseTiming, Session
from appliance.events import Sink
from appliance.patient.progress import JumpCounter
from appliance.sensor.base import PressureSource
from appliance.sensor.breath import BreathDetector
from appliance.sensor.live import publish_live
from appliance.sensor.technique import ObservedSource, TechniqueMonitor
from appliance.store import StoreSink
from appliance.voice.phrases import Catalogue

# While a phase asks for a squeeze the coach decides every 40 ms, and at every moment its
# plan names (Session.next_due): what the tone means (its cue) changes within 40 ms; its
# pitch does not wait for the tick (appliance.sensor.live, bench/latency.py), the prompts
# and phases do not either. The stimulation exercise ticks every 5 ms, so its interlocks
# act as fast as docs/stimulation.md says (Session.needs_fast_tick).
CONTROL_TICK_S = 0.04
STIM_TICK_S = 0.005
# When no phase asks for a squeeze (words, in-breaths, rests; the tone silent; not the
# stimulation exercise: `Session.may_tick_slowly`) the loop ticks this often, and at the
# plan's moments; a command from the listener or the button then waits up to this long.
IDLE_TICK_S = 0.1


class SessionStore(Sink, Protocol):
    """The store's sink as a session sees it (a `StoreSink`, or the device's guarded one)."""

    @property
    def session_id(self) -> int | None: ...


@dataclass
class SessionParts:
    """What goes into a session besides the programme; each part optional but the source."""

    source: PressureSource
    store: SessionStore | None = None  # first: a repetition is on disk before anyone else hears of it
    audio: Sink | None = None  # the voice and the tone (appliance.voice.output.AudioSink)
    timing: PhraseTiming | None = None  # measured phrase durations (else estimated)
    sinks: Sequence[Sink] = field(default_factory=tuple)  # event log, timeline, tests' probes
    pace: Pace | None = None
    calibration: Calibration | None = None
    volume: float = 0.8
    tone_volume: float = DEFAULT_TONE_VOLUME  # the tone's own volume (the patient's, when remembered)
    more_phrase: str | None = None  # what to answer "more" with (post-op weeks)
    follow_breath: bool = True
    tz: tzinfo | None = None  # the prescription's time zone (stimulation counts its local days)
    earlier_today: Sequence[dict] = ()  # today's earlier repetitions, as stored (for "status")


@dataclass
class BuiltSession:
    session: Session
    source: ObservedSource  # read this in the control loop: it tells the coach what it sees


def build_session(programme: Programme, catalogue: Catalogue, clock: Clock, parts: SessionParts) -> BuiltSession:
    """A session with the device's sinks in the device's order and its observations.

    Order: the store, the jump counter (it writes into the store), the audio, the
    pressure source when it listens (the simulated floor hears the phases), the other
    sinks, then the observer of the probe. The probe's status, breath and technique reach
    the coach as observations, and the out-breath cues follow the patient's breathing
    when the probe shows it clearly (`follow_breath`).
    """
    sinks: list[Sink] = []
    if parts.store is not None:
        sinks.append(parts.store)
        sinks.append(JumpCounter(_inner_store(parts.store)))  # ex8: landings counted live
    if parts.audio is not None:
        sinks.append(parts.audio)
    if hasattr(parts.source, "emit"):
        sinks.append(parts.source)  # type: ignore[arg-type]
    sinks.extend(parts.sinks)
    session = Session(programme, catalogue, clock, sinks, timing=parts.timing, pace=parts.pace,
                      sample_rate_hz=parts.source.sample_rate_hz, calibration=parts.calibration,
                      volume=parts.volume, tone_volume=parts.tone_volume)
    session.more_phrase = parts.more_phrase
    session.tz = parts.tz
    session.earlier_today = list(parts.earlier_today)
    if not getattr(getattr(parts.audio, "shaper", None), "always_on", False):
        session.idle_tick_s = IDLE_TICK_S  # a tone always on follows the squeeze at every tick
    source: PressureSource = parts.source
    follow_live = getattr(parts.audio, "follow_live", None)
    if follow_live is not None:
        # The tone's pitch from the sensor side's newest sample, not the control tick; the
        # coach's calibration says what a pressure means (appliance.sensor.live).
        source = publish_live(source, follow_live(source.sample_rate_hz, lambda: session.calibration), clock)
    observed = ObservedSource(source, session, BreathDetector(), TechniqueMonitor(session.observe_warning))
    session.add_sink(observed)
    if parts.follow_breath:
        session.breath_follower = BreathFollower(observed.breath)
    return BuiltSession(session, observed)


def _inner_store(sink: SessionStore) -> StoreSink | None:
    """The plain StoreSink under the device's guard (the jump counter writes into it)."""
    inner = getattr(sink, "inner", sink)
    return inner if isinstance(inner, StoreSink) else None
