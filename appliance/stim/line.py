"""The stim line: the `Line` protocol and its two holders.

`StimLine` is the GPIO output in this process, guarded by a `StimWatchdog` thread (the
simulation's line, and `appliance stim-off`). `RelayedLine` is the device's line: the
pin is held by a separate relay process (`appliance.stim.relay`) on a 200 ms lease
that only the control loop's tick renews, so a stopped, hung or killed control process
cannot keep it high (docs/stimulation.md).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from appliance.stim.limits import HARD_LIMITS

log = logging.getLogger(__name__)


class Line(Protocol):
    """What the controller needs from the output: a `StimLine` or a `RelayedLine`.

    A line that also has `feed()` is fed by the controller on every tick.
    """

    def on(self, max_seconds: float) -> None: ...

    def off(self) -> None: ...

    @property
    def is_active(self) -> bool: ...


class StimLine:
    """The GPIO output that enables the external stimulator: active-high, low from the start.

    `on(max_seconds)` records a deadline that a `StimWatchdog` enforces even if the
    controller never ticks again. Thread-safe: the watchdog and the signal handlers
    may call `off()` at any moment.
    """

    def __init__(self, pin: int | str, pin_factory: Any = None) -> None:
        from gpiozero import DigitalOutputDevice

        self._device = DigitalOutputDevice(
            pin, active_high=True, initial_value=False, pin_factory=pin_factory
        )
        self._lock = threading.RLock()
        self._deadline: float | None = None
        self._closed = False

    def on(self, max_seconds: float) -> None:
        limit = HARD_LIMITS.max_on_seconds
        if not 0 < max_seconds <= limit:
            raise ValueError(f"stim on-time {max_seconds!r} s outside (0, {limit}] s")
        with self._lock:
            if self._closed:
                raise RuntimeError("stim line is closed")
            self._deadline = time.monotonic() + max_seconds
            self._device.on()

    def off(self) -> None:
        with self._lock:
            if not self._closed:
                self._device.off()  # may raise: then the deadline stays for the watchdog
            self._deadline = None

    @property
    def is_active(self) -> bool:
        with self._lock:
            return not self._closed and bool(self._device.value)

    def overdue(self, now: float) -> bool:
        """True if the line is high past the deadline given to `on()` (real monotonic time)."""
        with self._lock:
            return self._deadline is not None and now > self._deadline

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._device.off()
                self._device.close()
                self._closed = True


class StimWatchdog:
    """Drops the line if the control loop stops feeding it for more than 200 ms.

    A daemon thread polls every `poll_seconds`; it also drops a line held past the
    deadline `StimLine.on()` was given. `tripped` tells the controller it happened.
    """

    def __init__(
        self,
        line: StimLine,
        timeout: float = HARD_LIMITS.watchdog_seconds,
        poll_seconds: float = 0.01,
    ) -> None:
        if not 0 < timeout <= HARD_LIMITS.watchdog_seconds:
            raise ValueError(f"watchdog timeout {timeout} s exceeds the hard limit")
        self._line = line
        self._timeout = timeout
        self._poll = poll_seconds
        self._last_feed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tripped = False

    def start(self) -> StimWatchdog:
        self._last_feed = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="stim-watchdog", daemon=True)
        self._thread.start()
        return self

    def feed(self) -> None:
        self._last_feed = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._line.off()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self._check(time.monotonic())
            except Exception:  # a failed write is tried again on the next poll
                log.exception("stim watchdog could not drive the line low; retrying")

    def _check(self, now: float) -> None:
        stale = now - self._last_feed > self._timeout
        if self._line.is_active and (stale or self._line.overdue(now)):
            self.tripped = True
            self._line.off()
            log.error("stim watchdog dropped the line (%s)",
                      "control loop stopped ticking" if stale else "on-time exceeded")


def install_exit_handlers(line: Line) -> Callable[[], None]:
    """Drive the line low at interpreter exit and on SIGTERM/SIGINT, then do what was done before.

    Call from the main thread. A handler installed later must chain to this one.
    SIGKILL and power loss cannot be caught: the relay process (`RelayedLine`), the
    pull-down and `appliance stim-off` cover those (docs/stimulation.md).

    Returns the undo, for when the line is low and closed (`open_stim`'s end): the
    previous handlers back and the atexit hook gone, so a device that opens the line for
    every session does not pile up a handler (and a closed line) per session.
    """
    atexit.register(line.off)
    installed: dict[int, tuple[Any, Any]] = {}
    if threading.current_thread() is not threading.main_thread():
        log.warning("stim exit handlers: not the main thread, so atexit only (no signals)")
    else:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                line.off()
                log.warning("stim line driven low on signal %s", signal.Signals(sig).name)
                if callable(previous):
                    previous(sig, frame)
                elif previous == signal.SIG_IGN:
                    return
                elif sig == signal.SIGINT:
                    raise KeyboardInterrupt
                else:
                    raise SystemExit(128 + sig)

            signal.signal(signum, handler)
            installed[signum] = (previous, handler)

    def uninstall() -> None:
        atexit.unregister(line.off)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, (previous, handler) in installed.items():
            # Only our own, still on top, with a previous Python can put back; a handler
            # installed since chains to ours, which stays (it only drives a low line low).
            if signal.getsignal(signum) is handler and previous is not None:
                signal.signal(signum, previous)

    return uninstall


def drive_low(pin: int, pin_factory: Any = None) -> None:
    """Claim the stim pin as an output, drive it low, release it (after any exit).

    Used by `appliance stim-off`, the service's ExecStopPost: when `appliance run`
    died without its handlers (SIGKILL, watchdog kill), the kernel may leave the line
    as it was; this drives it low before the external pull-down takes over.
    """
    StimLine(pin, pin_factory=pin_factory).close()


# --- the line held by the relay process ----------------------------------------------------


class RelayError(RuntimeError):
    """The relay process is gone or not listening: the line cannot be switched on."""


class RelayedLine:
    """The control side of a line held by the relay process (`appliance.stim.relay`).

    `on(max_seconds)`, `off()` and `feed()` each write one line to the relay's stdin;
    `feed()` must come from the control loop's tick (never from a thread), so a hung
    loop stops renewing the 200 ms lease. `is_active` is what the relay does by the same
    rule (`Lease`), corrected by its `low <reason>` notices; `tripped` is set when the
    relay dropped the line by itself, for the controller to interrupt and re-announce.
    Safe to call `off()` from signal handlers and atexit.
    """

    def __init__(self, process: subprocess.Popen[bytes], pin: int, lease_s: float) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.pin = pin
        self.lease_s = lease_s
        self.tripped = False
        self._process = process
        self._to_relay = process.stdin.fileno()
        self._from_relay = process.stdout.fileno()
        os.set_blocking(self._to_relay, False)  # a relay that stops reading never blocks the loop
        os.set_blocking(self._from_relay, False)
        self._lock = threading.RLock()  # re-entrant: a signal handler may call off() mid-call
        self._active = False
        self._on_end = -math.inf
        self._lease_end = -math.inf
        self._gone = ""  # why the relay can no longer be used
        self._closed = False

    def on(self, max_seconds: float) -> None:
        if not 0 < max_seconds <= HARD_LIMITS.max_on_seconds:
            raise ValueError(f"stim on-time {max_seconds!r} s outside (0, {HARD_LIMITS.max_on_seconds}] s")
        with self._lock:
            if self._closed or self._gone:
                raise RelayError(f"stim relay for GPIO{self.pin} is not usable: "
                                 f"{self._gone or 'closed'}")
            now = time.monotonic()
            self._send(f"on {max_seconds:.6f}\n")
            if self._gone:
                raise RelayError(f"stim relay for GPIO{self.pin} is not usable: {self._gone}")
            self._active, self._on_end, self._lease_end = True, now + max_seconds, now + self.lease_s

    def off(self) -> None:
        with self._lock:
            self._active = False
            if not self._closed:
                self._send("off\n")

    def feed(self) -> None:
        """Renew the lease: call once per control tick."""
        with self._lock:
            if self.is_active:
                now = time.monotonic()
                self._send("feed\n")
                self._lease_end = now + self.lease_s

    @property
    def is_active(self) -> bool:
        with self._lock:
            self._read_notices()
            if self._active and self._gone:
                self._active = False
            if self._active:
                now = time.monotonic()
                if now >= self._lease_end or now >= self._on_end:  # the relay's own rule
                    self._active = False
                    self.tripped = True
                    log.error("stim relay dropped the line (%s)",
                              "lease not renewed" if now >= self._lease_end else "on-time over")
            return self._active

    def close(self) -> None:
        """Line low, relay told to exit (end-of-file) and waited for; safe to call repeatedly."""
        with self._lock:
            if self._closed:
                return
            self.off()
            self._closed = True
            self._active = False
            try:
                os.close(self._to_relay)
            except OSError:
                pass
            self._process.stdin = None  # closed above: Popen must not close it again
        try:
            self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            log.error("stim relay for GPIO%d did not exit on end-of-file; killed", self.pin)
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def _send(self, text: str) -> None:
        try:
            os.write(self._to_relay, text.encode())
        except BlockingIOError:
            self._fail("not reading its commands")
        except OSError:  # BrokenPipeError: it exited
            self._fail(f"exited ({self._process.poll()})")

    def _fail(self, why: str) -> None:
        if not self._gone:
            self._gone = why
            log.error("stim relay for GPIO%d %s; stimulation refused until restart", self.pin, why)
        self._active = False

    def _read_notices(self) -> None:
        try:
            data = os.read(self._from_relay, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._fail(f"exited ({self._process.poll()})")
            return
        for notice in data.decode(errors="replace").splitlines():
            if notice.startswith("low"):
                if self._active:
                    self.tripped = True
                self._active = False
                log.error("stim relay: %s", notice)
            elif notice.startswith("error"):
                log.error("stim relay: %s", notice)


def open_relayed_line(pin: int, lease_s: float = HARD_LIMITS.watchdog_seconds, *,
                      mock_report: str | Path | None = None,
                      start_timeout: float = 30.0) -> RelayedLine:
    """Start the relay process for `pin` and return the control side once the pin is claimed (low).

    A subprocess (`python -m appliance.stim.relay`) with two pipes, not a multiprocessing
    child: it inherits nothing of this process but the two pipe ends, so only this
    process holds the write end and its death, however it dies, is end-of-file for the
    relay. `mock_report`: run the relay on gpiozero's mock pins and append every pin
    change (monotonic time, value) to that file (tests, `bench/stim_relay.py`).
    Raises `RelayError` with one sentence if the relay cannot claim the pin.
    """
    if not 0 < lease_s <= HARD_LIMITS.watchdog_seconds:
        raise ValueError(f"lease {lease_s!r} s outside (0, {HARD_LIMITS.watchdog_seconds}] s")
    cmd = [sys.executable, "-m", "appliance.stim.relay", "--pin", str(int(pin)),
           "--lease", repr(float(lease_s))]
    if mock_report is not None:
        cmd += ["--mock-report", str(mock_report)]
    root = str(Path(__file__).resolve().parents[2])  # where `appliance` is importable from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                               close_fds=True)
    assert process.stdout is not None
    deadline = time.monotonic() + start_timeout
    seen = b""
    while b"ready\n" not in seen:
        left = deadline - time.monotonic()
        readable = select.select([process.stdout], [], [], max(0.0, left))[0] if left > 0 else []
        chunk = os.read(process.stdout.fileno(), 4096) if readable else b""
        if not chunk:
            process.kill()
            code = process.wait()
            raise RelayError(f"the stim relay for GPIO{pin} did not start (exit {code}; "
                             "its reason is on stderr / in the journal)")
        seen += chunk
    return RelayedLine(process, int(pin), float(lease_s))
