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


def test_without_a_voice_model_it_warns_but_passes(tmp_path):
    config = DeviceConfig(voice=VoiceConfig(model_dir=tmp_path / "no-model"))
    st = SelfTest(config, tmp_path / "state", simulated=True)
    result = st.check_recognizer()
    st.close()
    assert result.status is Status.WARN
    assert "button" in result.detail


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
    assert "result: FAIL (disk" in out


