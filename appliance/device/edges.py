"""The device's edges: clock, probe, speaker, microphone, GPIO pins and disk, real or simulated.

`Edges` is the one protocol the supervisor talks to; `DeviceEdges` is the hardware and
`SimulatedEdges` a simulated patient in a simulated room on a `SimClock` (like gpiozero's
pin factories: chosen once, the code above them is the same).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from appliance.clock import Clock, RealClock, SimClock
from appliance.commands import Command
from appliance.config import DeviceConfig
from appliance.events import Event, Feedback, Sink
from appliance.sensor.base import PressureSource, ProbeStatus

log = logging.getLogger(__name__)

OnCommand = Callable[..., None]


class AudioOutput(Protocol):
    """The speaker behind the mixer: it pulls the mixer's blocks at the audio rate."""

    @property
    def is_open(self) -> bool: ...

    last_error: str | None

    def stop(self) -> None: ...


class CommandListener(Protocol):
    """Voice in: calls `on_command(cmd, text, confidence)` from its own thread."""

    reason: str

    def start(self) -> bool: ...

    def stop(self) -> None: ...


class Edges(Protocol):
    """Everything physical the supervisor needs; one real and one simulated implementation."""

    name: str  # "device" or "simulation": stored with every session
    clock: Clock
    pin_factory: Any  # gpiozero pin factory (None: gpiozero's default on a Pi)

    def pressure_source(self, config: DeviceConfig, clock: Clock, state_dir: Path,
                        t0: float) -> PressureSource: ...

    def audio_output(self, mixer: Any, config: DeviceConfig) -> AudioOutput | None: ...

    def listener(self, config: DeviceConfig, state_dir: Path, on_command: OnCommand,
                 monitor: Any) -> CommandListener | None: ...

    def stim_line(self, pin: int) -> Any: ...

    def free_bytes(self, path: Path) -> int: ...

    def session_sinks(self) -> list[Sink]: ...

    def room_sinks(self) -> list[Sink]: ...


class SessionTimeSource:
    """A source and sink that lives in session time (the simulated floor) on the device clock.

    The runner reads with clock time; the floor hears events in session seconds. This
    shifts one into the other so both agree.
    """

    def __init__(self, inner: Any, t0: float) -> None:
        self.inner = inner
        self.t0 = t0
        self.sample_rate_hz = inner.sample_rate_hz

    def read_until(self, t: float) -> tuple[Sequence[float], Sequence[float]]:
        times, values = self.inner.read_until(t - self.t0)
        t0 = self.t0
        # Plain lists, as the floor gives them: one or two samples a tick, no arrays to build.
        return [x + t0 for x in times], values

    @property
    def status(self) -> ProbeStatus:
        return self.inner.status

    @property
    def abdominal(self) -> tuple[list[float], list[float]] | None:
        """The floor's abdominal channel from the last read (clock time), if it has one."""
        abd = getattr(self.inner, "abdominal", None)
        return None if abd is None else ([x + self.t0 for x in abd[0]], abd[1])

    def emit(self, event: Event) -> None:
        self.inner.emit(event)

    def feedback(self, fb: Feedback) -> None:
        self.inner.feedback(fb)

    def close(self) -> None:
        self.inner.close()


class DeviceEdges:
    """The real hardware: probe on SPI, sound card, microphone, GPIO pins, the SD card."""

    name = "device"
    pin_factory: Any = None

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or RealClock()

    def pressure_source(self, config: DeviceConfig, clock: Clock, state_dir: Path, t0: float) -> PressureSource:
        if config.sensor.source == "simulated":  # a demonstration unit without a probe
            from appliance.sensor.simulated import SimulatedPelvicFloor, profile

            return SessionTimeSource(SimulatedPelvicFloor(profile("average")), t0)
        from appliance.sensor.probe import open_probe

        return open_probe(config.sensor, clock, state_dir)

    def audio_output(self, mixer: Any, config: DeviceConfig) -> AudioOutput | None:
        from appliance.voice.audio import DeviceOutput

        return DeviceOutput(mixer, config.audio.output_device, config.audio.block_size).start()

    def listener(self, config: DeviceConfig, state_dir: Path, on_command: OnCommand,
                 monitor: Any) -> CommandListener | None:
        from appliance.voice.listener import Listener

        if not config.voice.enabled:
            return None
        return Listener.from_config(config, on_command, monitor=monitor, state_dir=state_dir)

    def stim_line(self, pin: int) -> Any:
        """The stimulation line, held by a separate process on a lease (appliance.stim)."""
        from appliance import stim

        opener = getattr(stim, "open_relayed_line", None)
        if opener is not None:
            return opener(pin)
        return stim.StimLine(pin, pin_factory=self.pin_factory)

    def free_bytes(self, path: Path) -> int:
        return shutil.disk_usage(path).free

    def session_sinks(self) -> list[Sink]:
        """Extra consumers of every session's events (tests inject faults through these)."""
        return []

    def room_sinks(self) -> list[Sink]:
        """Who else hears what the device says, in a session or not (nobody, on the device)."""
        return []


# --- the simulated room ------------------------------------------------------------------------


PLAY_OUT_MAX_S = 30.0


class SimulatedSpeaker:
    """A sound card on the simulated clock: it pulls the mixer in blocks as time passes,
    into `wav_path` when given (what the patient would have heard), else into nothing."""

    def __init__(self, mixer: Any, clock: SimClock, block_size: int, wav_path: Path | None) -> None:
        from appliance.voice.audio import WavSink, frames_for

        self.mixer = mixer
        self.clock = clock
        self.t_open = clock.now()
        self.last_error: str | None = None
        self.output_latency_s: float | None = None
        # The sound card's blocks are planned as the clock moves and their samples made a
        # second at a time (Mixer.plan_block): the bytes the speaker's callbacks would give.
        self.wav = WavSink(wav_path, mixer, block_size=max(block_size, 64), deferred=True) if wav_path else None
        self._stopped = False
        self._frames_for = frames_for
        clock.on_advance(self._pull)

    @property
    def is_open(self) -> bool:
        return not self._stopped

    def _pull(self, now: float) -> None:
        wav = self.wav
        if wav is None or self._stopped:
            return
        slot = getattr(self.mixer.tone, "slot", None)
        if slot is not None and slot.keeps_time and self.mixer.tone.params.live is not None:
            # The pitch follows the live pressure: each sample the sensor side took since
            # the last pull reaches the blocks that begin after it (the card's callback
            # reads the slot once per block), not the control loop's next tick.
            frames_for = self._frames_for
            rate, block, t_open = self.mixer.sample_rate, wav.block_size, self.t_open
            end = frames_for(now - t_open, rate)
            ts = slot.next_time()
            while ts is not None and ts <= now:
                f = frames_for(ts - t_open, rate)
                wav.render_until_frame(min(-(-f // block) * block, end))
                slot.publish_until(ts)
                ts = slot.next_time()
        wav.render_until(now - self.t_open)

    def stop(self) -> None:
        """Stop; a WAV first gets the phrase still being said (as a speaker would play it out)."""
        if self._stopped:
            return
        if self.wav is not None:
            t = self.clock.now() - self.t_open
            for _ in range(int(PLAY_OUT_MAX_S / 0.1)):
                if not self.mixer.playback_state().speaking and not self.mixer.has_queued_speech():
                    break
                t += 0.1
                self.wav.render_until(t)
            self.wav.render_until(t + 0.25)
        self._stopped = True
        self.clock.remove_observer(self._pull)
        if self.wav is not None:
            self.wav.close()


@dataclass(frozen=True)
class Adherence:
    """How a simulated patient answers: the main session's local time, which reminders they
    take up, and how often they skip. Seeded, so a lending period replays exactly."""

    name: str = "good"
    main_at: str = "09:15"  # local time the patient starts the day's main session
    skip_main: float = 0.0  # chance a day's main session is skipped
    answer_reminder: float = 0.9  # chance a reminder is answered with "start"
    snooze_reminder: float = 0.05  # chance it is answered with "later"


ADHERENCE = {
    "good": Adherence(),
    "average": Adherence("average", "19:30", skip_main=0.15, answer_reminder=0.55, snooze_reminder=0.2),
    "poor": Adherence("poor", "20:45", skip_main=0.45, answer_reminder=0.2, snooze_reminder=0.3),
}

REMINDER_PHRASE = "device.reminder"
READY_PHRASE = "device.ready"


class SimulatedVoice:
    """The simulated patient's voice, as the device's microphone hears it.

    It is in the room (`room_sinks`): after the device says it is ready it says "start"
    (`start_after_ready_s` later, once the device has stopped speaking), and it answers
    reminders as its `Adherence` says. Commands arrive through the listener callback, as
    the real recognizer's do.
    """

    detector = True
    reason = ""
    healthy = True

    def __init__(self, clock: Clock, on_command: OnCommand, monitor: Any, rng: np.random.Generator,
                 start_after_ready: bool, start_after_ready_s: float, adherence: Adherence | None) -> None:
        self.clock = clock
        self.on_command = on_command
        self.monitor = monitor
        self.rng = rng
        self.start_after_ready = start_after_ready
        self.start_after_ready_s = start_after_ready_s
        self.adherence = adherence
        self._pending: list[tuple[float, Command]] = []
        self._listening = False
        if hasattr(clock, "on_advance"):
            clock.on_advance(self._tick)

    def start(self) -> bool:
        self._listening = True
        return True

    def stop(self) -> None:
        self._listening = False

    def say_at(self, t: float, cmd: Command) -> None:
        self._pending.append((t, cmd))
        self._pending.sort(key=lambda p: p[0])

    def hear(self, phrase: str) -> None:
        now = self.clock.now()
        if phrase == READY_PHRASE and self.start_after_ready:
            self.start_after_ready = False  # only the first time
            self.say_at(now + self.start_after_ready_s, Command.START)
        elif phrase == REMINDER_PHRASE and self.adherence is not None:
            draw = self.rng.random()
            if draw < self.adherence.answer_reminder:
                self.say_at(now + 8.0, Command.START)
            elif draw < self.adherence.answer_reminder + self.adherence.snooze_reminder:
                self.say_at(now + 8.0, Command.LATER)

    def _tick(self, now: float) -> None:
        if not self._pending or not self._listening:
            return
        if self._pending[0][0] > now:
            return
        if self.monitor is not None and self.monitor.playback_state()[2]:
            return  # the patient waits until the device has finished its sentence
        _, cmd = self._pending.pop(0)
        self.on_command(cmd, "", 1.0)


class _RoomEar:
    """A sink in the room: passes every phrase the device says to the simulated patient."""

    def __init__(self, edges: SimulatedEdges) -> None:
        self.edges = edges

    def emit(self, event: Event) -> None:
        if event.kind == "say" and self.edges.voice is not None:
            self.edges.voice.hear(str(event.data.get("phrase")))

    def feedback(self, fb: Feedback) -> None:
        return None


@dataclass
class SimulatedPatient:
    """Who the simulated pelvic floor is: profile, seeded technique faults, strength."""

    profile: str = "average"
    seed: int = 0
    faults: Sequence[Any] = ()
    fault_rate: float | None = None
    sample_rate_hz: float = 100.0
    strength: float = 1.0  # grows over a lending period
    floors: list[Any] = field(default_factory=list)

    def floor(self, session_index: int) -> Any:
        from appliance.sensor.simulated import SimulatedPelvicFloor, profile

        prof = profile(self.profile, tuple(self.faults), self.fault_rate)
        if self.strength != 1.0:
            prof = replace(prof, mvc_cmh2o=prof.mvc_cmh2o * self.strength,
                           fatigue_per_s=prof.fatigue_per_s / max(self.strength, 0.5))
        floor = SimulatedPelvicFloor(prof, seed=self.seed + session_index, sample_rate_hz=self.sample_rate_hz)
        self.floors.append(floor)
        return floor


class SimulatedEdges:
    """A simulated patient in a simulated room on a `SimClock`: the floor behind the probe
    (directly, or through the MCP3xxx chip simulator and gpiozero with `via_adc`), mock
    GPIO pins, a speaker that renders to a WAV file, and the patient's voice."""

    name = "simulation"

    def __init__(self, patient: str | SimulatedPatient = "average", seed: int = 0, *,
                 clock: Clock | None = None, wav_path: Path | None = None, via_adc: Any = False,
                 start_after_ready: bool = True, start_after_ready_s: float = 2.0,
                 adherence: Adherence | None = None, extra_sinks: Sequence[Sink] = (),
                 room_sinks: Sequence[Sink] = (), strength: Callable[[], float] | None = None) -> None:
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        self.clock: Clock = clock or SimClock()
        self.pin_factory = MockFactory(pin_class=MockPWMPin)
        self.patient = patient if isinstance(patient, SimulatedPatient) else SimulatedPatient(patient, seed)
        self.wav_path = wav_path
        self.via_adc = via_adc
        self.start_after_ready = start_after_ready
        self.start_after_ready_s = start_after_ready_s
        self.adherence = adherence
        self.extra_sinks = list(extra_sinks)
        self.extra_room = list(room_sinks)
        self.strength = strength  # the patient's strength now (grows over a lending period)
        self.rng = np.random.default_rng(self.patient.seed + 7919)
        self.speaker: SimulatedSpeaker | None = None
        self.voice: SimulatedVoice | None = None
        self.stim_lines: list[Any] = []
        self._said: list[tuple[float, Command]] = []

    @property
    def floors(self) -> list[Any]:
        return self.patient.floors

    def pressure_source(self, config: DeviceConfig, clock: Clock, state_dir: Path, t0: float) -> PressureSource:
        if self.strength is not None:
            self.patient.strength = self.strength()
        floor = self.patient.floor(len(self.floors))
        source: Any = SessionTimeSource(floor, t0)
        if self.via_adc:
            from appliance.sensor.mcp_sim import ResampledPressure, simulated_adc_probe

            sensor = self.via_adc if not isinstance(self.via_adc, bool) else config.sensor
            probe, *_ = simulated_adc_probe(ResampledPressure(source), sensor, clock,
                                            seed=self.patient.seed + len(self.floors))
            return _FloorBehindProbe(probe, source)
        return source

    @property
    def simulated_time(self) -> bool:
        """On a SimClock the room runs on the clock's steps; on a real clock (`appliance run
        --simulated`) there is no speaker and the patient says nothing (the button drives it)."""
        return hasattr(self.clock, "on_advance")

    def audio_output(self, mixer: Any, config: DeviceConfig) -> AudioOutput | None:
        if not self.simulated_time:
            return None
        self.speaker = SimulatedSpeaker(mixer, self.clock, config.audio.block_size, self.wav_path)  # type: ignore[arg-type]
        return self.speaker

    def listener(self, config: DeviceConfig, state_dir: Path, on_command: OnCommand,
                 monitor: Any) -> CommandListener | None:
        self.voice = SimulatedVoice(self.clock, on_command, monitor, self.rng,
                                    self.start_after_ready and self.simulated_time,
                                    self.start_after_ready_s, self.adherence)
        for t, cmd in self._said:
            self.voice.say_at(t, cmd)
        return self.voice

    def say_at(self, t: float, cmd: Command) -> None:
        """The patient says `cmd` at clock time `t` (a lending period's main sessions)."""
        self._said.append((t, cmd))
        if self.voice is not None:
            self.voice.say_at(t, cmd)

    def stim_line(self, pin: int) -> Any:
        from appliance.stim import StimLine

        line = StimLine(pin, pin_factory=self.pin_factory)
        self.stim_lines.append(line)
        return line

    def free_bytes(self, path: Path) -> int:
        return shutil.disk_usage(path).free

    def session_sinks(self) -> list[Sink]:
        return list(self.extra_sinks)

    def room_sinks(self) -> list[Sink]:
        return [_RoomEar(self), *self.extra_room]

    def close(self) -> None:
        """After the device has shut down: the speaker's file is complete and closed."""
        if self.speaker is not None:
            self.speaker.stop()


class _FloorBehindProbe:
    """The probe path reading the simulated floor; the floor still hears the coach."""

    def __init__(self, probe: Any, floor: SessionTimeSource) -> None:
        self.probe = probe
        self.floor = floor
        self.sample_rate_hz = probe.sample_rate_hz

    def read_until(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        return self.probe.read_until(t)

    @property
    def status(self) -> ProbeStatus:
        return self.probe.status

    def emit(self, event: Event) -> None:
        self.floor.emit(event)

    def feedback(self, fb: Feedback) -> None:
        self.floor.feedback(fb)

    def close(self) -> None:
        self.probe.close()
