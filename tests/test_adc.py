"""The ADC sampler keeps its schedule, averages its bursts and says when the chip fails."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from appliance.clock import RealClock, SimClock
from appliance.config import SensorConfig
from appliance.sensor.adc import AdcSampler, open_adc
from appliance.sensor.base import ProbeStatus
from appliance.sensor.mcp_sim import McpSimulator, code_for_voltage
from appliance.sensor.probe import Mpx5010Transfer, Probe


def counter(values):
    it = itertools.cycle(values)
    return lambda: next(it)


def test_stepped_sampler_stamps_every_period_and_averages_each_burst():
    clock = SimClock()
    sampler = AdcSampler([counter([100, 104]), counter([7])], clock, rate_hz=200.0, oversample=4)
    clock.advance(1.0)
    sampler.acquire_until(clock.now())  # first call only sets the schedule's origin
    clock.advance(0.5)
    sampler.acquire_until(clock.now())
    times, counts = sampler.take_until(clock.now())
    assert len(times) == 101  # 1.0 s .. 1.5 s inclusive at 5 ms
    assert np.allclose(np.diff(times), 0.005)
    assert np.allclose(counts[:, 0], 102.0)  # 100 and 104 alternate within each burst of 4
    assert np.allclose(counts[:, 1], 7.0)


def test_take_until_leaves_later_samples_for_the_next_read():
    clock = SimClock()
    sampler = AdcSampler([counter([1])], clock, rate_hz=100.0, oversample=1)
    sampler.acquire_until(0.0)
    sampler.acquire_until(1.0)
    first, _ = sampler.take_until(0.5)
    rest, _ = sampler.take_until(1.0)
    assert first.max() <= 0.5 < rest.min()
    assert len(first) + len(rest) == 101


def test_threaded_sampler_keeps_200_hz_against_the_real_clock():
    sampler = AdcSampler([counter([512])], RealClock(), rate_hz=200.0, oversample=4)
    sampler.start()
    try:
        import time

        time.sleep(1.0)
    finally:
        sampler.stop()
    stats = sampler.stats()
    assert stats.achieved_rate_hz == pytest.approx(200.0, rel=0.05)
    assert stats.samples >= 180
    assert stats.lateness_p99_ms < 5.0  # a 5 ms period: no sample later than one period


def test_a_failing_read_stops_the_thread_and_the_probe_reports_disconnected():
    def broken():
        raise OSError("SPI transfer failed")

    sampler = AdcSampler([broken], RealClock(), rate_hz=200.0)
    probe = Probe(sampler, Mpx5010Transfer(), vref=3.3, bits=10)
    sampler.start()
    sampler._thread.join(timeout=1.0)
    assert isinstance(sampler.error, OSError)
    assert probe.status is ProbeStatus.DISCONNECTED
    probe.close()


def test_open_adc_uses_the_configured_chip_channel_and_spi_device():
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        sim = McpSimulator("MCP3208", lambda ch: 0.5 * ch, vref=3.0, port=0, device=1)
        config = SensorConfig(chip="MCP3208", channel=5, vref=3.0, spi_port=0, spi_device=1)
        adc = open_adc(config)
        assert adc.bits == 12
        assert adc.raw_value == code_for_voltage(2.5, 3.0, 12)
        assert sim.last_channel == 5
        adc.close()
        sim.close()
    finally:
        factory.reset()
        Device.pin_factory = previous


def test_bad_sampling_parameters_are_refused():
    with pytest.raises(ValueError, match="oversample"):
        AdcSampler([counter([1])], SimClock(), rate_hz=200.0, oversample=0)


def test_whole_session_through_the_adc_gives_the_direct_paths_repetition_metrics():
    from appliance.simulation.session import simulate

    config = SensorConfig(source="adc", chip="MCP3008", sample_rate_hz=100.0, oversample=1)
    direct = simulate(seed=3, max_seconds=200.0)
    via = simulate(seed=3, max_seconds=200.0, via_adc=config)
    reps_direct = [e.data for e in direct.log.of("rep")]
    reps_via = [e.data for e in via.log.of("rep")]
    assert len(reps_direct) >= 5 and len(reps_via) == len(reps_direct)
    cal_d, cal_v = direct.log.of("calibration")[0].data, via.log.of("calibration")[0].data
    # One MCP3008 LSB is 0.11 cmH2O through the MPX5010 and divider; sensor noise adds a little.
    assert cal_v["rest_cmh2o"] == pytest.approx(cal_d["rest_cmh2o"], abs=0.5)
    assert cal_v["mvc_cmh2o"] == pytest.approx(cal_d["mvc_cmh2o"], abs=0.5)
    for d, v in zip(reps_direct, reps_via, strict=True):
        assert v["status"] == d["status"]
        assert v["peak_cmh2o"] == pytest.approx(d["peak_cmh2o"], abs=0.5)
        assert v["peak_pct"] == pytest.approx(d["peak_pct"], abs=2.0)
        assert v["time_to_peak_s"] == pytest.approx(d["time_to_peak_s"], abs=0.3)
        assert v["held_s"] == pytest.approx(d["held_s"], abs=0.5)
    assert via.session.sample_rate_hz == 100.0
