"""`appliance run`: the device service. Wires the real edges, says it is ready, runs sessions.

Under systemd (appliance.service) it reports READY once the ready phrase is queued, feeds
the watchdog from its control loop only, and survives every fault it can name: a bad
configuration (it stays up saying "needs the clinic"), no microphone or voice model (the
button alone drives it), a speaker or microphone unplugged (retried), a full disk
(repetitions kept, samples dropped), probe faults (spoken), wall-clock jumps (control
time is monotonic). `--simulated` swaps the probe for the simulated pelvic floor and the
pins for gpiozero's mock pins; everything else is the device's code path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import sqlite3
import sys
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from appliance.cli.common import UserError, add_common_args
from appliance.clock import Clock, RealClock
from appliance.commands import Command
from appliance.config import ConfigError, ControlsConfig, DeviceConfig, load_device_config
from appliance.device.controls import ActivityState, Controls
from appliance.device.service import Notifier, Signals, WatchdogFeeder, take_announcements
from appliance.events import Event, Feedback, Sink
from appliance.sensor.base import ProbeStatus

log = logging.getLogger(__name__)

DB_NAME = "appliance.db"
LOW_DISK_BYTES = 50 * 1024 * 1024  # below this, pressure samples stop; repetitions go on
DISK_CHECK_S = 5.0
HEALTH_CHECK_S = 1.0
RETRY_MICROPHONE_S = 10.0
SPEAKER_GRACE_S = 3.0  # the output may take a moment to open at start
PROBE_FAULT_S = 1.0  # a probe fault must persist this long before it is spoken
REMINDER_HOURS = range(8, 21)  # without a prescription: never remind at night
REMINDER_CHECK_S = 20.0
REMINDER_ANSWER_S = 120.0  # "start" or "later" within this long answers the reminder
DEVICE_PHRASES = (
    "device.ready",
    "device.needs_clinic",
    "device.no_microphone",
    "device.microphone_back",
    "device.no_voice_model",
    "device.speaker_back",
    "device.disk_full",
    "device.probe",
    "device.reminder",
    "device.goodbye",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the appliance (the systemd service's command)",
        description="Run the appliance: say it is ready, then run a session whenever the "
        "button is pressed or 'start' is said. Stops on SIGTERM.",
    )
    add_common_args(p)
    p.add_argument("--simulated", action="store_true",
                   help="simulated pelvic floor and mock GPIO pins instead of the hardware")
    p.add_argument("--programme", default=None,
                   help="programme name or TOML file (default: the patient's prescription, "
                   "else the leaflet)")
    p.add_argument("--auto-start", action="store_true", help="start a session as soon as ready")
    p.add_argument("--sessions", type=int, default=None, metavar="N",
                   help="exit after N sessions (tests and benchmarks)")
    p.add_argument("--calibration", default=None, metavar="REST,MVC",
                   help="use this calibration (cmH2O) instead of measuring it (tests, demos)")
    p.add_argument("--events", default=None, metavar="FILE",
                   help="append every event as a JSON line to FILE ('-' for stdout)")
    p.add_argument("--no-audio", action="store_true", help="do not render or play speech")
    p.add_argument("--exit-when-ready", action="store_true",
                   help="exit 0 right after READY (start-up benchmark)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    calibration = None
    if args.calibration:
        from appliance.coach.session import Calibration

        try:
            rest, mvc = (float(x) for x in args.calibration.split(","))
        except ValueError:
            raise UserError(f"--calibration {args.calibration!r}: expected REST,MVC in cmH2O") from None
        calibration = Calibration(rest, mvc)
    if args.sessions is not None and args.sessions < 1:
        raise UserError(f"--sessions {args.sessions}: must be at least 1")
    options = RunOptions(
        config_path=args.config,
        state_dir=args.state_dir,
        programme=args.programme,
        auto_start=args.auto_start,
        sessions=args.sessions,
        calibration=calibration,
        events=args.events,
        audio=not args.no_audio,
        exit_when_ready=args.exit_when_ready,
    )
    edges = SimulatedEdges() if args.simulated else DeviceEdges()
    if not _writable(args.state_dir):
        raise UserError(f"state directory {args.state_dir} is not writable (use --state-dir DIR)")
    signals = Signals()
    signals.install()
    appliance = Appliance(options, edges, RealClock(), Notifier(), signals)
    return appliance.main()


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def process_age_s() -> float | None:
    """Seconds since this process started (from /proc), for the start -> ready figure."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --- options and edges -------------------------------------------------------------------


@dataclass
class RunOptions:
    config_path: Path | None
    state_dir: Path
    programme: str | None = None  # None: the prescription's plan for today, else the leaflet
    auto_start: bool = False
    sessions: int | None = None
    calibration: Any = None  # appliance.coach.session.Calibration
    events: str | TextIO | None = None
    audio: bool = True
    exit_when_ready: bool = False
    speech_cache: Path | None = None  # default: STATE_DIR/cache/speech
    tick_s: float = 0.005  # 5 ms control tick: the live tone follows within ~14 ms (bench/latency.py)
    idle_tick_s: float = 0.05


class SessionTimeSource:
    """A source and sink that lives in session time (the simulated floor) on a real clock.

    The runner reads with clock time; the floor hears events in session seconds. This
    shifts one into the other so both agree.
    """

    def __init__(self, inner: Any, t0: float) -> None:
        self.inner = inner
        self.t0 = t0
        self.sample_rate_hz = inner.sample_rate_hz

    def read_until(self, t: float):
        import numpy as np

        times, values = self.inner.read_until(t - self.t0)
        return np.asarray(times, dtype=float) + self.t0, np.asarray(values, dtype=float)

    @property
    def status(self) -> ProbeStatus:
        return self.inner.status

    def emit(self, event: Event) -> None:
        self.inner.emit(event)

    def feedback(self, fb: Feedback) -> None:
        self.inner.feedback(fb)

    def close(self) -> None:
        self.inner.close()


class DeviceEdges:
    """The real hardware: probe on SPI, sound card, microphone, GPIO pins."""

    simulated = False
    pin_factory: Any = None

    def pressure_source(self, config: DeviceConfig, clock: Clock, state_dir: Path, t0: float):
        if config.sensor.source == "simulated":
            return SimulatedEdges().pressure_source(config, clock, state_dir, t0)
        from appliance.sensor.probe import open_probe

        return open_probe(config.sensor, clock, state_dir)

    def audio_output(self, mixer: Any, config: DeviceConfig):
        from appliance.voice.audio import DeviceOutput

        return DeviceOutput(mixer, config.audio.output_device, config.audio.block_size).start()

    def listener(self, config: DeviceConfig, state_dir: Path, on_command: Callable, monitor: Any):
        from appliance.voice.listener import Listener

        if not config.voice.enabled:
            return None
        return Listener.from_config(config, on_command, monitor=monitor, state_dir=state_dir)

    def free_bytes(self, path: Path) -> int:
        return shutil.disk_usage(path).free

    def session_sinks(self) -> list[Sink]:
        """Extra consumers of every session's events (tests inject faults through these)."""
        return []


class SimulatedEdges(DeviceEdges):
    """The simulated pelvic floor, mock pins, no sound card and no microphone."""

    simulated = True

    def __init__(self, patient: str = "average", seed: int = 0) -> None:
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        self.pin_factory = MockFactory(pin_class=MockPWMPin)
        self.patient = patient
        self.seed = seed
        self.sessions = 0

    def pressure_source(self, config: DeviceConfig, clock: Clock, state_dir: Path, t0: float):
        from appliance.sensor.simulated import SimulatedPelvicFloor, profile

        self.sessions += 1
        floor = SimulatedPelvicFloor(profile(self.patient), seed=self.seed + self.sessions)
        return SessionTimeSource(floor, t0)

    def audio_output(self, mixer: Any, config: DeviceConfig):
        return None

    def listener(self, config: DeviceConfig, state_dir: Path, on_command: Callable, monitor: Any):
        return None


# --- sinks the service adds --------------------------------------------------------------


class EventWriter:
    """Every event as a JSON line, flushed at once: what a power-cut test reads."""

    def __init__(self, target: str | TextIO) -> None:
        if isinstance(target, str):
            self._fh = sys.stdout if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
            self._own = target != "-"
        else:
            self._fh, self._own = target, False
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = json.dumps({"wall": datetime.now().astimezone().isoformat(), **event.as_json()},
                          ensure_ascii=False, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def feedback(self, fb: Feedback) -> None:
        return None

    def close(self) -> None:
        if self._own:
            self._fh.close()


class GuardedStoreSink:
    """The store's sink, plus what a full disk needs: samples stop, repetitions go on.

    SQLite errors are logged and swallowed here so the coach never sees them. A full
    disk ("database or disk is full") is counted in `disk_full`, anything else (a schema
    that does not match, a broken file) in `errors`: the service says the disk is full
    for the first and that the device needs the clinic for the second.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.disk_full = 0
        self.errors = 0
        self.last_error = ""

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        if "full" in str(exc).lower():
            self.disk_full += 1
        else:
            self.errors += 1
        self.last_error = f"storing {what} failed: {exc}"
        log.error("%s", self.last_error)

    def emit(self, event: Event) -> None:
        try:
            # Metrics computed from numpy samples arrive as numpy scalars, which json (the
            # store's event log) refuses; plain values keep the repetition.
            self.inner.emit(Event(float(event.t), event.kind, _plain(event.data)))
        except sqlite3.Error as exc:
            self._failed(event.kind, exc)

    def feedback(self, fb: Feedback) -> None:
        try:
            self.inner.feedback(fb)
        except sqlite3.Error as exc:
            self._failed("a sample", exc)


# --- the appliance -------------------------------------------------------------------------


@dataclass
class Health:
    """Faults the service knows about; each one is spoken once when it appears."""

    needs_clinic: str | None = None
    microphone: str | None = None
    speaker: str | None = None
    disk_low: bool = False
    store_error: str | None = None
    probe_bad_since: float | None = None
    probe_logged: bool = False
    spoken: list[str] = field(default_factory=list)


class Appliance:
    """The service: configuration, edges, announcements, the idle loop and sessions."""

    def __init__(self, options: RunOptions, edges: DeviceEdges, clock: Clock,
                 notifier: Notifier, signals: Signals) -> None:
        self.options = options
        self.edges = edges
        self.clock = clock
        self.notifier = notifier
        self.signals = signals
        self.watchdog = WatchdogFeeder(notifier)
        self.commands: queue.Queue[tuple[Command, str]] = queue.Queue()
        self.health = Health()
        self.config: DeviceConfig | None = None
        self.lang = "nl"
        self.t0 = clock.now()
        self.sessions_run = 0
        self.session: Any = None
        self.source: Any = None
        self.store: Any = None
        self.store_sink: GuardedStoreSink | None = None
        self.controls: Controls | None = None
        self.listener: Any = None
        self.mixer: Any = None
        self.output: Any = None
        self.bank: Any = None
        self.idle_audio: Any = None
        self.events = EventWriter(options.events) if options.events else None
        self.catalogue: Any = None
        self.programme: Any = None
        self.ready_after_s: float | None = None
        self._bank_thread: threading.Thread | None = None
        self._next_health = 0.0
        self._next_disk = 0.0
        self._next_mic_retry = 0.0
        self._samples_dropped_seen = 0
        self._speaker_since: float | None = None
        self._last_reminder_day: str | None = None
        self.rx: Any = None  # appliance.patient.prescription.Prescription
        self.reminder_clock: Any = None
        self._pending_reminder: tuple[Any, float] | None = None
        self._timer_reminder = threading.Event()  # SIGUSR1 from appliance-reminder.timer
        self._next_reminder_check = 0.0

    # -- public --------------------------------------------------------------------------
    def command(self, cmd: Command, source: str = "button") -> None:
        """Hand a command to the loop (any thread): button, voice, tests."""
        self.commands.put((cmd, source))

    def main(self) -> int:
        try:
            self.start()
            if self.options.exit_when_ready:
                return 0
            self.serve()
            return 0
        finally:
            self.shutdown()

    def start(self) -> None:
        """Load the configuration, open the edges, say ready (or "needs the clinic")."""
        self.notifier.status("starting")
        self.config = self._load_config()
        cfg = self.config or DeviceConfig()
        self.controls = Controls(cfg.controls if self.config else ControlsConfig(),
                                 self.command, pin_factory=self.edges.pin_factory)
        self._open_audio(cfg)
        if self.config is None:
            self._announce("device.needs_clinic")
            self.controls.show(ActivityState.NEEDS_ATTENTION)
            self._ready(f"needs the clinic: {self.health.needs_clinic}")
            return
        self._open_store()
        self._load_programme()
        if self.health.needs_clinic:  # the prescription was refused
            self._announce("device.needs_clinic")
            self.controls.show(ActivityState.NEEDS_ATTENTION)
            self._ready(f"needs the clinic: {self.health.needs_clinic}")
            return
        self._open_listener()
        self._announce("device.ready")
        self._announce_voice_faults()
        self.controls.show(ActivityState.READY)
        self._ready("ready")
        self._prepare_phrases_in_background()

    def serve(self) -> None:
        """The idle loop: commands, signals, reminders, health; sessions run from here."""
        next_t = self.clock.now()
        if self.options.auto_start and self.config is not None:
            self.command(Command.START, "auto")
        while not self.signals.stop.is_set():
            next_t += self.options.idle_tick_s
            self.clock.sleep_until(next_t)
            now = self.clock.now()
            if now - next_t > 1.0:
                next_t = now
            self.watchdog.tick()
            if Signals.take(self.signals.reload):
                self._reload()
            if Signals.take(self.signals.reminder):
                self._timer_reminder.set()
                self._next_reminder_check = now
            if now >= self._next_reminder_check:
                self._next_reminder_check = now + REMINDER_CHECK_S
                self._remind()
            self._check_health(now, in_session=False)
            while not self.commands.empty():
                cmd, source = self.commands.get_nowait()
                self._idle_command(cmd, source)
            if self.options.sessions is not None and self.sessions_run >= self.options.sessions:
                break

    def shutdown(self) -> None:
        self.notifier.stopping("stopping")
        if self.controls is not None:
            self.controls.show(ActivityState.OFF)
            self.controls.close()
        if self.listener is not None:
            self.listener.stop()
        if self.output is not None:
            self.output.stop()
        if self.store is not None:
            try:
                self.store.close()
            except sqlite3.Error as exc:
                log.error("closing the store: %s", exc)
        if self.events is not None:
            self.events.close()
        self.notifier.close()

    # -- start-up pieces -----------------------------------------------------------------
    def _load_config(self) -> DeviceConfig | None:
        path = self.options.config_path
        try:
            return load_device_config(path)
        except ConfigError as exc:
            self.health.needs_clinic = str(exc)
            self.lang = _language_hint(path)
            log.error("configuration refused, needs the clinic: %s", exc)
            return None

    def _ready(self, status: str) -> None:
        self.ready_after_s = process_age_s()
        self.notifier.ready(status)
        log.warning("%s (%.2f s after process start)", status, self.ready_after_s or -1.0)
        self._emit_service("service", state="ready", status=status, ready_after_s=self.ready_after_s)

    def _open_audio(self, cfg: DeviceConfig) -> None:
        """The speaker (always watched) and, unless --no-audio, the rendered phrases."""
        self.lang = cfg.language if self.config is not None else self.lang
        from appliance.voice.audio import Mixer
        from appliance.voice.phrases import Catalogue

        self.catalogue = Catalogue.load(self.lang)
        if self.output is not None:  # reopened after a reload
            self.output.stop()
        self.mixer = Mixer(cfg.audio.sample_rate, volume=cfg.audio.volume)
        try:
            self.output = self.edges.audio_output(self.mixer, cfg)
        except Exception as exc:  # no PortAudio at all: silence, watched like a missing card
            log.error("audio output unavailable: %s", exc)
            self.output = None
        self._speaker_since = self.clock.now()
        if not self.options.audio:
            return
        try:
            from appliance.voice.output import AudioSink
            from appliance.voice.speech import PhraseBank, SpeechRenderer
            from appliance.voice.tone import ToneMapping, ToneShaper

            renderer = SpeechRenderer(self.options.speech_cache
                                      or self.options.state_dir / "cache" / "speech")
            self.bank = PhraseBank(self.catalogue, renderer, lang=self.lang,
                                   rate_wpm=cfg.audio.speech_rate_wpm,
                                   sample_rate=cfg.audio.sample_rate, volume=1.0)
            self.bank.prepare([k for k in DEVICE_PHRASES if self.catalogue.has(k)])
            shaper = ToneShaper(ToneMapping(cfg.audio.tone_rest_hz, cfg.audio.tone_target_hz),
                                always_on=False)
            self.idle_audio = AudioSink(self.mixer, self.bank, shaper, output=None,
                                        base_rate_wpm=cfg.audio.speech_rate_wpm)
        except Exception as exc:  # speech is not worth dying for: log, carry on in silence
            log.error("speech unavailable: %s", exc)
            self.bank = self.idle_audio = None

    def _prepare_phrases_in_background(self) -> None:
        if self.bank is None:
            return

        def work() -> None:
            try:
                self.bank.prepare()
            except Exception as exc:
                log.error("rendering phrases failed: %s", exc)

        self._bank_thread = threading.Thread(target=work, name="phrase-render", daemon=True)
        self._bank_thread.start()

    def _open_store(self) -> None:
        from appliance.store import Store

        self.store = Store(self.options.state_dir / DB_NAME)
        # Sessions a power cut interrupted stay 'running' in the file; say what they were.
        n = self.store.mark_interrupted()
        if n:
            log.warning("%d session(s) interrupted by a power cut or crash", n)

    def _load_programme(self) -> None:
        from appliance.coach.programme import load_programme

        try:
            self.programme = load_programme(self.options.programme or "leaflet",
                                            self.catalogue.keys())
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        self._load_prescription()

    def _load_prescription(self) -> None:
        """The patient's prescription (enrolled by the clinic stick), if there is one."""
        from appliance.patient.prescription import load_prescription, prescription_path
        from appliance.patient.reminders import ReminderClock

        self.rx = self.reminder_clock = None
        path = prescription_path(self.options.state_dir)
        if not path.exists():
            return
        try:
            self.rx = load_prescription(path)
            self.reminder_clock = ReminderClock(self.rx.reminders, self.rx.source)
        except ConfigError as exc:
            # Training without the prescription the clinic meant could harm (post-op limits).
            self.rx = None
            self.health.needs_clinic = str(exc)
            log.error("prescription refused, needs the clinic: %s", exc)

    def _todays_programme(self, short_set: bool = False) -> Any:
        """The prescription's plan for today (post-op gate, overrides), else the loaded one."""
        return self._todays_plan(short_set)[0]

    def _todays_plan(self, short_set: bool = False) -> tuple[Any, Any]:
        """(programme, DayPlan or None): what may be trained today, stim included."""
        if self.rx is None or self.options.programme is not None:
            return self.programme, None
        from appliance.patient.prescription import plan_for_day
        from appliance.patient.reminders import short_set as make_short_set

        today = self.clock.wall().astimezone(self.rx.tz).date()
        seen = False
        if self.rx.unlock_date is not None and self.store is not None:
            seen = any(s["started_utc"][:10] >= self.rx.unlock_date.isoformat()
                       and s["programme"] == self.rx.programme for s in self.store.sessions())
        plan = plan_for_day(self.rx, today, full_programme_seen_since_unlock=seen)
        programme = make_short_set(plan.programme, self.rx.reminders) if short_set else plan.programme
        if plan.stim_allowed and not short_set:
            from appliance.stim import with_stim_exercise

            programme = with_stim_exercise(programme)
        return programme, plan

    def _open_listener(self) -> None:
        assert self.config is not None

        def heard(cmd: Command, text: str = "", confidence: float = 1.0) -> None:
            self.command(cmd, "voice")

        try:
            self.listener = self.edges.listener(self.config, self.options.state_dir, heard,
                                                MixerMonitor(self.mixer))
        except Exception as exc:
            log.error("voice listener failed: %s", exc)
            self.listener = None
        if self.listener is None:
            if self.config.voice.enabled and not self.edges.simulated:
                self.health.microphone = "no listener"
            return
        if getattr(self.listener, "detector", True) is None:
            self.health.microphone = f"model: {self.listener.reason}"
            return
        if not self.listener.start():
            self.health.microphone = self.listener.reason or "no microphone"
            self._next_mic_retry = self.clock.now() + RETRY_MICROPHONE_S

    def _announce_voice_faults(self) -> None:
        problem = self.health.microphone
        if problem is None:
            return
        self._announce("device.no_voice_model" if problem.startswith("model") else
                       "device.no_microphone")

    # -- saying things -------------------------------------------------------------------
    def _announce(self, phrase: str, warning: str | None = None) -> None:
        """Speak a device phrase: through the session if one runs, else directly."""
        self.health.spoken.append(phrase)
        log.warning("saying %s", phrase)
        if self.session is not None and warning is not None:
            self.session.observe_warning(warning, phrase)
            return
        t = self.clock.now() - self.t0
        data = {"phrase": phrase, "text": self.catalogue.text(phrase) if self.catalogue else "",
                "lang": self.lang, "at": round(t, 3)}
        event = Event(t, "say", data)
        if self.idle_audio is not None:
            try:
                self.idle_audio.emit(event)
            except Exception as exc:
                log.error("cannot say %s: %s", phrase, exc)
        if self.events is not None:
            self.events.emit(event)
        if self.session is not None:
            for sink in self.session.sinks:
                if sink is self.store_sink:
                    sink.emit(Event(self.session.session_time(), "say", data))

    def _emit_service(self, kind: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(Event(self.clock.now() - self.t0, kind, data))

    # -- commands and sessions -------------------------------------------------------------
    def _idle_command(self, cmd: Command, source: str) -> None:
        if self.config is None or self.health.needs_clinic:
            if cmd in (Command.STATUS, Command.START, Command.HELP):
                self._announce("device.needs_clinic")
            return
        short = False
        if self._pending_reminder is not None and cmd in (Command.START, Command.LATER):
            reminder, asked_at = self._pending_reminder
            self._pending_reminder = None
            if self.clock.now() - asked_at <= REMINDER_ANSWER_S and self.reminder_clock:
                from appliance.patient.reminders import Answer

                answer, phrase = self.reminder_clock.answer(reminder, cmd, _utc(self.clock))
                if phrase:
                    self._say_if_known(phrase)
                short = answer is Answer.START
        if cmd is Command.START:
            self._run_session(source, short_set=short)
        elif cmd in (Command.STATUS, Command.HELP):
            self._announce("device.ready")

    def _run_session(self, source: str, short_set: bool = False) -> None:
        from appliance.coach.runner import run as run_loop
        from appliance.coach.session import Session, State
        from appliance.store import StoreSink
        from appliance.voice.output import AudioSink

        assert self.config is not None and self.store is not None
        while self._bank_thread is not None and self._bank_thread.is_alive():
            # Clips must be ready before the coach speaks (first boot renders them all);
            # the loop is alive meanwhile, so the watchdog is fed.
            self._bank_thread.join(timeout=0.5)
            self.watchdog.tick()
        try:
            programme, plan = self._todays_plan(short_set)
        except ConfigError as exc:
            log.error("today's programme refused: %s", exc)
            self._announce("device.needs_clinic")
            return
        t0 = self.clock.now()
        try:
            self.source = self.edges.pressure_source(self.config, self.clock,
                                                     self.options.state_dir, t0)
        except Exception as exc:
            log.error("probe unavailable: %s", exc)
            self._announce("device.probe")
            self.controls.show(ActivityState.NEEDS_ATTENTION)
            return
        self.store.keep_samples = not self.health.disk_low
        self.store_sink = GuardedStoreSink(
            StoreSink(self.store, self.clock, programme.id, self.lang,
                      patient_code=self.rx.code if self.rx is not None else None,
                      source="simulation" if self.edges.simulated else "device"))
        # The store first: a repetition is on disk before anyone else hears of it.
        sinks: list[Sink] = [self.store_sink]
        audio = None
        timing = None
        if self.bank is not None:
            from appliance.voice.speech import RenderedTiming
            from appliance.voice.tone import ToneMapping, ToneShaper

            a = self.config.audio
            audio = AudioSink(self.mixer, self.bank,
                              ToneShaper(ToneMapping(a.tone_rest_hz, a.tone_target_hz),
                                         always_on=a.tone_always_on),
                              output=None, base_rate_wpm=a.speech_rate_wpm)
            sinks.append(audio)
            timing = RenderedTiming(self.bank)
        if hasattr(self.source, "emit"):
            sinks.append(self.source)
        if self.events is not None:
            sinks.append(self.events)
        sinks.extend(self.edges.session_sinks())
        from appliance.patient.progress import JumpCounter

        sinks.append(JumpCounter(self.store_sink.inner))  # ex8: landings counted live
        session = Session(programme, self.catalogue, self.clock, sinks, timing=timing,
                          sample_rate_hz=self.source.sample_rate_hz,
                          calibration=self.options.calibration, volume=self.config.audio.volume)
        if plan is not None:
            session.more_phrase = plan.more_phrase
        # Probe status, breath and technique reach the coach as observations; the
        # out-breath cues follow the patient's own breathing when the probe shows it clearly.
        from appliance.sensor.technique import observe

        self.source = observe(self.source, session, follow_breath=True)
        self.session = session
        stim_cm = self._open_stim(plan)
        stim = stim_cm.__enter__()
        if stim is not None:
            session.attach_stim(stim)
        session.command(Command.START, source=source)
        self.controls.show(ActivityState.IN_SESSION)

        def on_tick(now: float) -> None:
            self.watchdog.tick()
            while not self.commands.empty():
                cmd, src = self.commands.get_nowait()
                session.command(cmd, source=src)
            self._check_health(now, in_session=True)
            state = session.state
            if self.controls.state is not ActivityState.NEEDS_ATTENTION:
                self.controls.show(ActivityState.PAUSED if state is State.PAUSED
                                   else ActivityState.IN_SESSION)

        def should_stop() -> bool:
            if self.signals.stop.is_set() and not session.finished:
                session.command(Command.STOP, source="service")
            return self.signals.stop.is_set()

        try:
            run_loop(session, self.source, self.clock, tick_s=self.options.tick_s,
                     on_tick=on_tick, should_stop=should_stop)
        finally:
            stim_cm.__exit__(None, None, None)  # the stimulation line is low whatever happened
            try:
                self.store.flush()
            except sqlite3.Error as exc:
                log.error("flushing the store: %s", exc)
            self.source.close()
            self.session = None
            self.sessions_run += 1
            self.controls.show(ActivityState.NEEDS_ATTENTION if self._faulty()
                               else ActivityState.READY)
        del audio

    def _open_stim(self, plan: Any) -> Any:
        """The stim line for this session when today's plan allows it, else a no-op context."""
        from contextlib import nullcontext

        if plan is None or not plan.stim_allowed or self.rx is None or self.rx.stim is None:
            return nullcontext(None)
        from appliance.stim import open_stim, stim_sessions_on

        assert self.config is not None and self.store is not None
        store = self.store
        return open_stim(self.config.controls.stim_pin, self.rx.stim,
                         sessions_on=lambda day: stim_sessions_on(store, day),
                         pin_factory=self.edges.pin_factory)

    # -- faults ------------------------------------------------------------------------------
    def _faulty(self) -> bool:
        h = self.health
        return bool(h.needs_clinic or h.speaker or h.disk_low or h.store_error)

    def _check_health(self, now: float, in_session: bool) -> None:
        if self.session is not None:
            self._check_probe(now)
        if now < self._next_health:
            return
        self._next_health = now + HEALTH_CHECK_S
        self._check_inbox()
        self._check_speaker(now)
        self._check_microphone(now)
        if now >= self._next_disk:
            self._next_disk = now + DISK_CHECK_S
            self._check_disk()

    def _check_inbox(self) -> None:
        """Phrases other processes asked for (the clinic stick service): say them."""
        for phrase in take_announcements(self.options.state_dir):
            if self.catalogue is not None and self.catalogue.has(phrase):
                self._announce(phrase, warning=f"announce:{phrase}")
            else:
                log.error("announcement %r is not a phrase in %s", phrase, self.lang)

    def _check_probe(self, now: float) -> None:
        status = getattr(self.source, "status", ProbeStatus.OK)
        if status in (ProbeStatus.OK,):
            self.health.probe_bad_since = None
            self.health.probe_logged = False
            return
        if self.health.probe_bad_since is None:
            self.health.probe_bad_since = now
        elif now - self.health.probe_bad_since >= PROBE_FAULT_S and not self.health.probe_logged:
            # The observed source has already said which fault it is (probe.<status>);
            # here it is logged once and shown on the LED.
            self.health.probe_logged = True
            log.warning("probe fault: %s", status.value)

    def _check_speaker(self, now: float) -> None:
        out = self.output
        if out is None or self._speaker_since is None:
            return
        if out.is_open:
            if self.health.speaker is not None:
                log.warning("speaker back")
                self.health.speaker = None
                self._announce("device.speaker_back", warning="speaker_back")
            return
        if now - self._speaker_since >= SPEAKER_GRACE_S and self.health.speaker is None:
            self.health.speaker = out.last_error or "no output device"
            log.error("speaker unavailable: %s (retrying)", self.health.speaker)
            self.controls.show(ActivityState.NEEDS_ATTENTION)

    def _check_microphone(self, now: float) -> None:
        lst = self.listener
        if lst is None or getattr(lst, "detector", None) is None:
            return
        if self.health.microphone is None:
            if not _listener_alive(lst):
                lst.stop()
                self.health.microphone = "microphone lost"
                self._next_mic_retry = now + RETRY_MICROPHONE_S
                self._announce("device.no_microphone", warning="microphone")
            return
        if now >= self._next_mic_retry:
            self._next_mic_retry = now + RETRY_MICROPHONE_S
            if lst.start():
                self.health.microphone = None
                self._announce("device.microphone_back", warning="microphone_back")

    def _check_disk(self) -> None:
        low = False
        try:
            low = self.edges.free_bytes(self.options.state_dir) < LOW_DISK_BYTES
        except OSError as exc:
            log.error("cannot read free space: %s", exc)
        dropped = getattr(self.store, "samples_dropped", 0)
        sink = self.store_sink
        if dropped > self._samples_dropped_seen or (sink is not None and sink.disk_full):
            low = True
            self._samples_dropped_seen = dropped
        if sink is not None and sink.errors and not self.health.store_error:
            # Repetitions are not being kept: nothing the patient can fix.
            self.health.store_error = sink.last_error
            self.controls.show(ActivityState.NEEDS_ATTENTION)
            self._announce("device.needs_clinic", warning="store")
        if low and not self.health.disk_low:
            self.health.disk_low = True
            log.error("disk nearly full: pressure samples are no longer stored")
            if self.store is not None:
                self.store.keep_samples = False
            self._announce("device.disk_full", warning="disk")
        elif not low and self.health.disk_low and self.store_sink is None:
            self.health.disk_low = False

    # -- signals -------------------------------------------------------------------------------
    def _reload(self) -> None:
        """SIGHUP: the clinic fixed the configuration or the prescription. Leave "needs the
        clinic" if both are good now; a running appliance keeps its configuration."""
        if self.session is not None:
            return
        down = self.config is None or self.health.needs_clinic is not None
        if not down:
            self._load_prescription()  # a new prescription takes effect at the next session
            if self.health.needs_clinic is None:
                return
        fresh = self._load_config()
        if fresh is not None:
            self.health.needs_clinic = None
            first_time = self.config is None
            self.config = fresh
            if first_time:
                self._open_audio(self.config)
                self._open_store()
                self.controls.close()
                self.controls = Controls(self.config.controls, self.command,
                                         pin_factory=self.edges.pin_factory)
            self._load_programme()
        if fresh is None or self.health.needs_clinic is not None:
            self._announce("device.needs_clinic")
            self.controls.show(ActivityState.NEEDS_ATTENTION)
            self.notifier.status(f"needs the clinic: {self.health.needs_clinic}")
            return
        if self.listener is None:
            self._open_listener()
        self._announce("device.ready")
        self._announce_voice_faults()
        self.controls.show(ActivityState.READY)
        self.notifier.status("ready")
        self._emit_service("service", state="ready", status="ready after reload")
        self._prepare_phrases_in_background()

    def _remind(self) -> None:
        """A reminder, if one is due: the prescription's times (checked every 20 s and on
        SIGUSR1 from appliance-reminder.timer), else the timer's own times by day."""
        if self.config is None or self.session is not None or self.health.needs_clinic:
            return
        if self.reminder_clock is not None:
            r = self.reminder_clock.due(_utc(self.clock), self._last_set_utc())
            if r is not None:
                for phrase in r.phrases:
                    self._say_if_known(phrase)
                self._pending_reminder = (r, self.clock.now())
            return
        if not Signals.take(self._timer_reminder):
            return
        wall = self.clock.wall().astimezone()
        day = wall.date().isoformat()
        if wall.hour not in REMINDER_HOURS or self._last_reminder_day == day + str(wall.hour // 12):
            return
        self._last_reminder_day = day + str(wall.hour // 12)
        self._announce("device.reminder")

    def _last_set_utc(self) -> datetime | None:
        if self.store is None:
            return None
        ended = [s["ended_utc"] for s in self.store.sessions() if s.get("ended_utc")]
        return datetime.fromisoformat(max(ended)) if ended else None

    def _say_if_known(self, phrase: str) -> None:
        if self.catalogue is not None and self.catalogue.has(phrase):
            self._announce(phrase)
        else:
            log.warning("phrase %r is not in the %s catalogue; not said", phrase, self.lang)


class MixerMonitor:
    """The listener's `PlaybackMonitor` (a 4-tuple) from the mixer's `PlaybackState`."""

    def __init__(self, mixer: Any) -> None:
        self.mixer = mixer

    def playback_state(self) -> tuple[float | None, float, bool, str | None]:
        if self.mixer is None:
            return (None, 0.0, False, None)
        s = self.mixer.playback_state()
        return (s.tone_hz, s.tone_amplitude, s.speaking, s.speech_phrase)


def _utc(clock: Clock) -> datetime:
    from datetime import UTC

    return clock.wall().astimezone(UTC)


def _plain(value: Any) -> Any:
    """numpy scalars (np.bool_, np.float64) to Python values, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value


def _listener_alive(listener: Any) -> bool:
    """False once the microphone stream has died under a running listener."""
    alive = getattr(listener, "healthy", None)
    if alive is not None:
        return bool(alive() if callable(alive) else alive)
    stream = getattr(listener, "_stream", None)
    if stream is None:
        return bool(getattr(listener, "available", True))
    return bool(getattr(stream, "active", True))


def _language_hint(path: Path | None) -> str:
    """The language to say "needs the clinic" in, from a file that may not even parse."""
    if path is None:
        return "nl"
    try:
        with open(path, "rb") as fh:
            lang = tomllib.load(fh).get("language")
    except (OSError, tomllib.TOMLDecodeError):
        return "nl"
    return lang if lang in ("nl", "en") else "nl"
