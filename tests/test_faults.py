"""The fault matrix of `appliance run`: each fault injected, the spoken message and the
continued session asserted.

The appliance runs in-process on a clock that moves twenty times faster than real time
(control timing is the device's, sleeps are shortened), with the simulated pelvic floor,
gpiozero mock pins and fakes only where a device is physically absent here (speaker,
microphone). The invalid-configuration case runs the real command in a child process
with a real sd_notify socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from appliance.clock import SimClock
from appliance.coach.session import Calibration
from appliance.device.appliance import Appliance, RunOptions
from appliance.device.edges import SimulatedEdges
from appliance.device.service import Notifier, Signals
from appliance.events import Event, Feedback
from appliance.sensor.base import ProbeStatus

REPO = Path(__file__).resolve().parents[1]
SHORT = REPO / "tests" / "data" / "short_programme.toml"
REPS_IN_SHORT = 6
SPEED = 20.0


class FastClock(SimClock):
    """Device timing, compressed: sleeping 1 s takes 50 ms, so threads (gpiozero's button,
    the fault scripts) still interleave with the control loop as on the device."""

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay / SPEED)
        super().sleep_until(t)


class FaultScript:
    """A session sink that runs an action once when a matching event goes by."""

    def __init__(self) -> None:
        self.steps: list[tuple[dict, object]] = []
        self.done: list[int] = []

    def at(self, action, **match) -> FaultScript:
        self.steps.append((match, action))
        return self

    def emit(self, event: Event) -> None:
        for i, (match, action) in enumerate(self.steps):
            if i in self.done:
                continue
            if all(event.as_json().get(k) == v for k, v in match.items()):
                self.done.append(i)
                action()

    def feedback(self, fb: Feedback) -> None:
        return None


class FakeOutput:
    """A sound card that can be unplugged: what `DeviceOutput` shows the service."""

    def __init__(self) -> None:
        self.is_open = True
        self.last_error: str | None = None
        self.stopped = False

    def unplug(self) -> None:
        self.is_open, self.last_error = False, "PortAudioError: device unavailable"

    def plug(self) -> None:
        self.is_open, self.last_error = True, None

    def stop(self) -> None:
        self.stopped = True


class FakeListener:
    """A microphone that can be unplugged and plugged back (the recognizer is not the
    point here: test_listener covers it); `healthy` is what the service watches."""

    def __init__(self, plugged: bool = True) -> None:
        self.detector = object()
        self.plugged = plugged
        self.healthy = False
        self.available = False
        self.reason = ""
        self.starts = 0

    def start(self) -> bool:
        self.starts += 1
        self.healthy = self.available = self.plugged
        self.reason = "" if self.plugged else "no microphone: PortAudioError"
        return self.plugged

    def stop(self) -> None:
        self.healthy = self.available = False

    def unplug(self) -> None:
        self.plugged = self.healthy = False

    def plug(self) -> None:
        self.plugged = True


class ProbeWithFaults:
    """The simulated floor, whose status a script can set (a cable pulled out)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sample_rate_hz = inner.sample_rate_hz
        self.forced: ProbeStatus | None = None

    def read_until(self, t):
        return self.inner.read_until(t)

    @property
    def status(self) -> ProbeStatus:
        return self.forced or self.inner.status

    def emit(self, e):
        self.inner.emit(e)

    def feedback(self, fb):
        self.inner.feedback(fb)

    def close(self):
        self.inner.close()


class FaultEdges(SimulatedEdges):
    def __init__(self, output=None, listener=None, free_bytes=None, script=None,
                 probe_faults=False) -> None:
        super().__init__()
        self.output = output
        self.the_listener = listener
        self.free = free_bytes
        self.script = script or FaultScript()
        self.probe_faults = probe_faults
        self.probe: ProbeWithFaults | None = None

    def audio_output(self, mixer, config):
        return self.output

    def listener(self, config, state_dir, on_command, monitor):
        if callable(self.the_listener):
            return self.the_listener(config, state_dir, on_command)
        return self.the_listener

    def free_bytes(self, path):
        return self.free() if self.free else super().free_bytes(path)

    def pressure_source(self, config, clock, state_dir, t0):
        source = super().pressure_source(config, clock, state_dir, t0)
        if self.probe_faults:
            self.probe = ProbeWithFaults(source)
            return self.probe
        return source

    def session_sinks(self):
        return [self.script]


CONFIG = """
language = "nl"
[sensor]
source = "simulated"
[voice]
enabled = true
{voice_extra}
[controls]
button_pin = 17
led_pin = 27
"""


def make(tmp_path: Path, edges: FaultEdges, auto_start: bool = True, voice_extra: str = "",
         clock: SimClock | None = None) -> Appliance:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(CONFIG.format(voice_extra=voice_extra))
    options = RunOptions(
        config_path=cfg,
        state_dir=tmp_path / "state",
        programme=str(SHORT),
        auto_start=auto_start,
        sessions=1,
        calibration=Calibration(5.0, 40.0),
        events=str(tmp_path / "events.jsonl"),
        audio=False,
    )
    edges.clock = clock or FastClock()
    return Appliance(options, edges, Notifier({}), Signals())


def events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def said(tmp_path: Path) -> list[str]:
    return [e["phrase"] for e in events(tmp_path) if e["kind"] == "say"]


def warnings(tmp_path: Path) -> list[str]:
    return [e["warning"] for e in events(tmp_path) if e["kind"] == "warning"]


def stored(tmp_path: Path) -> tuple[list[tuple], list[str], int]:
    con = sqlite3.connect(tmp_path / "state" / "appliance.db")
    try:
        reps = con.execute("SELECT exercise, rep, status, t_end FROM repetitions ORDER BY id").fetchall()
        sessions = [s for (s,) in con.execute("SELECT status FROM sessions ORDER BY id")]
        samples = con.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    finally:
        con.close()
    return reps, sessions, samples


def assert_session_completed(tmp_path: Path) -> list[tuple]:
    reps, sessions, _ = stored(tmp_path)
    assert sessions == ["done"]
    assert len(reps) == REPS_IN_SHORT
    return reps


def run_in_thread(app: Appliance) -> threading.Thread:
    thread = threading.Thread(target=app.main, daemon=True)
    thread.start()
    return thread


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def press(app: Appliance, seconds: float = 0.05) -> None:
    pin = app.edges.pin_factory.pin(17)
    pin.drive_low()
    time.sleep(seconds)
    pin.drive_high()


# --- speaker ---------------------------------------------------------------------------


def test_speaker_unplugged_mid_session_is_retried_and_its_return_is_spoken(tmp_path):
    out = FakeOutput()
    script = FaultScript()
    script.at(out.unplug, kind="phase", exercise="quick1", rep=1, phase="contract")
    script.at(out.plug, kind="phase", exercise="quick2", rep=2, phase="contract")
    edges = FaultEdges(output=out, script=script)
    app = make(tmp_path, edges)
    attention = []
    script.at(lambda: attention.append(app.controls.state.value), kind="phase",
              exercise="quick2", rep=1, phase="contract")
    assert app.main() == 0
    reps = assert_session_completed(tmp_path)
    assert "device.speaker_back" in said(tmp_path)
    assert "speaker_back" in warnings(tmp_path)
    assert attention == ["needs_attention"]  # the LED said so while it was silent
    assert app.health.speaker is None
    # Repetitions went on being stored while the speaker was out.
    assert [r[:2] for r in reps][:3] == [("quick1", 1), ("quick1", 2), ("quick1", 3)]


# --- microphone --------------------------------------------------------------------------


def test_no_microphone_at_start_says_use_the_button_and_the_button_runs_the_session(tmp_path):
    mic = FakeListener(plugged=False)
    edges = FaultEdges(listener=mic)
    app = make(tmp_path, edges, auto_start=False)
    thread = run_in_thread(app)
    assert wait_for(lambda: app.controls is not None and app.controls.state.value == "ready")
    assert "device.no_microphone" in said(tmp_path)
    press(app)  # short press when ready: start
    assert wait_for(lambda: app.session is not None)
    thread.join(60)
    assert not thread.is_alive()
    assert_session_completed(tmp_path)
    starts = [e for e in events(tmp_path) if e["kind"] == "command" and e["command"] == "start"]
    assert starts[0]["source"] == "button" and starts[0]["accepted"]


def test_microphone_unplugged_mid_session_is_spoken_retried_and_welcomed_back(tmp_path):
    mic = FakeListener()
    script = FaultScript()
    edges = FaultEdges(listener=mic, script=script)
    app = make(tmp_path, edges)
    script.at(mic.unplug, kind="phase", exercise="quick1", rep=1, phase="hold")
    script.at(mic.plug, kind="phase", exercise="quick2", rep=1, phase="contract")
    # While it is out, the button still drives the session: a short press is "next".
    script.at(lambda: threading.Thread(target=press, args=(app,)).start(),
              kind="phase", exercise="quick1", rep=2, phase="hold")
    assert app.main() == 0
    spoken = said(tmp_path)
    assert spoken.index("device.no_microphone") < spoken.index("device.microphone_back")
    assert mic.starts >= 2  # reopened
    nexts = [e for e in events(tmp_path) if e["kind"] == "command" and e["command"] == "next"]
    assert nexts and nexts[0]["source"] == "button" and nexts[0]["accepted"]
    reps, sessions, _ = stored(tmp_path)
    assert sessions == ["done"]
    assert any(r[0] == "quick2" for r in reps)  # the session went on after the fault


# --- voice model -------------------------------------------------------------------------


class _QuietMicrophone:
    """A sound card's input stream that opens and stays open (no sound card here)."""

    active = True

    def __init__(self, **kwargs) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("model", ["missing", "corrupt"])
def test_missing_or_corrupt_dutch_model_says_so_and_hears_english_commands(tmp_path, model, monkeypatch):
    import sounddevice

    from appliance.voice.listener import Listener

    model_dir = tmp_path / "model"
    if model == "corrupt":
        (model_dir / "am").mkdir(parents=True)
        (model_dir / "conf").mkdir()
        (model_dir / "am" / "final.mdl").write_bytes(b"\x00not a model")
        (model_dir / "conf" / "model.conf").write_text("garbage\n")
    monkeypatch.setattr(sounddevice, "InputStream", _QuietMicrophone)

    def real_listener(config, state_dir, on_command):
        return Listener.from_config(config, on_command, state_dir=state_dir)

    edges = FaultEdges(listener=real_listener)
    app = make(tmp_path, edges, voice_extra=f'model_dir = "{model_dir}"')
    assert app.main() == 0
    spoken = said(tmp_path)
    assert spoken[:2] == ["device.ready", "voice_fallback.english_only"]
    assert app.health.microphone is None  # the microphone works; only the Dutch model is missing
    assert app.listener.fallback.startswith("no recognizer for nl")
    assert app.listener.detector.vocabulary.lang == "en"
    assert_session_completed(tmp_path)


def test_without_microphone_the_missing_model_is_not_what_the_patient_hears(tmp_path):
    from appliance.voice.listener import Listener

    def real_listener(config, state_dir, on_command):
        return Listener.from_config(config, on_command, state_dir=state_dir)

    edges = FaultEdges(listener=real_listener)
    app = make(tmp_path, edges, voice_extra=f'model_dir = "{tmp_path / "no-model"}"')
    assert app.main() == 0
    assert said(tmp_path)[:2] == ["device.ready", "device.no_microphone"]  # the button, not English
    assert_session_completed(tmp_path)


# --- disk --------------------------------------------------------------------------------


def test_disk_nearly_full_keeps_repetitions_drops_samples_and_says_so(tmp_path):
    free = {"bytes": 10**10}
    script = FaultScript()
    script.at(lambda: free.update(bytes=1024 * 1024), kind="rep", exercise="quick1", rep=1)
    edges = FaultEdges(free_bytes=lambda: free["bytes"], script=script)
    app = make(tmp_path, edges)
    counts = []

    def count_samples():
        app.store.flush()
        counts.append(stored(tmp_path)[2])

    script.at(count_samples, kind="phase", exercise="quick1", rep=3, phase="contract")
    script.at(count_samples, kind="phase", exercise="quick2", rep=3, phase="contract")
    assert app.main() == 0
    assert "disk" in warnings(tmp_path)
    assert "device.disk_full" in said(tmp_path)
    reps = assert_session_completed(tmp_path)
    assert all(r[2] == "complete" for r in reps)
    assert counts[0] > 0 and counts[1] == counts[0]  # no samples after the warning
    assert stored(tmp_path)[2] == counts[0]


# --- probe -------------------------------------------------------------------------------


def test_probe_disconnected_mid_session_is_spoken_and_the_session_goes_on(tmp_path):
    script = FaultScript()
    edges = FaultEdges(script=script, probe_faults=True)

    def pull():
        edges.probe.forced = ProbeStatus.DISCONNECTED

    def push():
        edges.probe.forced = None

    script.at(pull, kind="phase", exercise="quick1", rep=2, phase="contract")
    script.at(push, kind="phase", exercise="quick2", rep=1, phase="contract")
    app = make(tmp_path, edges)
    assert app.main() == 0
    assert "probe" in warnings(tmp_path)
    assert said(tmp_path).count("probe.disconnected") == 1  # once, not every tick
    assert said(tmp_path).count("probe.ok") == 1  # and its return is spoken too
    reps, sessions, _ = stored(tmp_path)
    assert sessions == ["done"]
    assert len(reps) == REPS_IN_SHORT


# --- wall clock --------------------------------------------------------------------------


def test_wall_clock_jumps_do_not_disturb_control_timing(tmp_path):
    clock = FastClock()
    script = FaultScript()
    script.at(lambda: clock.set_wall(clock.wall() + timedelta(days=1)),
              kind="phase", exercise="quick1", rep=2, phase="hold")
    script.at(lambda: clock.set_wall(clock.wall() - timedelta(hours=3)),
              kind="phase", exercise="quick2", rep=1, phase="hold")
    edges = FaultEdges(script=script)
    app = make(tmp_path, edges, clock=clock)
    assert app.main() == 0
    reps = assert_session_completed(tmp_path)
    assert all(r[2] == "complete" for r in reps)
    ends = [r[3] for r in reps]
    assert ends == sorted(ends)
    # Every phase lasted what the programme says, across both jumps.
    phases = [e for e in events(tmp_path) if e["kind"] == "phase" and e["phase"] in
              ("contract", "hold", "release")]
    assert phases and all(abs((p["end"] - p["start"]) - 1.0) < 0.02 for p in phases)
    con = sqlite3.connect(tmp_path / "state" / "appliance.db")
    walls = [w for (w,) in con.execute("SELECT ended_utc FROM repetitions ORDER BY id")]
    con.close()
    assert walls[1] > walls[0]  # the jump forward is in the record, as wall time should be


# --- invalid configuration: the real command, a real notify socket --------------------------


def test_invalid_configuration_stays_up_needing_the_clinic_until_fixed(tmp_path):
    sock_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(15)
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('language = "en"\n[audio]\nvolume = 3.5\n')
    events_file = tmp_path / "events.jsonl"
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "300000"}
    env.pop("WATCHDOG_PID", None)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())",
         "run", "--simulated", "--no-audio", "--config", str(cfg), "--state-dir",
         str(tmp_path / "state"), "--events", str(events_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        messages = []

        def next_message() -> list[str]:
            m = sock.recv(4096).decode().split("\n")
            messages.append(m)
            return m

        first = next_message()
        while "READY=1" not in first:
            first = next_message()
        status = next(f for f in first if f.startswith("STATUS="))
        assert "needs the clinic" in status
        assert "audio.volume = 3.5" in status and str(cfg) in status
        said_now = [json.loads(x)["phrase"] for x in events_file.read_text().splitlines()
                    if json.loads(x)["kind"] == "say"]
        assert said_now == ["device.needs_clinic"]
        # Still alive, and the loop keeps feeding the watchdog.
        pets = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if next_message() == ["WATCHDOG=1"]:
                pets += 1
        assert pets >= 5
        assert child.poll() is None
        # The clinic fixes the file and reloads: the appliance becomes ready.
        cfg.write_text('language = "en"\n[audio]\nvolume = 0.5\n[sensor]\nsource = "simulated"\n')
        child.send_signal(signal.SIGHUP)
        while not any(f == "STATUS=ready" for f in next_message()):
            pass
        phrases = [json.loads(x).get("phrase") for x in events_file.read_text().splitlines()]
        assert "device.ready" in phrases
        child.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in next_message():
            pass
        assert child.wait(15) == 0
    finally:
        if child.poll() is None:
            child.kill()
        sock.close()


def test_repetitions_that_cannot_be_stored_make_the_device_ask_for_the_clinic(tmp_path):
    # The database starts refusing repetitions during the session (a trigger added behind the
    # device's back stands in for a file going bad): the session must not die, and the
    # patient must hear that the device needs the clinic.
    def damage() -> None:
        con = sqlite3.connect(tmp_path / "state" / "appliance.db")
        con.execute("CREATE TRIGGER damaged BEFORE INSERT ON repetitions"
                    " BEGIN SELECT RAISE(ABORT, 'no such column: peak_pct'); END")
        con.close()

    app = make(tmp_path, FaultEdges(script=FaultScript().at(damage, kind="exercise", state="started")))
    assert app.main() == 0
    assert "store" in warnings(tmp_path)
    assert "device.needs_clinic" in said(tmp_path)
    assert "device.disk_full" not in said(tmp_path)  # not mistaken for a full disk
    assert app.health.store_error and "peak_pct" in app.health.store_error
    assert any(e["kind"] == "session" and e["state"] == "done" for e in events(tmp_path))


def test_a_database_the_device_did_not_write_is_not_written_to_and_needs_the_clinic(tmp_path):
    from appliance.store import Store

    state = tmp_path / "state"
    state.mkdir()
    old = Store(state / "appliance.db")
    old.db.execute("CREATE TRIGGER damaged BEFORE INSERT ON repetitions"
                   " BEGIN SELECT RAISE(ABORT, 'no such column: peak_pct'); END")
    old.close()
    before = (state / "appliance.db").read_bytes()
    app = make(tmp_path, FaultEdges(), auto_start=True)
    thread = run_in_thread(app)
    try:
        assert wait_for(lambda: said(tmp_path).count("device.needs_clinic") >= 2, timeout=10)
        assert app.session is None and app.sessions_run == 0 and "database" in app.health.needs_clinic
    finally:
        app.signals.stop.set()
        thread.join(10)
    assert (state / "appliance.db").read_bytes() == before


def test_a_refused_prescription_means_needs_the_clinic_until_a_good_one_is_loaded(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "prescription.toml").write_text('[patient]\ncode = "GNT-1"\nlanguage = "xx"\n')
    app = make(tmp_path, FaultEdges(), auto_start=True)
    app.options.programme = None
    thread = run_in_thread(app)
    try:
        assert wait_for(lambda: "device.needs_clinic" in said(tmp_path), timeout=10)
        time.sleep(0.5)  # the auto "start" was refused with the same words
        assert said(tmp_path).count("device.needs_clinic") == 2
        assert "device.ready" not in said(tmp_path)
        assert app.session is None and app.controls.state.value == "needs_attention"
        assert "prescription.toml" in app.health.needs_clinic
        # The clinic puts a good prescription on and the service reloads (SIGHUP).
        (state / "prescription.toml").write_text(
            (REPO / "examples" / "prescription.toml").read_text())
        app.signals.reload.set()
        assert wait_for(lambda: "device.ready" in said(tmp_path), timeout=10)
        assert app.health.needs_clinic is None and app.rx is not None
        assert wait_for(lambda: app.controls.state.value == "ready", timeout=5)
    finally:
        app.signals.stop.set()
        thread.join(10)
