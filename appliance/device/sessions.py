"""Running one session: today's plan from the prescription on disk, the one wiring, the
stimulation line when the plan allows it, the control loop, and what comes after (the
weekly PERFECT scored and told, the clinic's changes followed). A mixin of `Appliance`.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from appliance.coach.session import Session, State
from appliance.commands import Command
from appliance.config import AudioConfig, ConfigError, DeviceConfig
from appliance.device.controls import ActivityState, Controls
from appliance.device.health import HealthChecks
from appliance.device.service import Signals, WatchdogFeeder
from appliance.device.sinks import EventWriter, GuardedStoreSink
from appliance.device.wiring import SessionParts, build_session
from appliance.events import Event, EventKind, Sink

if TYPE_CHECKING:
    import queue
    import threading

    from appliance.clock import Clock
    from appliance.store import Store

log = logging.getLogger(__name__)


@dataclass
class SessionRecord:
    """What a finished session left behind (the simulation reports it)."""

    session: Session
    source: Any
    programme: str
    perfect: dict | None = None


class SessionRunning(HealthChecks):
    """How the supervisor runs a session (see `Appliance`, which sets these up)."""

    clock: Clock
    config: DeviceConfig | None
    controls: Controls | None
    commands: queue.Queue[tuple[Command, str]]
    signals: Signals
    watchdog: WatchdogFeeder
    events: EventWriter | None
    rx: Any
    programme: Any
    mixer: Any
    bank: Any
    records: list[SessionRecord]
    sessions_run: int
    _bank_thread: threading.Thread | None
    _room: list[Sink]
    _last_set_known: bool

    if TYPE_CHECKING:  # defined by Appliance
        def _say_needs_clinic(self) -> None: ...

        def _say_if_known(self, phrase: str) -> None: ...

        def _load_prescription(self) -> None: ...

    def _open(self) -> Store:
        """The store a session writes to (a session starts only with one open)."""
        if self.store is None:
            raise sqlite3.OperationalError("no database is open")
        return self.store

    def _todays_plan(self, short_set: bool) -> Any:
        """What to train now: the prescription on disk now, this week's targets, the day's gates."""
        from appliance.patient.progress import load_sessions
        from appliance.patient.today import todays_plan

        rx = self.rx
        sessions = load_sessions(self._open().path) if rx is not None else []
        today = self.clock.wall().astimezone(rx.tz if rx is not None else None).date()
        return todays_plan(rx, self.programme, today, sessions, short_set=short_set,
                           fixed_programme=self.options.programme is not None
                           or self.options.programme_file is not None)

    def _wait_for_phrases(self) -> None:
        while self._bank_thread is not None and self._bank_thread.is_alive():
            # Clips must be ready before the coach speaks (first boot renders them all);
            # the loop is alive meanwhile, so the watchdog is fed.
            self._bank_thread.join(timeout=0.5)
            self.watchdog.tick()

    def _run_session(self, source: str, short_set: bool = False) -> None:
        assert self.config is not None
        self._wait_for_phrases()
        self._follow_clinic_now()
        if self.health.needs_clinic or self.store is None:
            self._say_needs_clinic()
            return
        try:
            plan = self._todays_plan(short_set)
        except (ConfigError, ValueError, sqlite3.Error) as exc:
            log.error("today's programme refused: %s", exc)
            self._announce("device.needs_clinic")
            return
        t0 = self.clock.now()
        try:
            probe = self.edges.pressure_source(self.config, self.clock, self.options.state_dir, t0)
        except Exception as exc:
            log.error("probe unavailable: %s", exc)
            self._announce("device.probe")
            self._show(ActivityState.NEEDS_ATTENTION)
            return
        session, store_sink = self._build(plan, probe)
        self.session = session
        # What was applied, stored with the session: the report draws these, not a replay.
        targets = {e.id: e.target_pct_mvc for e in plan.programme.exercises}
        store_sink.emit(Event(0.0, EventKind.PLAN, {"short_set": plan.short_set, "perfect": plan.perfect,
                                                 "postop": bool(plan.day and plan.day.postop),
                                                 "stim": plan.stim_allowed, "targets": targets,
                                                 "announce": list(plan.announce)}))
        with self._open_stim(plan) as stim:
            if stim is not None:
                session.attach_stim(stim)
            session.command(Command.START, source=source)
            self._show(ActivityState.IN_SESSION)
            try:
                self._control_loop(session)
            finally:
                self._after_session(session, plan)

    def _build(self, plan: Any, probe: Any) -> tuple[Session, GuardedStoreSink]:
        """The session for this plan through the one wiring (appliance.device.wiring)."""
        from appliance.coach.preferences import remembered_settings
        from appliance.coach.session import DEFAULT_TONE_VOLUME
        from appliance.store import StoreSink

        assert self.config is not None
        store = self._open()
        store.keep_samples = not self.health.disk_low
        store_sink = GuardedStoreSink(
            StoreSink(store, self.clock, plan.programme.id, self.lang,
                      patient_code=self.rx.code if self.rx is not None else None,
                      source=self.edges.name))
        self.store_sink = store_sink
        audio, timing = self._session_audio()
        extra: list[Sink] = []
        if self.events is not None:
            extra.append(self.events)
        extra.extend(self.edges.session_sinks())
        extra.extend(self._room)
        pace = self.options.pace or plan.pace
        remembered = remembered_settings(store)  # the patient's own volumes (coach/preferences.py)
        built = build_session(plan.programme, self.catalogue, self.clock, SessionParts(
            source=probe, store=store_sink, audio=audio, timing=self.options.timing or timing,
            sinks=extra, pace=pace, calibration=self.options.calibration or plan.calibration,
            volume=remembered.get("volume", self.config.audio.volume),
            tone_volume=remembered.get("tone_volume", DEFAULT_TONE_VOLUME),
            more_phrase=plan.day.more_phrase if plan.day is not None else None,
            tz=self.rx.tz if self.rx is not None else None,
            earlier_today=self._earlier_today(store)))
        self.source = built.source
        return built.session, store_sink

    def _earlier_today(self, store: Any) -> list[dict]:
        """The repetitions of today's earlier sessions (the prescription's local day)."""
        tz = self.rx.tz if self.rx is not None else None
        today = self.clock.wall().astimezone(tz).date()
        try:
            ids = {s["id"] for s in store.sessions()
                   if datetime.fromisoformat(s["started_utc"]).astimezone(tz).date() == today}
            return [r for r in store.repetitions() if r["session_id"] in ids]
        except (sqlite3.Error, ValueError, TypeError) as exc:  # a figure less, never a session less
            log.warning("today's earlier repetitions not read: %s", exc)
            return []

    def _session_audio(self) -> tuple[Any, Any]:
        if self.bank is None:
            return None, None
        from appliance.voice.speech import RenderedTiming

        assert self.config is not None
        a = self.config.audio
        return speaker_sink(self.mixer, self.bank, a, a.tone_always_on), RenderedTiming(self.bank)

    def _control_loop(self, session: Session) -> None:
        from appliance.coach.runner import run as run_loop

        def on_tick(now: float) -> None:
            self.watchdog.tick()
            while not self.commands.empty():
                cmd, src = self.commands.get_nowait()
                session.command(cmd, source=src)
            self._check_health(now, in_session=True)
            controls = self.controls
            if controls is not None:
                shown = controls.state  # the LED is set only when it should change
                want = ActivityState.PAUSED if session.state is State.PAUSED else ActivityState.IN_SESSION
                if shown is not want and shown is not ActivityState.NEEDS_ATTENTION:
                    controls.show(want)

        def should_stop() -> bool:
            if self.signals.stop.is_set() and not session.finished:
                session.command(Command.STOP, source="service")
            return self.signals.stop.is_set()

        run_loop(session, self.source, self.clock, tick_s=self.options.tick_s, script=self.options.script,
                 max_seconds=self.options.max_session_s, on_tick=on_tick, should_stop=should_stop,
                 fast_tick_s=min(self.options.fast_tick_s, self.options.tick_s))

    def _after_session(self, session: Session, plan: Any) -> None:
        try:
            self._open().flush()
        except sqlite3.Error as exc:
            log.error("flushing the store: %s", exc)
        self.source.close()
        record = SessionRecord(session, self.source, plan.programme.id)
        self.session = None
        self.sessions_run += 1
        self._last_set_known = False
        if plan.perfect and self.store_sink is not None and not self._clinic_changed:
            record.perfect = self._score_perfect(session)
        self.records.append(record)
        self._show(ActivityState.NEEDS_ATTENTION if self.health.faulty else ActivityState.READY)
        if self._clinic_changed:
            self._clinic_changed = False
            self._announce("device.clinic_changed")
            self._follow_clinic()
        if self.options.on_session_end is not None:
            self.options.on_session_end(session)

    def _score_perfect(self, session: Session) -> dict | None:
        """The weekly PERFECT assessment: scored, stored with its session, told in a sentence or two."""
        from appliance.patient.progress import assess_perfect, load_sessions, perfect_summary, store_perfect

        sid = self.store_sink.session_id if self.store_sink is not None else None
        if sid is None or session.outcome != "done":
            return None
        try:
            path = self._open().path
            result = assess_perfect(path, sid)
            if result is None:
                return None
            before = [s["perfect"] for s in load_sessions(path) if s["perfect"] and s["id"] != sid]
            store_perfect(path, sid, result)
        except sqlite3.Error as exc:
            log.error("storing the PERFECT assessment: %s", exc)
            return None
        from appliance.patient.progress import Perfect

        previous = Perfect(**before[-1]) if before else None
        for phrase in perfect_summary(result, previous):
            self._say_if_known(phrase)
        return result.as_dict()

    def _follow_clinic_now(self) -> None:
        """At every session start: the prescription and database as they are on disk now."""
        sig = self._clinic_signature()
        if sig != self._watched:
            self._follow_clinic()
        else:
            # Read again all the same: a rewrite of the same size within the file system's
            # timestamp resolution leaves the signature as it was.
            self._load_prescription()

    def _open_stim(self, plan: Any) -> AbstractContextManager[Any]:
        """The stim line for this session when today's plan allows it, else a no-op context."""
        if not plan.stim_allowed or self.rx is None or self.rx.stim is None:
            return nullcontext(None)
        from appliance.stim import open_stim, stim_sessions_on

        assert self.config is not None and self.store is not None
        store, tz = self.store, self.rx.tz

        def sessions_on(day: Any) -> int:
            try:
                return stim_sessions_on(store, day, tz)
            except (sqlite3.Error, TypeError) as exc:
                log.error("cannot count today's stimulation sessions (%s): no stimulation", exc)
                return 10**6  # cannot count: refuse rather than exceed the daily limit
        try:
            line = self.edges.stim_line(self.config.controls.stim_pin)
        except Exception as exc:  # the relay could not claim the pin: train without stimulation
            log.error("stimulation line unavailable, the stim exercise is left out: %s", exc)
            return nullcontext(None)
        return open_stim(line, self.rx.stim, sessions_on=sessions_on)


def speaker_sink(mixer: Any, bank: Any, audio: AudioConfig, tone_always_on: bool) -> Any:
    """Speech and tone into the device's one mixer (the speaker pulls it)."""
    from appliance.voice.output import AudioSink
    from appliance.voice.tone import ToneMapping, ToneShaper

    shaper = ToneShaper(ToneMapping(audio.tone_rest_hz, audio.tone_target_hz), always_on=tone_always_on)
    return AudioSink(mixer, bank, shaper, output=None, base_rate_wpm=audio.speech_rate_wpm)
