"""`appliance simulate` from the command line, as a person would run it."""

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np


def appliance(*args):
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_simulate_writes_database_and_timeline_and_prints_a_readable_timeline(tmp_path):
    out = tmp_path / "run"
    r = appliance("simulate", "--out", str(out), "--lang", "en", "--patient", "strong", "--seed", "4",
                  "--programme", "postop", "--say", "60:pause", "--say", "75:resume")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (out / "timeline.jsonl").read_text().splitlines()]
    assert {"t", "kind"} <= set(lines[0])
    assert any(x["kind"] == "command" and x["command"] == "pause" and abs(x["t"] - 60.0) <= 0.011
               for x in lines)
    assert all(x["phrase"] and x["text"] for x in lines if x["kind"] == "say")
    assert (out / "appliance.db").exists()
    # session.wav opens with the ready phrase; the timeline says where the session starts in it
    (wav,) = [x for x in lines if x["kind"] == "wav"]
    with wave.open(str(out / wav["file"])) as w:
        rate = w.getframerate()
        welcome = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[
            int(wav["session_starts_at_s"] * rate):int((wav["session_starts_at_s"] + 0.5) * rate)]
    assert wav["session_starts_at_s"] > 1.0 and np.sqrt(np.mean((welcome / 32768.0) ** 2)) > 0.01
    assert "Breathe in slowly, until your belly rises." in r.stdout
    assert "█" in r.stdout and "session done" in r.stdout
    # Before the MVC is measured a % means nothing: the calibration's squeezes show their pressure.
    squeezes = [x for x in r.stdout.splitlines() if "calibrate_squeeze" in x]
    assert squeezes and all(x.rstrip().endswith("cmH2O") and "%" not in x for x in squeezes)
    peaks = [float(x.split("max")[1].split("cmH2O")[0]) for x in squeezes]
    (cal,) = [x for x in lines if x["kind"] == "calibration"]
    assert min(peaks) > cal["rest_cmh2o"] + 5.0  # squeezes above the measured rest (post-op: gentle ones)


def test_a_bad_say_option_is_one_clear_sentence_and_a_non_zero_exit(tmp_path):
    r = appliance("simulate", "--out", str(tmp_path), "--say", "ninety:pause")
    assert r.returncode != 0
    assert "--say 'ninety:pause'" in r.stderr and "Traceback" not in r.stderr
    r = appliance("simulate", "--out", str(tmp_path), "--say", "90:dance")
    assert r.returncode != 0 and "unknown command 'dance'" in r.stderr


def test_wrong_places_and_numbers_are_one_sentence_each_and_nothing_is_written(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("keep me\n")
    cases = [
        (("simulate", "--out", str(afile)), "--out"),
        (("simulate",), "--out DIR is required"),
        (("simulate", "--days", "14"), "--days needs --state-dir"),
        (("simulate", "--days", "0", "--state-dir", str(tmp_path / "s")), "--days 0"),
        (("simulate", "--days", "3", "--state-dir", str(tmp_path / "s"), "--start", "3 March"), "--start '3 March'"),
        (("simulate", "--days", "3", "--state-dir", str(afile)), "--state-dir"),
    ]
    for args, named in cases:
        r = appliance(*args)
        assert r.returncode != 0, args
        err = r.stderr.strip()
        assert named in err and "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
    assert afile.read_text() == "keep me\n"


def test_a_malformed_device_config_names_file_key_and_value(tmp_path):
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('[audio]\nsample_rate = "fast"\n')
    r = appliance("simulate", "--out", str(tmp_path / "o"), "--config", str(cfg))
    assert r.returncode != 0
    assert str(cfg) in r.stderr and "audio.sample_rate" in r.stderr and "'fast'" in r.stderr


def test_every_sub_command_has_help():
    r = appliance("--help")
    assert r.returncode == 0
    for name in ("simulate",):
        h = appliance(name, "--help")
        assert h.returncode == 0 and "--config" in h.stdout and "--state-dir" in h.stdout


def test_a_new_user_s_wrong_input_is_one_sentence_each_with_a_non_zero_exit(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("keep me\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("[audio\nvolume = 1\n")
    state = str(tmp_path / "state")
    cases = [
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("simulate", "--out", str(tmp_path / "o"), "--lang", "xx"), "--lang"),
        (("simulate", "--out", str(tmp_path / "o"), "--seed", "abc"), "--seed"),
        (("simulate", "--out", str(tmp_path / "o"), "--programme", "nope"), "--programme nope: no such programme"),
        (("simulate", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "none.toml")), "file not found"),
        (("simulate", "--out", str(tmp_path / "o"), "--config", str(broken)), f"{broken}: not valid TOML"),
        (("simulate", "--out", str(tmp_path / "o"), "--config", str(tmp_path)), "is a directory"),
        (("clinic", "export", "--state-dir", state, "--out", str(afile / "sub")), f"--out {afile / 'sub'}"),
        (("clinic", "enroll", "--state-dir", state, str(tmp_path / "rx.toml")), "file not found"),
        (("say", "cue.release", "--out", str(tmp_path)), f"--out {tmp_path}"),
    ]
    for args, named in cases:
        r = appliance(*args)
        assert r.returncode != 0, args
        err = r.stderr.strip()
        assert named in err and "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
        assert "(file) =" not in err and "usage:" not in err, err
    assert afile.read_text() == "keep me\n"


def test_the_console_prints_the_ready_phrase_before_the_session_not_beside_the_welcome():
    import io

    from appliance.clock import SimClock
    from appliance.events import Event
    from appliance.simulation.timeline import ConsoleTimeline

    clock, out = SimClock(), io.StringIO()
    view = ConsoleTimeline(out, clock)
    view.emit(Event(0.0, "say", {"phrase": "device.ready", "text": "Ik ben klaar."}))
    clock.advance(5.65)
    view.emit(Event(0.0, "say", {"phrase": "session.welcome", "text": "Welkom."}))
    view.emit(Event(0.0, "session", {"state": "started"}))
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["-0:05.65", "»"] and "Ik ben klaar." in lines[0]
    assert lines[1].split()[0] == "0:00.00" and "Welkom." in lines[1]


def test_a_lending_period_without_a_patient_points_to_enrolment_not_to_an_empty_report(tmp_path):
    """A new user simulating days into an empty directory was told the report shows what the
    device did; the report then said no patient is enrolled. Enrolled first, it is there."""
    bare = tmp_path / "bare"
    out = appliance("simulate", "--days", "1", "--state-dir", str(bare), "--quiet", "--no-audio")
    assert out.returncode == 0, out.stderr
    assert "appliance clinic enroll" in out.stdout and "shows what the device did" not in out.stdout
    assert appliance("clinic", "report", "--state-dir", str(bare), "--out", str(tmp_path / "r0")).returncode != 0

    enrolled = tmp_path / "enrolled"
    rx = Path(__file__).resolve().parent.parent / "examples" / "prescription.toml"
    assert appliance("clinic", "enroll", "--state-dir", str(enrolled), str(rx)).returncode == 0
    out = appliance("simulate", "--days", "1", "--state-dir", str(enrolled), "--quiet", "--no-audio")
    assert out.returncode == 0, out.stderr
    assert f"appliance clinic report --state-dir {enrolled}" in out.stdout
    report = appliance("clinic", "report", "--state-dir", str(enrolled), "--out", str(tmp_path / "r1"))
    assert report.returncode == 0, report.stderr
    assert list((tmp_path / "r1").glob("*.pdf"))
