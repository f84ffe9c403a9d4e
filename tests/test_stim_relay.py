"""The relay process: a stopped, hung, killed or exiting control process leaves the line low.

A child process is the control process: it opens the device's line with
`open_relayed_line(22, mock_report=FILE)` (the relay, a grandchild, runs on gpiozero's
mock pins and appends every change of the pin to FILE as `monotonic-time value`) and
drives it from its control loop. The test stops, hangs (a C call that holds the GIL),
kills or ends the child and reads on the relay's mock pin when the line went low.
`time.monotonic` is one clock for all processes on Linux, so the times compare.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.stim import HARD_LIMITS, RelayError, open_relayed_line

BOUND_S = 0.25  # the bound: low within 250 ms of the control process failing

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from datetime import date, timedelta
    from appliance.clock import RealClock
    from appliance.stim import (CONTRAINDICATIONS, StimContext, open_relayed_line, open_stim,
                                parse_stim_prescription)

    report, driver, how = sys.argv[1], sys.argv[2], sys.argv[3]
    # a C call that never releases the GIL: no Python thread of this process could run
    signal.signal(signal.SIGUSR1, lambda *a: sum(range(10 ** 14)))
    tick_s = 0.005  # the device's tick
    line = open_relayed_line(22, mock_report=report)

    def say(text):
        print(text, flush=True)

    if driver == "line":  # the line alone, fed every tick
        clock = RealClock()
        t = clock.now()
        line.on(10.0)
        say("high")
        end = t + 0.3
        while True:
            t += tick_s
            clock.sleep_until(t)
            line.feed()
            if how == "exit" and clock.now() >= end:
                say(f"exit {time.monotonic():.6f}")
                sys.exit(0)  # no close(): the end of the process is the end of the pipe
    else:  # the device's path: open_stim around the real controller on the real clock
        today = date(2026, 3, 2)
        rx = parse_stim_prescription({
            "enabled": True, "work_seconds": 10, "rest_seconds": 10, "cycles": 1,
            "checked_by": "dr. Jansen", "checked_on": today - timedelta(days=1),
            "contraindications": {k: "no" for k in CONTRAINDICATIONS}}, "rx.toml")
        with open_stim(line, rx) as ctrl:
            clock = RealClock()
            t0 = t = clock.now()
            ctrl.begin(0.0, today, sessions_today=0)
            ctx = StimContext(exercise_active=True, probe_ok=True)
            high_at = None
            while True:
                t += tick_s
                clock.sleep_until(t)
                ctrl.tick(clock.now() - t0, ctx)
                if ctrl.line_high and high_at is None:
                    high_at = clock.now()
                    say("high")
                if how == "exit" and high_at is not None and clock.now() >= high_at + 0.3:
                    say(f"exit {time.monotonic():.6f}")
                    break  # leaving open_stim: shutdown, line low, relay closed
    """
)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        return ""
    return proc.stdout.readline().strip()


def pin_changes(report: Path) -> list[tuple[float, int]]:
    if not report.exists():
        return []
    out = []
    for row in report.read_text().split("\n")[:-1]:  # complete lines only: the relay may be mid-write
        t, v = row.split()
        out.append((float(t), int(v)))
    return out


def wait_high(report: Path, timeout: float = 0.15) -> bool:
    """The relay's pin went high (within the lease: nothing feeds it here)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if [v for _, v in pin_changes(report)] == [1]:
            return True
        time.sleep(0.002)
    return False


def low_after(report: Path, since: float, timeout: float = 3.0) -> float | None:
    """When the pin went low after `since` (it must have been high at `since`)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        changes = pin_changes(report)
        before = [v for t, v in changes if t <= since]
        assert before and before[-1] == 1, f"the line was not high when the child failed: {changes}"
        after = [t for t, v in changes if t > since and v == 0]
        if after:
            return after[0]
        time.sleep(0.005)
    return None


def fail_child(tmp_path: Path, driver: str, how: str) -> float:
    """Start the control child, let the line be high 0.3 s, fail it `how`; seconds to low."""
    report = tmp_path / f"pin-{driver}-{how}.txt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(report), driver, how],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(proc, 60.0) == "high", "the child never switched the line on"
        if how == "exit":
            said = read_line(proc, 10.0)
            assert said.startswith("exit"), said
            since = float(said.split()[1])
        else:
            time.sleep(0.3)
            since = time.monotonic()
            os.kill(proc.pid, {"SIGSTOP": signal.SIGSTOP, "hang": signal.SIGUSR1,
                               "SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}[how])
        dropped = low_after(report, since)
        assert dropped is not None, f"the line stayed high: {pin_changes(report)}"
        # and it stays low: nothing brings it back while the child is stopped, hung or dead
        time.sleep(0.3)
        assert pin_changes(report)[-1][1] == 0
        return dropped - since
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("how", ["SIGSTOP", "hang", "SIGKILL", "SIGTERM", "exit"])
def test_the_line_is_low_within_250_ms_of_the_control_process_failing(tmp_path, how) -> None:
    assert fail_child(tmp_path, "line", how) <= BOUND_S


@pytest.mark.parametrize("how", ["SIGSTOP", "hang", "SIGKILL", "exit"])
def test_on_the_device_path_open_stim_with_the_relayed_line_drops_it_too(tmp_path, how) -> None:
    assert fail_child(tmp_path, "controller", how) <= BOUND_S


def test_the_relay_drops_a_lease_that_is_not_renewed_and_a_late_feed_does_not_revive_it(
        tmp_path) -> None:
    report = tmp_path / "pin.txt"
    line = open_relayed_line(22, mock_report=report)
    try:
        line.on(5.0)
        on_at = time.monotonic()
        time.sleep(0.4)  # no feed: the lease runs out after 200 ms
        line.feed()  # too late
        time.sleep(0.1)
        changes = pin_changes(report)
        assert [v for _, v in changes] == [1, 0]
        assert changes[1][0] - on_at == pytest.approx(HARD_LIMITS.watchdog_seconds, abs=0.05)
        assert not line.is_active and line.tripped  # the control side knows
    finally:
        line.close()


def test_the_relay_holds_the_line_while_fed_and_drops_it_at_the_on_time(tmp_path) -> None:
    report = tmp_path / "pin.txt"
    line = open_relayed_line(22, mock_report=report)
    try:
        line.on(0.6)
        on_at = time.monotonic()
        while time.monotonic() < on_at + 0.9:
            line.feed()
            time.sleep(0.005)
        changes = pin_changes(report)
        assert [v for _, v in changes] == [1, 0]
        assert changes[1][0] - on_at == pytest.approx(0.6, abs=0.05)
    finally:
        line.close()


def test_close_leaves_the_line_low_and_the_relay_gone(tmp_path) -> None:
    report = tmp_path / "pin.txt"
    line = open_relayed_line(22, mock_report=report)
    line.on(5.0)
    assert wait_high(report)
    line.close()
    assert [v for _, v in pin_changes(report)] == [1, 0]
    assert line._process.returncode == 0
    with pytest.raises(RelayError):
        line.on(1.0)
    line.close()  # twice is fine


def test_a_relay_terminated_by_sigterm_drops_the_line_and_the_control_side_refuses_on(
        tmp_path) -> None:
    report = tmp_path / "pin.txt"
    line = open_relayed_line(22, mock_report=report)
    try:
        line.on(5.0)
        assert wait_high(report)
        line._process.terminate()
        line._process.wait(5)
        assert [v for _, v in pin_changes(report)] == [1, 0]
        assert not line.is_active
        with pytest.raises(RelayError):
            line.on(1.0)
    finally:
        line.close()


def test_a_relay_that_cannot_claim_its_pin_is_one_sentence() -> None:
    with pytest.raises(RelayError, match="did not start"):
        open_relayed_line(99, mock_report=os.devnull)  # no GPIO99 on a Pi's mock board
