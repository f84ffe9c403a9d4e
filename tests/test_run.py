"""`appliance run` off the fault path: reminders (the prescription's and the timer's), the
clinic stick's announcements, the seam between the mixer and the listener.

Uses the fault matrix's rig (tests/test_faults.py): the appliance in-process on a fast
clock with the simulated pelvic floor and mock pins.
"""

from __future__ import annotations

import time

from test_faults import (
    REPO,
    FastClock,
    FaultEdges,
    events,
    make,
    press,
    run_in_thread,
    said,
    stored,
    wait_for,
)


def test_reminder_is_spoken_when_idle_but_not_at_night_and_stick_outcomes_are_spoken(tmp_path):
    from datetime import UTC, datetime

    from appliance.device.service import post_announcement

    clock = FastClock(wall_start=datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    app = make(tmp_path, FaultEdges(), auto_start=False, clock=clock)
    thread = run_in_thread(app)
    try:
        assert wait_for(lambda: app.controls is not None and app.controls.state.value == "ready")
        local_hour = clock.wall().astimezone().hour
        app.signals.reminder.set()  # what appliance-reminder.service's SIGUSR1 does
        expected = 8 <= local_hour <= 20
        assert wait_for(lambda: "device.reminder" in said(tmp_path), timeout=3) is expected
        clock.set_wall(datetime(2026, 3, 3, 3, 0, tzinfo=UTC).astimezone().replace(hour=3))
        app.signals.reminder.set()
        time.sleep(0.5)
        assert said(tmp_path).count("device.reminder") == (1 if expected else 0)
        post_announcement(tmp_path / "state", "device.goodbye")
        assert wait_for(lambda: "device.goodbye" in said(tmp_path), timeout=5)
    finally:
        app.signals.stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_the_listener_understands_what_the_mixer_says_it_plays():
    # The seam between voice-in and audio-out: the detector unpacks a 4-tuple, the mixer
    # reports a dataclass; `appliance run` passes MixerMonitor between them.
    import numpy as np

    from appliance.config import DeviceConfig, VoiceConfig
    from appliance.device.appliance import MixerMonitor
    from appliance.voice.audio import Mixer
    from appliance.voice.listener import CommandDetector, Vocabulary, build_engine

    config = DeviceConfig(language="en", voice=VoiceConfig(engine="pocketsphinx"))
    vocab = Vocabulary.load("en")
    engine = build_engine(config.voice.engine, "en", vocab)
    mixer = Mixer(22050)
    mixer.schedule(np.full(22050, 0.1), 0, "cue.hold")
    mixer.render(np.zeros(256))
    detector = CommandDetector(engine, vocab, monitor=MixerMonitor(mixer))
    assert MixerMonitor(mixer).playback_state()[2] is True  # speaking
    assert detector.process(np.zeros(1600, dtype=np.float32)) == []


def test_prescribed_reminder_is_spoken_and_start_runs_the_short_set_as_prescribed(tmp_path):
    import shutil
    from datetime import datetime
    from zoneinfo import ZoneInfo

    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(REPO / "examples" / "prescription.toml", state / "prescription.toml")
    # 08:31 in Brussels, months after the surgery: the 08:30 reminder is due.
    wall = datetime(2026, 6, 1, 8, 31, tzinfo=ZoneInfo("Europe/Brussels"))
    app = make(tmp_path, FaultEdges(), auto_start=False, clock=FastClock(wall_start=wall))
    app.options.programme = None  # the prescription decides
    thread = run_in_thread(app)
    try:
        assert wait_for(lambda: "device.reminder" in said(tmp_path), timeout=10)
        press(app)  # "start" answers the reminder
        thread.join(120)
    finally:
        app.signals.stop.set()
        thread.join(10)
    reps, sessions, _ = stored(tmp_path)
    assert sessions == ["done"]
    assert {r[0] for r in reps} == {"ex1"} and len(reps) == 5  # short_set_repetitions
    holds = [e for e in events(tmp_path) if e["kind"] == "phase" and e["phase"] == "hold"]
    assert holds and all(abs(h["end"] - h["start"] - 6.0) < 0.05 for h in holds)  # hold_seconds


def test_sigterm_during_a_session_stops_and_stores_it_and_says_stopping(tmp_path):
    import json
    import os
    import signal
    import socket
    import sqlite3
    import subprocess
    import sys

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(20)
    events_file = tmp_path / "events.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())",
         "run", "--simulated", "--no-audio", "--state-dir", str(tmp_path / "state"),
         "--programme", str(REPO / "tests" / "data" / "short_programme.toml"),
         "--auto-start", "--calibration", "5,40", "--events", str(events_file)],
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while "READY=1" not in sock.recv(4096).decode().split("\n"):
            pass

        def started() -> bool:
            return events_file.exists() and any(
                json.loads(x).get("state") == "started" for x in events_file.read_text().splitlines())

        assert wait_for(started, timeout=20)
        t = time.monotonic()
        child.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in sock.recv(4096).decode().split("\n"):
            pass
        assert child.wait(10) == 0
        assert time.monotonic() - t < 5.0  # well inside TimeoutStopSec=15s
    finally:
        if child.poll() is None:
            child.kill()
        sock.close()
    con = sqlite3.connect(tmp_path / "state" / "appliance.db")
    (status,) = con.execute("SELECT status FROM sessions").fetchone()
    con.close()
    assert status == "stopped"
    stops = [json.loads(x) for x in events_file.read_text().splitlines()]
    assert any(e["kind"] == "command" and e.get("source") == "service" for e in stops)


def test_a_session_through_the_spi_adc_path_stores_every_repetition(tmp_path):
    # The device's data path end to end: simulated pelvic floor -> sensor voltage -> MCP3008
    # simulator on gpiozero's mock SPI -> AdcSampler -> Probe (numpy arrays) -> coach ->
    # store. Numpy values in the repetition metrics must not cost a repetition.
    import sqlite3
    from dataclasses import replace

    from appliance.sensor.mcp_sim import ResampledPressure, simulated_adc_probe
    from appliance.sensor.simulated import SimulatedPelvicFloor, profile

    class ProbeAndFloor:
        def __init__(self, probe, floor):
            self.probe, self.floor = probe, floor
            self.sample_rate_hz = probe.sample_rate_hz

        def read_until(self, t):
            return self.probe.read_until(t)

        @property
        def status(self):
            return self.probe.status

        def emit(self, event):
            self.floor.emit(event)

        def feedback(self, fb):
            self.floor.feedback(fb)

        def close(self):
            self.probe.close()

    class AdcEdges(FaultEdges):
        def pressure_source(self, config, clock, state_dir, t0):
            floor = SimulatedPelvicFloor(profile("average"), seed=3)
            pressure = ResampledPressure(floor)
            sensor = replace(config.sensor, source="adc")
            probe, _sim, _front = simulated_adc_probe(lambda t: pressure(t - t0), sensor, clock)
            return ProbeAndFloor(probe, floor)

    app = make(tmp_path, AdcEdges())
    assert app.main() == 0
    reps, sessions, samples = stored(tmp_path)
    assert sessions == ["done"]
    assert len(reps) == 6 and samples > 100
    con = sqlite3.connect(tmp_path / "state" / "appliance.db")
    peaks = [p for (p,) in con.execute("SELECT peak_cmh2o FROM repetitions")]
    con.close()
    assert all(p is not None and p > 3.0 for p in peaks)  # real squeezes came through the ADC
    assert app.store_sink.errors == 0


STIM_RX = '''
[patient]
code = "GNT-7-STIM"
language = "nl"
programme = "leaflet"
[reminders]
enabled = false
[exercise.awareness]
repetitions = 2
[exercise.ex1]
repetitions = 2
{disabled}
[stim]
enabled = true
mode = "cyclic"
work_seconds = 5
rest_seconds = 10
cycles = 3
checked_by = "physio 12"
checked_on = 2026-05-01
[stim.contraindications]
pacemaker = "no"
pregnancy_or_trying = "no"
recent_birth_or_pelvic_surgery = "no"
infection = "no"
pelvic_cancer = "no"
epilepsy = "no"
broken_skin = "no"
no_sensation = "no"
metal_implant_or_iud = "no"
large_prolapse = "no"
cannot_report_discomfort = "no"
urinary_retention = "no"
'''


def test_a_prescription_with_stim_runs_the_stim_exercise_and_the_line_ends_low(tmp_path):
    from datetime import UTC, datetime

    from appliance.config import DeviceConfig

    state = tmp_path / "state"
    state.mkdir()
    disabled = "\n".join(f"[exercise.ex{i}]\nenabled = false" for i in range(2, 9))
    (state / "prescription.toml").write_text(STIM_RX.format(disabled=disabled))
    app = make(tmp_path, FaultEdges(), auto_start=True,
               clock=FastClock(wall_start=datetime(2026, 6, 2, 9, 0, tzinfo=UTC)))  # a Tuesday: no PERFECT
    app.options.programme = None  # the prescription decides, stim included
    thread = run_in_thread(app)
    try:
        thread.join(180)
    finally:
        app.signals.stop.set()
        thread.join(10)
    ev = events(tmp_path)
    stim = [e["state"] for e in ev if e["kind"] == "stim" and e.get("state") in ("on", "off")]
    assert stim == ["on", "off"] * 3
    order = [e["exercise"] for e in ev if e["kind"] == "exercise" and e["state"] == "started"]
    assert order == ["awareness", "stim", "ex1"]
    pin = app.edges.pin_factory.pin(DeviceConfig().controls.stim_pin)
    assert pin.state is False or pin.state == 0
    reps, sessions, _ = stored(tmp_path)
    assert sessions == ["done"]
    import sqlite3

    codes = sqlite3.connect(state / "appliance.db").execute("SELECT patient_code FROM sessions").fetchall()
    assert codes == [("GNT-7-STIM",)]
