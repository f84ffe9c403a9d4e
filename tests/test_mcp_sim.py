"""The MCP3008/MCP3208 simulator answers gpiozero's real MCP3xxx code as the chips do."""

from __future__ import annotations

import math

import pytest
from gpiozero import MCP3008, MCP3208, Device
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sensor.mcp_sim import McpSimulator, code_for_voltage

CHIPS = {"MCP3008": (MCP3008, 10), "MCP3208": (MCP3208, 12)}


@pytest.fixture
def factory():
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = previous


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("volts", [0.0, 0.0031, 0.5, 1.0, 1.65, 2.9999, 3.2999, 3.3, 4.0, -0.2])
def test_known_voltage_gives_datasheet_code(factory, chip, volts):
    cls, bits = CHIPS[chip]
    sim = McpSimulator(chip, lambda ch: volts if ch == 3 else 1.0, vref=3.3)
    adc = cls(channel=3, max_voltage=3.3)
    expected = min((1 << bits) - 1, max(0, math.floor((1 << bits) * volts / 3.3)))
    assert adc.raw_value == expected
    assert sim.last_channel == 3
    adc.close()
    sim.close()


@pytest.mark.parametrize("chip", CHIPS)
def test_each_channel_is_read_from_its_own_input(factory, chip):
    cls, bits = CHIPS[chip]
    inputs = {ch: 0.3 + 0.35 * ch for ch in range(8)}
    sim = McpSimulator(chip, inputs.__getitem__, vref=3.3)
    for ch in range(8):
        adc = cls(channel=ch, max_voltage=3.3)
        assert adc.raw_value == code_for_voltage(inputs[ch], 3.3, bits)
        adc.close()
    assert sim.conversions == 8
    sim.close()


@pytest.mark.parametrize("chip", CHIPS)
def test_differential_pairs_read_in_plus_minus_in_minus_and_floor_at_zero(factory, chip):
    cls, bits = CHIPS[chip]
    inputs = {0: 2.0, 1: 0.5, 2: 1.0, 3: 1.2, 4: 0.0, 5: 0.0, 6: 0.0, 7: 0.0}
    sim = McpSimulator(chip, inputs.__getitem__, vref=3.3)
    pos = cls(channel=0, differential=True, max_voltage=3.3)  # CH0 − CH1
    neg = cls(channel=1, differential=True, max_voltage=3.3)  # CH1 − CH0
    pair = cls(channel=2, differential=True, max_voltage=3.3)  # CH2 − CH3 < 0
    assert pos.raw_value == code_for_voltage(1.5, 3.3, bits)
    assert neg.raw_value == 0
    assert pair.raw_value == 0
    for d in (pos, neg, pair):
        d.close()
    sim.close()


def test_mcp3008_keeps_clocking_out_lsb_first_then_zeros(factory):
    sim = McpSimulator("MCP3008", lambda ch: 2.0, vref=3.3)
    code = code_for_voltage(2.0, 3.3, 10)
    spi = factory.spi(port=0, device=0)
    # start bit, single-ended channel 0, then 4 bytes of clocks to read beyond B0.
    words = spi.transfer([0b00000001, 0b10000000, 0, 0, 0])
    bits = "".join(f"{w:08b}" for w in words)
    assert bits[13] == "0"  # the null bit
    assert int(bits[14:24], 2) == code  # B9..B0
    lsb_tail = bits[24:33]  # B1..B9
    assert lsb_tail == "".join(str((code >> i) & 1) for i in range(1, 10))
    assert set(bits[33:]) == {"0"}
    spi.close()
    sim.close()


def test_leading_zero_clocks_before_the_start_bit_are_ignored(factory):
    sim = McpSimulator("MCP3208", lambda ch: 1.234, vref=3.3)
    spi = factory.spi(port=0, device=0)
    words = spi.transfer([0, 0b00000110, 0, 0])  # a whole extra byte of zeros first
    assert ((words[2] & 0x0F) << 8 | words[3]) == code_for_voltage(1.234, 3.3, 12)
    spi.close()
    sim.close()


@pytest.mark.parametrize(("level", "expected"), [(0, 0), (1, 1023)])
def test_an_absent_chip_reads_as_its_floating_miso(factory, level, expected):
    sim = McpSimulator("MCP3008", lambda ch: 1.0, vref=3.3)
    sim.connected = False
    sim.float_level = level
    adc = MCP3008(channel=0)
    assert adc.raw_value == expected
    assert sim.conversions == 0
    adc.close()
    sim.close()


def test_second_spi_device_answers_only_when_selected(factory):
    a = McpSimulator("MCP3008", lambda ch: 1.0, vref=3.3, device=0)
    b = McpSimulator("MCP3208", lambda ch: 2.0, vref=3.3, device=1)
    adc_a = MCP3008(channel=0, device=0)
    adc_b = MCP3208(channel=0, device=1)
    assert adc_a.raw_value == code_for_voltage(1.0, 3.3, 10)
    assert adc_b.raw_value == code_for_voltage(2.0, 3.3, 12)
    assert (a.conversions, b.conversions) == (1, 1)
    for d in (adc_a, adc_b, a, b):
        d.close()


@settings(max_examples=60, deadline=None)
@given(volts=st.floats(0.0, 3.3, allow_nan=False), chip=st.sampled_from(sorted(CHIPS)))
def test_gpiozero_voltage_is_within_one_lsb_of_the_input(volts, chip):
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    try:
        cls, bits = CHIPS[chip]
        sim = McpSimulator(chip, lambda ch: volts, vref=3.3)
        adc = cls(channel=0, max_voltage=3.3)
        lsb = 3.3 / (1 << bits)
        assert abs(adc.raw_value * lsb - volts) <= lsb + 1e-9
        adc.close()
        sim.close()
    finally:
        Device.pin_factory.reset()
        Device.pin_factory = previous
