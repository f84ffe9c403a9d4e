"""sd_notify over a real AF_UNIX datagram socket, the watchdog feeder, and signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.device.service import Notifier, Signals, WatchdogFeeder


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog_and_stopping_reach_the_manager(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.enabled
    assert notifier.ready("ready, no session")
    assert receive(sock) == ["READY=1", "STATUS=ready, no session"]
    assert notifier.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]


def test_abstract_socket_name_is_supported():
    name = f"appliance-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]
    finally:
        sock.close()


def test_without_systemd_notifications_are_silent_no_ops():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert WatchdogFeeder(notifier).tick() is False


def test_manager_gone_does_not_raise(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.ready() is False


def test_watchdog_interval_from_environment_honours_watchdog_pid():
    mine = Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == pytest.approx(20.0)
    other = Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


def test_watchdog_is_fed_only_when_the_loop_ticks_and_at_most_thrice_per_interval(notify_socket):
    path, sock = notify_socket
    now = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000"})
    feeder = WatchdogFeeder(notifier, monotonic=lambda: now[0])
    sent = []
    # A 100 Hz loop for 3 s of control time: pets every 1 s, not every tick.
    for _ in range(300):
        sent.append(feeder.tick())
        now[0] += 0.01
    assert sum(sent) == 3
    for _ in range(3):
        assert receive(sock) == ["WATCHDOG=1"]
    # The loop hangs: time passes, nobody ticks, nothing is sent.
    now[0] += 10.0
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    assert feeder.pets == 3


def test_signals_set_flags_in_a_real_process(tmp_path):
    # A child installs the handlers, reports each flag as it arrives, exits on SIGTERM.
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from appliance.device.service import Signals
        s = Signals(); s.install()
        print("up", flush=True)
        deadline = time.monotonic() + 10
        while not s.stop.is_set() and time.monotonic() < deadline:
            if Signals.take(s.reminder): print("reminder", flush=True)
            if Signals.take(s.reload): print("reload", flush=True)
            time.sleep(0.01)
        print("stopped", ",".join(s.received), flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    child.send_signal(signal.SIGUSR1)
    assert child.stdout.readline().strip() == "reminder"
    child.send_signal(signal.SIGHUP)
    assert child.stdout.readline().strip() == "reload"
    child.send_signal(signal.SIGTERM)
    assert child.stdout.readline().strip() == "stopped SIGUSR1,SIGHUP,SIGTERM"
    assert child.wait(5) == 0


def test_take_reads_a_request_once():
    s = Signals()
    s.reminder.set()
    assert Signals.take(s.reminder) is True
    assert Signals.take(s.reminder) is False


def test_announcements_are_taken_once_in_order(tmp_path):
    from appliance.device.service import post_announcement, take_announcements

    assert take_announcements(tmp_path) == []
    post_announcement(tmp_path, "clinic.enrolled")
    post_announcement(tmp_path, "clinic.exported")
    (tmp_path / "announce" / ".half-written.tmp").write_text("device.goodbye")
    assert take_announcements(tmp_path) == ["clinic.enrolled", "clinic.exported"]
    assert take_announcements(tmp_path) == []
