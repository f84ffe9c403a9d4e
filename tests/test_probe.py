"""From SPI bits to cmH2O: transfer functions, zeroing and the probe's status within a second."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from appliance.clock import SimClock
from appliance.config import ConfigError, SensorConfig
from appliance.sensor.base import ProbeStatus
from appliance.sensor.mcp_sim import simulated_adc_probe
from appliance.sensor.probe import (
    CMH2O_PER_KPA,
    Mpx5010Transfer,
    ProbeCalibration,
    TwoPointTransfer,
    load_probe_calibration,
    save_probe_calibration,
    transfer_from_config,
)

REST = 20.0  # cmH2O above atmosphere with the probe in place


def breathing_rest(t: float) -> float:
    return REST + 1.5 * np.sin(2 * np.pi * t / 5.0)


def run(probe, clock, seconds, step=0.05):
    times, values = [], []
    for _ in range(int(round(seconds / step))):
        clock.advance(step)
        t, p = probe.read_until(clock.now())
        times.append(t)
        values.append(p)
    return np.concatenate(times), np.concatenate(values)


def make(pressure_at, chip="MCP3008", oversample=2, noise_v=0.003, **cfg):
    config = SensorConfig(
        source="adc", chip=chip, sample_rate_hz=100.0, oversample=oversample, **cfg
    )
    clock = SimClock()
    probe, sim, front = simulated_adc_probe(pressure_at, config, clock, noise_v=noise_v)
    return probe, sim, front, clock


def test_mpx5010_reads_its_datasheet_points():
    tf = Mpx5010Transfer(supply_v=5.0, divider_ratio=1.0)
    # Datasheet: 0.2 V at 0 kPa, 4.7 V at 10 kPa on a 5 V supply.
    assert tf.cmh2o(0.2) == pytest.approx(0.0, abs=1e-9)
    assert tf.cmh2o(4.7) == pytest.approx(10 * CMH2O_PER_KPA)
    divided = Mpx5010Transfer(divider_ratio=0.66)
    assert divided.volts(50.0) == pytest.approx(tf.volts(50.0) * 0.66)
    assert divided.span_volts[1] < 3.3  # the divider keeps full scale inside a 3.3 V ADC


def test_two_point_transfer_is_the_line_through_its_points():
    tf = TwoPointTransfer(volts_low=0.4, cmh2o_low=0.0, volts_high=2.4, cmh2o_high=50.0)
    assert tf.cmh2o(1.4) == pytest.approx(25.0)
    assert tf.volts(tf.cmh2o(np.array([0.7, 2.0]))) == pytest.approx([0.7, 2.0])
    with pytest.raises(ValueError, match="two distinct points"):
        TwoPointTransfer(volts_low=1.0, cmh2o_low=0.0, volts_high=1.0, cmh2o_high=50.0)


def test_two_point_without_a_stored_calibration_is_refused_by_name():
    with pytest.raises(ConfigError, match="two_point"):
        transfer_from_config(SensorConfig(transfer="two_point"), ProbeCalibration())


def test_calibration_round_trips_through_probe_toml(tmp_path):
    cal = ProbeCalibration(
        atmosphere_cmh2o=0.8,
        rest_cmh2o=21.5,
        mvc_cmh2o=33.0,
        oxford_band="moderate",
        two_point=TwoPointTransfer(0.3, 0.0, 2.5, 60.0),
    )
    save_probe_calibration(tmp_path, cal)
    assert load_probe_calibration(tmp_path) == cal


def test_bad_probe_toml_names_file_key_and_value(tmp_path):
    (tmp_path / "probe.toml").write_text('mvc_cmh2o = "strong"\n')
    with pytest.raises(ConfigError) as err:
        load_probe_calibration(tmp_path)
    assert "probe.toml" in str(err.value) and "mvc_cmh2o" in str(err.value)
    assert "'strong'" in str(err.value)


@pytest.mark.parametrize(("chip", "tolerance"), [("MCP3008", 0.12), ("MCP3208", 0.03)])
@pytest.mark.parametrize("pressure", [0.0, 7.5, 35.1, 60.6, 90.0])
def test_known_pressure_comes_back_in_cmh2o_through_both_chips(chip, tolerance, pressure):
    probe, *_, clock = make(lambda t: pressure, chip=chip, oversample=1, noise_v=0.0)
    probe.expect_inserted(False)
    _, values = run(probe, clock, 0.2)
    # Without noise the only error is quantisation: half an LSB either side of the code's centre.
    assert np.all(np.abs(values - pressure) <= tolerance)
    probe.close()


def test_oversampling_lowers_noise():
    spreads = {}
    for n in (1, 16):
        probe, *_, clock = make(lambda t: REST, chip="MCP3208", oversample=n, noise_v=0.01)
        _, values = run(probe, clock, 1.0)
        spreads[n] = values.std()
        probe.close()
    assert spreads[16] < spreads[1] / 2.5  # √16 = 4 in theory


def test_atmosphere_zero_is_subtracted():
    probe, *_, clock = make(lambda t: REST, chip="MCP3208", noise_v=0.0)
    probe.set_atmosphere_zero(2.0)
    _, values = run(probe, clock, 0.2)
    assert np.median(values) == pytest.approx(REST - 2.0, abs=0.05)
    probe.close()


def test_healthy_inserted_probe_stays_ok():
    probe, *_, clock = make(breathing_rest)
    run(probe, clock, 20.0)
    assert probe.status is ProbeStatus.OK
    assert probe.status_log == []
    probe.close()


def fault_detected_within(probe, clock, inject, expected, healthy_s=3.0):
    run(probe, clock, healthy_s)
    assert probe.status is ProbeStatus.OK
    t_fault = clock.now()
    inject()
    while clock.now() < t_fault + 1.0:
        run(probe, clock, 0.05)
        if probe.status is expected:
            break
    assert probe.status is expected
    t_seen, status = probe.status_log[-1]
    assert status is expected and t_seen - t_fault <= 1.0
    return t_seen - t_fault


def test_unplugged_sensor_reads_disconnected_within_1_s():
    state = {"p": breathing_rest}
    probe, sim, front, clock = make(lambda t: state["p"](t))
    # The sensor's output wire pulled off: the ADC input sits at 0 V.
    fault_detected_within(
        probe, clock, lambda: setattr(sim, "voltage", lambda ch: 0.0), ProbeStatus.DISCONNECTED
    )
    probe.close()


def test_absent_adc_board_reads_disconnected_within_1_s():
    probe, sim, front, clock = make(breathing_rest)

    def unplug():
        sim.connected = False
        sim.float_level = 1  # MISO pulled up: every code reads full scale

    fault_detected_within(probe, clock, unplug, ProbeStatus.DISCONNECTED)
    probe.close()


def test_stuck_reading_reads_disconnected_within_1_s():
    probe, sim, front, clock = make(breathing_rest)
    fault_detected_within(
        probe, clock, lambda: setattr(sim, "voltage", lambda ch: 1.2345), ProbeStatus.DISCONNECTED
    )
    probe.close()


def test_pressure_beyond_full_scale_reads_saturated_within_1_s():
    state = {"p": breathing_rest}
    probe, sim, front, clock = make(lambda t: state["p"](t))
    fault_detected_within(
        probe, clock, lambda: state.update(p=lambda t: 130.0), ProbeStatus.SATURATED
    )
    probe.close()


def test_probe_left_out_reads_not_inserted_within_1_s_and_is_fine_before_insertion():
    state = {"p": breathing_rest}
    probe, sim, front, clock = make(lambda t: state["p"](t))
    fault_detected_within(
        probe, clock, lambda: state.update(p=lambda t: 0.0), ProbeStatus.NOT_INSERTED
    )
    probe.expect_inserted(False)  # during the atmosphere zero an empty probe is expected
    run(probe, clock, 1.0)
    assert probe.status is ProbeStatus.OK
    probe.close()


def test_resting_floor_that_drops_reads_drifting_within_1_s():
    state = {"offset": 0.0}
    probe, sim, front, clock = make(lambda t: breathing_rest(t) + state["offset"])
    probe.set_rest(REST)
    fault_detected_within(probe, clock, lambda: state.update(offset=-14.0), ProbeStatus.DRIFTING)
    probe.close()


def test_rest_floor_that_creeps_up_reads_drifting_but_contractions_do_not():
    state = {"slope": 0.0, "t0": 0.0}

    def pressure(t):
        squeeze = 35.0 if (t % 10.0) < 5.0 else 0.0  # 5 s holds, 5 s rests
        creep = state["slope"] * max(0.0, t - state["t0"])
        return breathing_rest(t) + squeeze + creep

    probe, sim, front, clock = make(pressure)
    probe.set_rest(REST)
    run(probe, clock, 40.0)
    assert probe.status is ProbeStatus.OK  # squeezes are not drift
    state.update(slope=1.0, t0=clock.now())  # 1 cmH2O per second
    run(probe, clock, 30.0)
    assert probe.status is ProbeStatus.DRIFTING
    probe.close()


def test_abdominal_channel_is_read_alongside_the_probe():
    config = SensorConfig(
        source="adc", chip="MCP3208", sample_rate_hz=100.0, oversample=1, abdominal_channel=1
    )
    clock = SimClock()
    probe, *_ = simulated_adc_probe(
        lambda t: REST, config, clock, abdominal_at=lambda t: 12.0, noise_v=0.0
    )
    clock.advance(0.5)
    times, values = probe.read_until(clock.now())
    abd_times, abd = probe.abdominal
    assert np.array_equal(times, abd_times)
    assert np.median(values) == pytest.approx(REST, abs=0.05)
    assert np.median(abd) == pytest.approx(12.0, abs=0.05)
    probe.close()


def test_abdominal_channel_equal_to_probe_channel_is_refused():
    config = dataclasses.replace(SensorConfig(), abdominal_channel=0)
    with pytest.raises(ConfigError, match="abdominal_channel"):
        simulated_adc_probe(lambda t: REST, config, SimClock())


def test_the_live_tone_hears_each_sample_as_the_sampler_takes_it_with_the_zero_applied():
    from appliance.sensor.live import LivePressure

    probe, _sim, _front, clock = make(lambda t: REST + (15.0 if t >= 1.0 else 0.0), oversample=4)
    probe.set_atmosphere_zero(2.0)
    slot = LivePressure(probe.sample_rate_hz)
    assert probe.publish_live(slot)
    probe.sampler.acquire_until(0.0)  # the sampler's schedule starts at 0
    clock.advance(0.995)
    probe.sampler.acquire_until(clock.now())  # taken, not yet read by the control loop
    assert slot.count == 100
    assert slot.value == pytest.approx(REST - 2.0, abs=0.5)
    clock.advance(0.05)
    probe.sampler.acquire_until(clock.now())
    assert slot.value is not None and slot.value > REST - 2.0 + 7.5  # past halfway within a few samples
    times, values = probe.read_until(clock.now())  # the coach still gets every sample
    assert len(times) == 105 and values[-1] == pytest.approx(REST + 15.0 - 2.0, abs=0.5)
    probe.close()


def test_status_from_running_counts_is_what_the_whole_window_says():
    """The monitor keeps counts over its window instead of arrays; on every read it must
    say what the window's samples, taken whole, say (rails, stuck, saturated, not inserted)."""
    from appliance.sensor.probe import Mpx5010Transfer, ProbeMonitor, counts_to_volts

    transfer = Mpx5010Transfer()
    monitor = ProbeMonitor(transfer, 3.3, 10, rest_reference_cmh2o=None)
    rail_low, rail_high, saturation = monitor._rail_low_v, monitor._rail_high_v, monitor._saturation_cmh2o
    lim = monitor.limits
    rng = np.random.default_rng(7)
    window: list[tuple[float, float, float, float]] = []
    seen = set()
    t = 0.0
    for kind in ["ok", "low", "ok", "stuck", "sat", "out", "high", "ok", "sat", "out"] * 2:
        level = {"sat": 104.0, "out": 1.0}.get(kind, 20.0)
        for _ in range(int(rng.integers(60, 200))):
            n = int(rng.integers(0, 4))
            times = t + 0.005 * np.arange(1, n + 1)
            t = float(times[-1]) if n else t
            counts = np.floor(transfer.volts(level + rng.normal(0.0, 0.6, n)) / 3.3 * 1024)
            if kind in ("low", "high", "stuck"):
                counts = np.full(n, {"low": 0.0, "high": 1023.0, "stuck": 480.0}[kind])
            volts = counts_to_volts(counts, 3.3, 10)
            cmh2o = transfer.cmh2o(volts)
            before = monitor.status
            status = monitor.update(times, counts, volts, cmh2o)
            window += list(zip(times, counts, volts, cmh2o, strict=True))
            window = [s for s in window if s[0] > t - lim.window_s]
            if not n or window[-1][0] - window[0][0] < 0.8 * lim.window_s:
                assert status is before
                continue
            _, c, v, p = (np.array(x) for x in zip(*window, strict=True))
            if np.all(v <= rail_low) or np.all(v >= rail_high) or np.ptp(c) <= lim.stuck_ptp_counts:
                expected = ProbeStatus.DISCONNECTED
            elif np.median(p) >= saturation:
                expected = ProbeStatus.SATURATED
            elif np.all(p < lim.insert_min_cmh2o):
                expected = ProbeStatus.NOT_INSERTED if np.median(p) > -lim.drift_limit_cmh2o else ProbeStatus.DRIFTING
            else:
                expected = ProbeStatus.OK
            assert status is expected, f"at {t:.3f} s"
            seen.add(status)
    assert seen == set(ProbeStatus) - {ProbeStatus.DRIFTING}  # the floor's drift is tested above
