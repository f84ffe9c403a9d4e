"""The supervisor: the device from power-on to power-off, on real or simulated edges.

`Appliance(options, edges)` loads the configuration, opens the edges, says it is ready
(or that it needs the clinic), and then runs the idle loop: commands from the button
and the voice, reminders at the prescription's local times, health checks, and a
session whenever the patient asks for one. Every session follows the prescription on
disk at that moment (`appliance.patient.today`) and is built by
`appliance.device.wiring.build_session`. `appliance run` gives it `DeviceEdges`;
`appliance simulate` gives it `SimulatedEdges` on a `SimClock`: the same code.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from appliance.clock import Clock
from appliance.coach.pacing import Pace
from appliance.coach.runner import ScriptedCommand
from appliance.coach.session import Calibration, PhraseTiming, Session
from appliance.commands import Command
from appliance.config import ConfigError, ControlsConfig, DeviceConfig, load_device_config
from appliance.device.controls import ActivityState, Controls
from appliance.device.edges import Edges
from appliance.device.health import Health, file_signature
from appliance.device.reminding import REMINDER_CHECK_S, Reminding
from appliance.device.service import Notifier, Signals, WatchdogFeeder
from appliance.device.sessions import SessionRecord, SessionRunning, speaker_sink
from appliance.device.sinks import EventWriter, GuardedStoreSink
from appliance.device.wiring import CONTROL_TICK_S, STIM_TICK_S
from appliance.events import Event, EventKind, Sink

log = logging.getLogger(__name__)

DB_NAME = "appliance.db"
DEVICE_PHRASES = (
    "device.ready",
    "device.needs_clinic",
    "device.no_microphone",
    "device.microphone_back",
    "device.no_voice_model",
    "voice_fallback.english_only",
    "device.speaker_back",
    "device.disk_full",
    "device.probe",
    "device.reminder",
    "device.goodbye",
    "device.clinic_changed",
)


@dataclass
class RunOptions:
    config_path: Path | None
    state_dir: Path
    programme: str | None = None  # None: the prescription's plan for today, else the leaflet
    auto_start: bool = False
    sessions: int | None = None  # stop serving after this many sessions
    calibration: Calibration | None = None
    events: str | TextIO | None = None
    audio: bool = True
    exit_when_ready: bool = False
    speech_cache: Path | None = None  # default: STATE_DIR/cache/speech
    tick_s: float = CONTROL_TICK_S
    fast_tick_s: float = STIM_TICK_S  # while the stimulation exercise is on
    idle_tick_s: float = 0.05
    script: Sequence[ScriptedCommand] = ()  # commands at session seconds (simulate --say)
    max_session_s: float = 4 * 3600.0
    serve_until: float | None = None  # stop serving at this clock time (a simulated lending period)
    timing: PhraseTiming | None = None  # phrase durations to use instead of the rendered ones
    programme_file: Any = None  # a Programme object instead of a name (tests)
    language: str | None = None  # instead of the configuration's
    pace: Pace | None = None  # instead of the prescription's breathing
    on_session_end: Callable[[Session], None] | None = None


class Appliance(SessionRunning, Reminding):
    """The service: configuration, edges, announcements, the idle loop and sessions."""

    def __init__(self, options: RunOptions, edges: Edges, notifier: Notifier | None = None,
                 signals: Signals | None = None) -> None:
        self.options = options
        self.edges = edges
        self.clock: Clock = edges.clock
        self.notifier = notifier or Notifier(env={})
        self.signals = signals or Signals()
        self.watchdog = WatchdogFeeder(self.notifier)
        self.commands: queue.Queue[tuple[Command, str]] = queue.Queue()
        self.health = Health()
        self.config: DeviceConfig | None = None
        self.lang = "nl"
        self.t0 = self.clock.now()
        self.sessions_run = 0
        self.records: list[SessionRecord] = []
        self.session: Session | None = None
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
        self._problems: dict[str, str] = {}  # "config", "prescription", "store" -> why
        self._watched: tuple | None = None  # the prescription's and database's signatures
        self._clinic_changed = False
        self._last_set: datetime | None = None
        self._last_set_known = False
        self._room: list[Sink] = list(edges.room_sinks())

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
        if self.config is not None:
            self._open_store()
            self._load_prescription()
            self._watched = self._clinic_signature()
        self._open_audio(cfg)
        if self.config is not None:
            self._load_programme()
        if self.health.needs_clinic:
            self._say_needs_clinic()
            self._ready(f"needs the clinic: {self.health.needs_clinic}")
            return
        self._open_listener()
        self._announce("device.ready")
        self._announce_voice_faults()
        self._show(ActivityState.READY)
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
            self._idle_tick(now)
            if self.options.sessions is not None and self.sessions_run >= self.options.sessions:
                break
            if self.options.serve_until is not None and now >= self.options.serve_until:
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
        self._close_store()
        if self.events is not None:
            self.events.close()
        self.notifier.close()

    # -- the idle loop ---------------------------------------------------------------------
    def _idle_tick(self, now: float) -> None:
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

    def _show(self, state: ActivityState) -> None:
        if self.controls is not None:
            self.controls.show(state)

    # -- start-up pieces -----------------------------------------------------------------
    def _problem(self, part: str, why: str | None) -> None:
        """Record (or clear) why a part needs the clinic; the first one is what is reported."""
        if why is None:
            self._problems.pop(part, None)
        else:
            self._problems[part] = why
        self.health.needs_clinic = next(iter(self._problems.values()), None)

    def _load_config(self) -> DeviceConfig | None:
        path = self.options.config_path
        try:
            config = load_device_config(path)
        except ConfigError as exc:
            self._problem("config", str(exc))
            self.lang = _language_hint(path)
            log.error("configuration refused, needs the clinic: %s", exc)
            return None
        self._problem("config", None)
        return config

    def _ready(self, status: str) -> None:
        self.ready_after_s = process_age_s()
        self.notifier.ready(status)
        log.warning("%s (%.2f s after process start)", status, self.ready_after_s or -1.0)
        self._emit_service(EventKind.SERVICE, state="ready", status=status, ready_after_s=self.ready_after_s)

    def _open_audio(self, cfg: DeviceConfig) -> None:
        """The speaker (always watched) and, unless audio is off, the rendered phrases."""
        if self.config is not None:
            # The patient's language is the prescription's; the configuration's without one.
            self.lang = self.options.language or (self.rx.language if self.rx is not None else cfg.language)
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
            from appliance.voice.speech import PhraseBank, SpeechRenderer
            from appliance.voice.voicepack import pack_for

            renderer = SpeechRenderer(self.options.speech_cache
                                      or self.options.state_dir / "cache" / "speech")
            self.bank = PhraseBank(self.catalogue, renderer, lang=self.lang,
                                   rate_wpm=cfg.audio.speech_rate_wpm,
                                   sample_rate=cfg.audio.sample_rate, volume=1.0,
                                   pack=pack_for(cfg, self.lang),
                                   instruction_wpm=cfg.speech.instruction_wpm)
            self.bank.prepare([k for k in DEVICE_PHRASES if self.catalogue.has(k)])
            # Between sessions only speech: the tone is the session's.
            self.idle_audio = speaker_sink(self.mixer, self.bank, cfg.audio, tone_always_on=False)
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
        from appliance.store import Store, StoreDamaged

        self._close_store()
        try:
            self.store = Store(self.options.state_dir / DB_NAME)
            # Sessions a power cut interrupted stay 'running' in the file; say what they were.
            n = self.store.mark_interrupted()
        except (StoreDamaged, sqlite3.Error, OSError) as exc:
            # Nothing is written to a damaged file: the clinic salvages it (clinic export).
            self.store = None
            self._problem("store", f"the database cannot be used: {exc}")
            log.error("database refused, needs the clinic: %s", exc)
            return
        self._problem("store", None)
        self._last_set_known = False
        if n:
            log.warning("%d session(s) interrupted by a power cut or crash", n)

    def _close_store(self) -> None:
        if self.store is None:
            return
        try:
            self.store.close()
        except sqlite3.Error as exc:
            log.error("closing the store: %s", exc)
        self.store = None

    def _load_programme(self) -> None:
        from appliance.coach.programme import load_programme

        if self.options.programme_file is not None:
            self.programme = self.options.programme_file
            return
        try:
            self.programme = load_programme(self.options.programme or "leaflet", self.catalogue.keys())
        except ConfigError as exc:
            self._problem("programme", str(exc))
            log.error("programme refused, needs the clinic: %s", exc)

    def _load_prescription(self) -> None:
        """The patient's prescription (enrolled by the clinic), as it is on disk now."""
        from appliance.patient.prescription import load_prescription, prescription_path
        from appliance.patient.reminders import ReminderClock

        path = prescription_path(self.options.state_dir)
        old = self.rx
        self.rx = None
        if not path.exists():
            self.reminder_clock = None
            self._problem("prescription", None)
            return
        try:
            self.rx = load_prescription(path)
            if old is None or old.reminders != self.rx.reminders or self.reminder_clock is None:
                self.reminder_clock = ReminderClock(self.rx.reminders, self.rx.source)
        except ConfigError as exc:
            # Training without the prescription the clinic meant could harm (post-op limits).
            self.rx = self.reminder_clock = None
            self._problem("prescription", str(exc))
            log.error("prescription refused, needs the clinic: %s", exc)
            return
        self._problem("prescription", None)

    def _clinic_signature(self) -> tuple:
        from appliance.patient.prescription import prescription_path

        db = file_signature(self.options.state_dir / DB_NAME)
        return (file_signature(prescription_path(self.options.state_dir)), db[:2] if db else None)

    def _follow_clinic(self) -> None:
        """After an enroll, a stick or a wipe: reopen the database, re-read the prescription."""
        was = self.health.needs_clinic
        self._open_store()
        self._load_prescription()
        self._watched = self._clinic_signature()
        if self.health.needs_clinic and self.health.needs_clinic != was:
            self._say_needs_clinic()
        elif was and not self.health.needs_clinic and self.config is not None:
            self._back_to_ready("ready after the clinic's change")

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
            if self.config.voice.enabled:
                self.health.microphone = "no listener"
            return
        if getattr(self.listener, "detector", True) is None:
            self.health.microphone = f"model: {self.listener.reason}"
            return
        if not self.listener.start():
            self.health.microphone = self.listener.reason or "no microphone"
            from appliance.device.health import RETRY_MICROPHONE_S

            self._next_mic_retry = self.clock.now() + RETRY_MICROPHONE_S

    def _announce_voice_faults(self) -> None:
        problem = self.health.microphone
        if problem is None:
            lst = self.listener
            if getattr(lst, "fallback", "") and self.config is not None \
                    and lst.detector.vocabulary.lang != self.config.language:
                self._announce("voice_fallback.english_only")  # no model for the patient's language
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
        if self.bank is not None and self.catalogue is not None and self.catalogue.has(phrase):
            data["duration_s"] = round(self.bank.clip(phrase).duration_s, 3)
        event = Event(t, EventKind.SAY, data)
        if self.idle_audio is not None:
            try:
                self.idle_audio.emit(event)
            except Exception as exc:
                log.error("cannot say %s: %s", phrase, exc)
        if self.events is not None:
            self.events.emit(event)
        for sink in self._room:
            sink.emit(event)
        if self.session is not None and self.store_sink is not None:
            self.store_sink.emit(Event(self.session.session_time(), EventKind.SAY, data))

    def _say_needs_clinic(self) -> None:
        self._announce("device.needs_clinic")
        self._show(ActivityState.NEEDS_ATTENTION)
        self.notifier.status(f"needs the clinic: {self.health.needs_clinic}")

    def _back_to_ready(self, status: str) -> None:
        if self.listener is None:
            self._open_listener()
        self._announce("device.ready")
        self._announce_voice_faults()
        self._show(ActivityState.READY)
        self.notifier.status("ready")
        self._emit_service(EventKind.SERVICE, state="ready", status=status)
        self._prepare_phrases_in_background()

    def _emit_service(self, kind: EventKind, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(Event(self.clock.now() - self.t0, kind, data))

    # -- commands and sessions -------------------------------------------------------------
    def _idle_command(self, cmd: Command, source: str) -> None:
        if self.config is None or self.health.needs_clinic:
            if cmd in (Command.STATUS, Command.START, Command.HELP):
                self._announce("device.needs_clinic")
            return
        short = self._answer_reminder(cmd)
        if cmd is Command.START:
            self._run_session(source, short_set=short)
        elif cmd in (Command.STATUS, Command.HELP):
            self._announce("device.ready")

    # -- signals -------------------------------------------------------------------------------
    def _reload(self) -> None:
        """SIGHUP: the clinic fixed the configuration or the prescription. Leave "needs the
        clinic" if all is good now; a running appliance keeps its configuration."""
        if self.session is not None:
            return
        if self.config is not None and "config" not in self._problems:
            self._follow_clinic()
            return
        fresh = self._load_config()
        if fresh is None:
            self._say_needs_clinic()
            return
        self.config = fresh
        self._open_audio(self.config)
        if self.controls is not None:
            self.controls.close()
        self.controls = Controls(self.config.controls, self.command, pin_factory=self.edges.pin_factory)
        self._open_store()
        self._load_programme()
        self._load_prescription()
        self._watched = self._clinic_signature()
        if self.health.needs_clinic:
            self._say_needs_clinic()
            return
        self._back_to_ready("ready after reload")

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


def process_age_s() -> float | None:
    """Seconds since this process started (from /proc), for the start -> ready figure."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _language_hint(path: Path | None) -> str:
    """The language to say "needs the clinic" in, from a file that may not even parse."""
    if path is None:
        return "nl"
    try:
        with open(path, "rb") as fh:
            lang = tomllib.load(fh).get("language")
    except (OSError, tomllib.TOMLDecodeError, ValueError):
        return "nl"
    return lang if lang in ("nl", "en") else "nl"
