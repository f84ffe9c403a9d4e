"""What the supervisor watches while it runs: probe, speaker, microphone, disk, store,
the clinic's inbox, and the prescription and database on disk.

Each fault is spoken once when it appears and shown on the LED; the device keeps
going wherever it safely can.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.device.controls import ActivityState
from appliance.device.service import take_announcements
from appliance.sensor.base import ProbeStatus

if TYPE_CHECKING:
    from appliance.coach.session import Session
    from appliance.device.appliance import RunOptions
    from appliance.device.edges import Edges
    from appliance.device.sinks import GuardedStoreSink
    from appliance.store import Store

log = logging.getLogger(__name__)

LOW_DISK_BYTES = 50 * 1024 * 1024  # below this, pressure samples stop; repetitions go on
DISK_CHECK_S = 5.0
HEALTH_CHECK_S = 1.0
RETRY_MICROPHONE_S = 10.0
SPEAKER_GRACE_S = 3.0  # the output may take a moment to open at start
PROBE_FAULT_S = 1.0  # a probe fault must persist this long before it is spoken


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

    @property
    def faulty(self) -> bool:
        return bool(self.needs_clinic or self.speaker or self.disk_low or self.store_error)


def file_signature(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime in ns) of a file, None when it is not there: a clinic
    that enrolls, wipes or hands in a stick changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class HealthChecks:
    """The supervisor's periodic checks (a mixin of `Appliance`, which sets these up)."""

    options: RunOptions
    edges: Edges
    health: Health
    session: Session | None
    source: Any
    store: Store | None
    store_sink: GuardedStoreSink | None
    catalogue: Any
    lang: str
    output: Any
    listener: Any
    _speaker_since: float | None
    _next_health: float
    _next_disk: float
    _next_mic_retry: float
    _samples_dropped_seen: int
    _watched: tuple | None
    _clinic_changed: bool

    if TYPE_CHECKING:  # defined by Appliance
        def _announce(self, phrase: str, warning: str | None = None) -> None: ...

        def _show(self, state: ActivityState) -> None: ...

        def _clinic_signature(self) -> tuple: ...

        def _follow_clinic(self) -> None: ...

    def _check_health(self, now: float, in_session: bool) -> None:
        if self.session is not None:
            self._check_probe(now)
        if now < self._next_health:
            return
        self._next_health = now + HEALTH_CHECK_S
        self._check_clinic_files()
        self._check_inbox()
        self._check_speaker(now)
        self._check_microphone(now)
        if now >= self._next_disk:
            self._next_disk = now + DISK_CHECK_S
            self._check_disk()

    def _check_clinic_files(self) -> None:
        """An enroll, a stick or a wipe changed the prescription or replaced the database:
        a running session stops cleanly; the next one follows what is on disk now."""
        if self._watched is None:
            return
        now_sig = self._clinic_signature()
        if now_sig == self._watched:
            return
        self._watched = now_sig
        log.warning("the clinic changed the prescription or the database")
        if self.session is not None and not self.session.finished:
            from appliance.commands import Command

            self._clinic_changed = True
            self.session.command(Command.STOP, source="clinic")
        else:
            self._follow_clinic()

    def _check_inbox(self) -> None:
        """Phrases other processes asked for (the clinic stick service): say them."""
        for phrase in take_announcements(self.options.state_dir):
            if self.catalogue is not None and self.catalogue.has(phrase):
                self._announce(phrase, warning=f"announce:{phrase}")
            else:
                log.error("announcement %r is not a phrase in %s", phrase, self.lang)

    def _check_probe(self, now: float) -> None:
        # What the control loop read for this tick (session.probe_status), not a second read.
        status: ProbeStatus | None = getattr(self.session, "probe_status", None)
        if status is None:
            status = getattr(self.source, "status", ProbeStatus.OK)
        assert status is not None
        if status is ProbeStatus.OK:
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
            self._show(ActivityState.NEEDS_ATTENTION)

    def _check_microphone(self, now: float) -> None:
        lst = self.listener
        if lst is None or getattr(lst, "detector", None) is None:
            return
        if self.health.microphone is None:
            if not listener_alive(lst):
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
        if dropped > self._samples_dropped_seen or (sink is not None and sink.disk_full) \
                or getattr(self.store, "disk_full", False):
            low = True
            self._samples_dropped_seen = dropped
        if sink is not None and sink.errors and not self.health.store_error:
            # Repetitions are not being kept: nothing the patient can fix.
            self.health.store_error = sink.last_error
            self._show(ActivityState.NEEDS_ATTENTION)
            self._announce("device.needs_clinic", warning="store")
        if low and not self.health.disk_low:
            self.health.disk_low = True
            log.error("disk nearly full: pressure samples are no longer stored")
            if self.store is not None:
                self.store.keep_samples = False
            self._announce("device.disk_full", warning="disk")
        elif not low and self.health.disk_low and self.store_sink is None:
            self.health.disk_low = False


def listener_alive(listener: object) -> bool:
    """False once the microphone stream has died under a running listener."""
    alive = getattr(listener, "healthy", None)
    if alive is not None:
        return bool(alive() if callable(alive) else alive)
    stream = getattr(listener, "_stream", None)
    if stream is None:
        return bool(getattr(listener, "available", True))
    return bool(getattr(stream, "active", True))
