"""`appliance selftest`: each check can fail, and the exit code says so."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.cli import main
from appliance.config import DeviceConfig, SensorConfig, VoiceConfig
from appliance.device.selftest import SelfTest, Status


def test_simulated_selftest_passes_and_hears_start_with_the_english_recogniser(tmp_path, capsys):
    cfg = tmp_path / "en.toml"
    cfg.write_text('language = "en"\n[voice]\nengine = "pocketsphinx"\n')
    code = main(["selftest", "--simulated", "--quiet", "--stim", "--config", str(cfg),
                 "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert " ok " in lines["speaker"] and "440 Hz" in lines["speaker"]
    assert "recognised 'synthesised start'" in lines["microphone"]
    assert " ok " in lines["probe"]
    assert " ok " in lines["stim"]
    assert out.strip().endswith("result: ok")


def test_without_the_dutch_model_the_voice_model_line_fails_and_says_what_to_do(tmp_path, capsys):
    code = main(["selftest", "--simulated", "--quiet", "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    voice = lines["voice"]
    assert " FAIL " in voice and "nl unavailable: no Vosk model" in voice
    assert "install.sh --only models" in voice and "--model nl=" in voice
    assert "English commands (pocketsphinx)" in voice  # what carries the device meanwhile
    # the microphone check hears through the device's own fallback: English "start"
    assert "recognised 'synthesised en start'" in lines["microphone"]
    assert "result: FAIL (voice model)" in out
    assert code == 1


class _LibvoskWithoutLibatomic:
    """The import of vosk on a Pi without libatomic1: cffi cannot load libvosk.so."""

    def find_spec(self, name, path=None, target=None):
        if name == "vosk":
            raise OSError("cannot load library '/opt/venv/vosk/libvosk.so': libatomic.so.1: "
                          "cannot open shared object file: No such file or directory")
        return None


def test_a_vosk_library_that_does_not_load_is_a_failure_naming_the_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "vosk", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_LibvoskWithoutLibatomic(), *sys.meta_path])
    config = DeviceConfig(voice=VoiceConfig(model_dir=tmp_path / "model"))
    st = SelfTest(config, tmp_path / "state", simulated=True)
    result = st.check_recognizer()
    st.close()
    assert result.status is Status.FAIL
    assert result.detail.startswith("nl unavailable: the vosk library does not load")
    assert "sudo apt install libatomic1" in result.detail


def test_a_missing_english_model_fails_too(tmp_path):
    config = DeviceConfig(language="en", voice=VoiceConfig(model_dir=tmp_path / "no-model"))
    st = SelfTest(config, tmp_path / "state", simulated=True)
    result = st.check_recognizer()
    st.close()
    assert result.status is Status.FAIL
    assert result.detail.startswith("en unavailable: no Vosk model")
    assert "English commands (pocketsphinx)" in result.detail


def test_without_any_recognizer_only_the_button_is_promised(tmp_path):
    config = DeviceConfig(language="en", voice=VoiceConfig(engine="pocketsphinx",
                                                           model_dir=tmp_path / "no-model"))
    st = SelfTest(config, tmp_path / "state", simulated=True)
    result = st.check_recognizer()
    st.close()
    assert result.status is Status.FAIL
    assert result.detail.startswith("en unavailable: no pocketsphinx model")
    assert "only the button" in result.detail


def test_a_probe_that_reads_pressure_at_atmosphere_fails(tmp_path, monkeypatch):
    import appliance.sensor.mcp_sim as mcp_sim

    real_front = mcp_sim.AnalogFrontEnd

    def offset_front(pressure_at, *args, **kwargs):
        return real_front(lambda t: 12.0, *args, **kwargs)  # 12 cmH2O with nothing inserted

    monkeypatch.setattr(mcp_sim, "AnalogFrontEnd", offset_front)
    st = SelfTest(DeviceConfig(), tmp_path / "state", simulated=True)
    result = st.check_probe()
    st.close()
    assert result.status is Status.FAIL
    assert "re-zero" in result.detail


def test_adc_that_cannot_be_opened_fails_probe_and_rate(tmp_path):
    config = DeviceConfig(sensor=SensorConfig(source="adc", spi_port=1, spi_device=1))
    st = SelfTest(config, tmp_path / "state", simulated=False, pin_factory=MockFactory())
    results = {r.name: r for r in (st.check_probe(), st.check_adc_rate())}
    st.close()
    assert results["probe"].status is Status.FAIL
    assert results["adc rate"].status is Status.FAIL


def test_unwritable_state_directory_fails_the_disk_check(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    st = SelfTest(DeviceConfig(), blocker / "state", simulated=True)
    result = st.check_disk()
    st.close()
    assert result.status is Status.FAIL


def test_corrupt_database_fails_the_disk_check(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "appliance.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    st = SelfTest(DeviceConfig(), state, simulated=True)
    result = st.check_disk()
    st.close()
    assert result.status is Status.FAIL


def test_stim_line_stuck_high_fails(tmp_path):
    factory = MockFactory()
    config = DeviceConfig()
    st = SelfTest(config, tmp_path, simulated=True, pin_factory=factory)
    ok = st.check_stim()
    assert ok.status is Status.OK
    pin = factory.pin(config.controls.stim_pin)
    states = [s.state for s in pin.states]
    assert True in states and states[-1] is False  # pulsed, then left low

    from appliance import stim

    class StuckLine(stim.StimLine):
        def off(self) -> None:  # a shorted driver: the line never drops
            self._deadline = None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stim, "StimLine", StuckLine)
        stuck = st.check_stim()
    st.close()
    assert stuck.status is Status.FAIL


def test_failure_gives_exit_code_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["selftest", "--simulated", "--quiet", "--state-dir", str(blocker / "state")])
    out = capsys.readouterr().out
    assert code == 1
    failed = out.split("result: FAIL (")[1].rstrip().rstrip(")").split(", ")
    assert "disk" in failed


