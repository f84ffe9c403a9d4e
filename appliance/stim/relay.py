"""The relay: a small process of its own that holds the stim pin on a lease.

    python -m appliance.stim.relay --pin 22 --lease 0.2 [--mock-report FILE]

It owns the GPIO output and reads one command per line on stdin from the control
process (`RelayedLine` in `appliance.stim.line`):

    on <seconds>   high for at most <seconds> (at most 10.2 s), and the lease starts
    feed           renew the lease (the control loop sends it every tick)
    off            low

The line is high only while `Lease.high(now)` says so: an "on" within its on-time
AND a "feed" (or the "on") less than `lease` seconds ago. A lapsed lease latches low:
a late "feed" does not bring the line back, only a fresh "on" does. The line goes low
and the relay exits on end-of-file (the control process exited or was killed, even by
SIGKILL), on SIGTERM/SIGINT/SIGHUP and on any exception of its own. Anything it does
not understand is an "off".

On stdout it says `ready` once the pin is claimed (low), and `low <reason>` when it
dropped the line by itself (lease, on_time), so the control side can tell. With
`--mock-report FILE` the pin is gpiozero's mock pin and every change of it is appended
to FILE as `<time.monotonic()> <0|1>`, for tests and `bench/stim_relay.py`.

Deliberately small: only the standard library, gpiozero and the hard limits.
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from appliance.stim.limits import HARD_LIMITS

MAX_ON_SECONDS = HARD_LIMITS.max_on_seconds
MAX_LINE_BYTES = 64  # a longer line is garbage: it counts as "off"
RETRY_SECONDS = 0.01  # a pin write that failed is tried again this soon


class Lease:
    """The decision, with no I/O: is the line allowed high at `now` (monotonic seconds)?"""

    def __init__(self, lease_s: float) -> None:
        if not 0 < lease_s <= HARD_LIMITS.watchdog_seconds:
            raise ValueError(f"lease {lease_s!r} s outside (0, {HARD_LIMITS.watchdog_seconds}] s")
        self.lease_s = lease_s
        self._on_end = -math.inf  # the on-time given by the last "on"
        self._lease_end = -math.inf  # the last "on"/"feed" plus the lease
        self.dropped = ""  # why the lease itself last ended a high line ("lease", "on_time")

    def high(self, now: float) -> bool:
        if now < self._on_end and now < self._lease_end:
            return True
        if self._on_end > -math.inf:  # it was on: latch low until the next "on"
            self.dropped = "on_time" if now >= self._on_end else "lease"
        self._on_end = -math.inf
        return False

    def deadline(self) -> float | None:
        """When the line must next go low by itself (None: it is low)."""
        end = min(self._on_end, self._lease_end)
        return None if end == -math.inf else end

    def on(self, now: float, seconds: float) -> None:
        if not 0 < seconds <= MAX_ON_SECONDS:  # NaN fails this too
            self.off()
            return
        self._on_end = now + seconds
        self._lease_end = now + self.lease_s

    def feed(self, now: float) -> None:
        if self.high(now):
            self._lease_end = now + self.lease_s

    def off(self) -> None:
        self._on_end = -math.inf
        self.dropped = ""

    def command(self, now: float, line: bytes) -> None:
        """Apply one line of the protocol; anything malformed is an "off"."""
        words = line.split()
        try:
            if words == [b"feed"]:
                self.feed(now)
            elif len(words) == 2 and words[0] == b"on":
                self.on(now, float(words[1]))
            else:
                self.off()
        except ValueError:  # float() of garbage
            self.off()


def serve(fd_in: int, set_pin: Callable[[bool], None], lease: Lease,
          notify: Callable[[str], None] = lambda text: None,
          clock: Callable[[], float] = time.monotonic) -> None:
    """Hold the line by `lease` until end-of-file on `fd_in`; the pin is low on every way out."""
    buffer = b""
    was_high = False
    try:
        while True:
            now = clock()
            high = lease.high(now)
            written = _write(set_pin, high, notify)
            if was_high and not high and lease.dropped:
                notify(f"low {lease.dropped}")
            was_high = high
            deadline = lease.deadline()
            timeout = None if deadline is None else max(0.0, deadline - now)
            if not written:  # a failed write is retried every RETRY_SECONDS
                timeout = RETRY_SECONDS if timeout is None else min(timeout, RETRY_SECONDS)
            readable, _, _ = select.select([fd_in], [], [], timeout)
            if not readable:
                continue
            chunk = os.read(fd_in, 4096)
            if not chunk:
                return  # end-of-file: the control process is gone
            *lines, buffer = (buffer + chunk).split(b"\n")
            now = clock()
            for line in lines:
                lease.command(now, line)
            if len(buffer) > MAX_LINE_BYTES:
                lease.off()
                buffer = b""
    finally:
        for _ in range(100):  # about a second of retries before giving up to the pull-down
            if _write(set_pin, False, notify):
                break
            time.sleep(RETRY_SECONDS)


def _write(set_pin: Callable[[bool], None], high: bool, notify: Callable[[str], None]) -> bool:
    try:
        set_pin(high)
        return True
    except OSError as exc:
        notify(f"error {exc}")
        return False


def _mock_factory(report_path: str):
    """gpiozero's mock pins, each change of the pin appended to `report_path` (time, value)."""
    from gpiozero.pins.mock import MockFactory, MockPin

    report = open(report_path, "a", buffering=1)  # noqa: SIM115 -- open for the process's life

    class ReportingPin(MockPin):
        def _change_state(self, value: bool) -> bool:
            changed = super()._change_state(value)
            if changed:
                report.write(f"{time.monotonic():.6f} {int(value)}\n")
            return changed

    return MockFactory(pin_class=ReportingPin)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.stim.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--pin", type=int, required=True)
    parser.add_argument("--lease", type=float, default=HARD_LIMITS.watchdog_seconds)
    parser.add_argument("--mock-report", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    lease = Lease(args.lease)

    from gpiozero import DigitalOutputDevice

    factory = _mock_factory(args.mock_report) if args.mock_report else None
    try:
        device = DigitalOutputDevice(args.pin, active_high=True, initial_value=False,
                                     pin_factory=factory)
    except Exception as exc:  # noqa: BLE001 -- any failure to claim the pin is one sentence
        print(f"stim relay: cannot claim GPIO{args.pin}: {exc}", file=sys.stderr)
        return 2
    os.set_blocking(sys.stdout.fileno(), False)  # a stopped reader must never block the relay

    def notify(text: str) -> None:
        try:
            os.write(sys.stdout.fileno(), (text + "\n").encode())
        except (BlockingIOError, BrokenPipeError):
            pass

    def set_pin(high: bool) -> None:
        if bool(device.value) != high:
            device.value = high

    try:
        notify("ready")
        serve(sys.stdin.fileno(), set_pin, lease, notify)
    finally:
        device.off()
        device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
