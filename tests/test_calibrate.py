"""`appliance calibrate`: atmosphere zero, insertion, rest, three maximal squeezes, Oxford band."""

from __future__ import annotations

import pytest

from appliance.cli import main
from appliance.clock import SimClock
from appliance.config import SensorConfig
from appliance.device.calibration import CalibrationError, CalibrationProcedure
from appliance.sensor.mcp_sim import ResampledPressure, simulated_adc_probe
from appliance.sensor.probe import load_probe_calibration
from appliance.sensor.signal import oxford_band
from appliance.sensor.simulated import PROFILES, SimulatedPelvicFloor, profile


@pytest.mark.parametrize("name", ["weak", "average", "strong"])
def test_simulated_patient_gets_her_mvc_and_oxford_band_stored(tmp_path, name, capsys):
    assert main(["calibrate", "--simulate", name, "--state-dir", str(tmp_path), "--seed", "4"]) == 0
    cal = load_probe_calibration(tmp_path)
    truth = PROFILES[name]
    # Best of three maximal squeezes, a little below the true MVC as the muscle tires.
    assert cal.mvc_cmh2o == pytest.approx(truth.mvc_cmh2o, rel=0.12)
    assert cal.rest_cmh2o == pytest.approx(truth.rest_cmh2o, abs=2.5)
    assert cal.oxford_band == oxford_band(cal.mvc_cmh2o)
    assert abs(cal.atmosphere_cmh2o) < 0.5
    out = capsys.readouterr().out
    assert out.count("Span nu zo sterk aan als u kunt") == 3  # the leaflet's words, three times


def procedure(offset=0.0, insert=True, unplugged=False):
    clock = SimClock()
    floor = SimulatedPelvicFloor(profile("average"), seed=2)
    inside = ResampledPressure(floor)
    state = {"inserted_at": None}

    def at_probe(t):
        p = inside(t)
        return offset + (p if state["inserted_at"] is not None and t >= state["inserted_at"] else 0.0)

    probe, sim, _ = simulated_adc_probe(
        at_probe, SensorConfig(source="adc", chip="MCP3208", sample_rate_hz=100.0, oversample=1), clock
    )
    if unplugged:
        sim.voltage = lambda ch: 0.0
    said = []

    def say(key):
        said.append(key)
        if key == "probe.insert" and insert:
            state["inserted_at"] = clock.now() + 5.0
        return 1.0

    return CalibrationProcedure(probe, clock, say, floor.emit), said, probe


def test_atmosphere_zero_removes_a_sensor_offset():
    proc, said, probe = procedure(offset=6.0)
    result = proc.run()
    assert result.atmosphere_cmh2o == pytest.approx(6.0, abs=0.3)
    assert result.rest_cmh2o == pytest.approx(PROFILES["average"].rest_cmh2o, abs=2.5)
    assert said[:3] == ["probe.atmosphere", "probe.insert", "probe.inserted"]
    assert said.count("calibrate.squeeze") == 3 and said[-1] == "calibrate.done"
    probe.close()


def test_a_probe_never_inserted_is_reminded_then_refused():
    proc, said, probe = procedure(insert=False)
    with pytest.raises(CalibrationError, match="not inserted"):
        proc.run()
    assert said.count("probe.insert_failed") >= 3
    assert "calibrate.squeeze" not in said
    probe.close()


def test_a_disconnected_probe_is_refused_at_once():
    proc, said, probe = procedure(unplugged=True)
    with pytest.raises(CalibrationError, match="disconnected"):
        proc.run()
    assert said == ["probe.atmosphere"]
    probe.close()


def test_bad_two_point_argument_is_one_clear_sentence(tmp_path, capsys):
    assert main(["calibrate", "--two-point", "fifty", "--state-dir", str(tmp_path)]) == 2
    assert "--two-point 'fifty'" in capsys.readouterr().err


def test_calibrate_without_a_probe_configured_says_so(tmp_path, capsys):
    assert main(["calibrate", "--state-dir", str(tmp_path)]) == 2
    assert "sensor.source" in capsys.readouterr().err


@pytest.mark.parametrize("arg", ["nan:50", "0:inf", "50:0"])
def test_two_point_pressures_that_are_not_finite_or_not_rising_are_one_sentence(tmp_path, capsys, arg):
    assert main(["calibrate", "--two-point", arg, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--two-point" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_binary_configuration_is_one_sentence(tmp_path, capsys):
    cfg = tmp_path / "appliance.toml"
    cfg.write_bytes(bytes(range(256)))
    assert main(["calibrate", "--simulate", "average", "--config", str(cfg), "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(cfg) in err and len(err.splitlines()) == 1


def test_the_command_line_modules_only_parse_and_print():
    from pathlib import Path

    import appliance.cli as cli

    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(cli.__file__).parent.glob("*.py")}
    assert sizes["calibrate.py"] <= 200 and sizes["selftest.py"] <= 200, sizes
