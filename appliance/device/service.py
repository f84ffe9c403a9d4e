"""Living under systemd: sd_notify (READY, WATCHDOG, STOPPING, STATUS) and POSIX signals.

The notify protocol is one datagram on the AF_UNIX socket named by `$NOTIFY_SOCKET`, so
no python-systemd dependency is needed. Outside systemd every call is a harmless no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one.

    `env` defaults to `os.environ`; tests pass their own. An abstract socket name
    (`@name`) is supported as systemd documents it.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address: str | bytes | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: ignored", raw)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.watchdog_interval_s = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; True if the manager got it."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    self._sock = socket.socket(socket.AF_UNIX, kind)
                self._sock.sendto(message, self._address)
                return True
            except OSError as exc:
                # The manager going away must never take the coach down with it.
                log.warning("sd_notify %s failed: %s", assignments, exc)
                return False

    def ready(self, status: str = "") -> bool:
        fields = ["READY=1"] + ([f"STATUS={status}"] if status else [])
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        fields = ["STOPPING=1"] + ([f"STATUS={status}"] if status else [])
        return self.notify(*fields)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """`WatchdogSec=` as seconds, or None when no watchdog is asked of this process."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: watchdog ignored", usec)
        return None
    return value / 1e6 if value > 0 else None


class WatchdogFeeder:
    """Pets the systemd watchdog, but only when the control loop says it ticked.

    Call `tick()` from the loop itself (never from a timer thread): if the loop hangs,
    the pets stop and systemd restarts the service. Pets are rate-limited to a third
    of the watchdog interval so a 100 Hz loop does not flood the manager.
    """

    def __init__(self, notifier: Notifier, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._monotonic = monotonic
        interval = notifier.watchdog_interval_s
        self.pet_every_s = interval / 3 if interval else None
        self._last: float | None = None
        self.pets = 0

    def tick(self) -> bool:
        """The loop is alive; returns True when a WATCHDOG=1 was sent now."""
        if self.pet_every_s is None:
            return False
        now = self._monotonic()
        if self._last is not None and now - self._last < self.pet_every_s:
            return False
        self._last = now
        if self._notifier.watchdog():
            self.pets += 1
            return True
        return False


@dataclass
class Signals:
    """What the service was asked from outside, set by signal handlers, read by the loop.

    SIGTERM/SIGINT: stop (finish the repetition's record, drive outputs low, exit).
    SIGHUP: reload the device configuration. SIGUSR1: a training reminder is due
    (sent by appliance-reminder.service).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)
    reminder: threading.Event = field(default_factory=threading.Event)
    received: list[str] = field(default_factory=list)

    def install(self) -> None:
        """Install the handlers; must run in the main thread."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGUSR1, self._on_reminder)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.received.append(signal.Signals(signum).name)
        self.stop.set()

    def _on_reload(self, signum: int, _frame: object) -> None:
        self.received.append(signal.Signals(signum).name)
        self.reload.set()

    def _on_reminder(self, signum: int, _frame: object) -> None:
        self.received.append(signal.Signals(signum).name)
        self.reminder.set()

    @staticmethod
    def take(event: threading.Event) -> bool:
        """True once per request: reads and clears the flag."""
        if event.is_set():
            event.clear()
            return True
        return False


# --- announcements from other processes ------------------------------------------------
# Short-lived helpers (the clinic stick service, a timer) cannot reach the speaker; the
# running appliance owns it. They drop a phrase key into STATE_DIR/announce/ and the
# service says it within a second. A file per message, written then renamed, so a
# half-written one is never read.

ANNOUNCE_DIR = "announce"


def post_announcement(state_dir: str | os.PathLike[str], phrase: str) -> None:
    """Ask the running appliance to say `phrase` (a catalogue key)."""
    from pathlib import Path

    inbox = Path(state_dir) / ANNOUNCE_DIR
    inbox.mkdir(mode=0o750, parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}"
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(phrase.strip() + "\n", encoding="utf-8")
    os.replace(tmp, inbox / f"{name}.phrase")


def take_announcements(state_dir: str | os.PathLike[str]) -> list[str]:
    """Phrase keys posted since the last call, oldest first; each is taken once."""
    from pathlib import Path

    inbox = Path(state_dir) / ANNOUNCE_DIR
    try:
        files = sorted(inbox.glob("*.phrase"))
    except OSError:
        return []
    phrases = []
    for f in files:
        try:
            phrases.append(f.read_text(encoding="utf-8").strip())
            f.unlink()
        except OSError as exc:
            log.warning("announcement %s unreadable: %s", f.name, exc)
    return [p for p in phrases if p]
