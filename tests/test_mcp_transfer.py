"""The chip simulator at transfer level answers every SPI transfer with the words the
bit-level simulator clocks out on gpiozero's mock pins, for the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
from gpiozero import MCP3008, MCP3208, Device
from gpiozero.pins.mock import MockFactory

from appliance.sensor.mcp_sim import McpSimulator, McpSpiFactory, McpTransferSimulator, code_for_voltage


@pytest.fixture
def default_factory():
    # gpiozero's software SPI bus looks for Device.pin_factory (see simulated_adc_probe)
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield
    Device.pin_factory.reset()
    Device.pin_factory = previous


def _both(chip, voltage, device=0):
    wire, whole = MockFactory(), McpSpiFactory()
    bits = McpSimulator(chip, voltage, vref=3.3, device=device, pin_factory=wire)
    words = McpTransferSimulator(chip, voltage, vref=3.3, device=device, pin_factory=whole)
    return (bits, wire.spi(port=0, device=device)), (words, whole.spi(port=0, device=device))


@pytest.mark.parametrize("chip", ["MCP3008", "MCP3208"])
def test_every_transfer_reads_the_same_words_as_on_the_wire(default_factory, chip):
    rng = np.random.default_rng(11)
    inputs = [float(v) for v in rng.uniform(-0.3, 3.6, 8)]
    (bit_sim, bit_spi), (word_sim, word_spi) = _both(chip, inputs.__getitem__)
    cmd = MCP3008 if chip == "MCP3008" else MCP3208
    patterns = []
    for ch in range(8):  # what gpiozero's MCP3xxx sends, single-ended and differential
        for diff in (False, True):
            adc = cmd(channel=ch, differential=diff, max_voltage=3.3, pin_factory=MockFactory())
            patterns.append(adc._send())
            adc.close()
    # and anything else a master might clock: no start bit, late start bits, short and long
    patterns += [[0], [0, 0, 0], [1], [0, 1], [0, 0x80], [0xFF, 0xFF, 0xFF, 0xFF]]
    patterns += [[int(w) for w in rng.integers(0, 256, rng.integers(1, 5))] for _ in range(60)]
    for connected, level in ((True, 0), (True, 1), (False, 0), (False, 1)):
        for sim in (bit_sim, word_sim):
            sim.connected, sim.float_level = connected, level
        for words in patterns:
            assert word_spi.transfer(words) == bit_spi.transfer(words), (connected, level, words)
            assert (word_sim.conversions, word_sim.last_channel) == (bit_sim.conversions, bit_sim.last_channel)
    assert bit_sim.conversions > 100


@pytest.mark.parametrize("chip,cls,bits", [("MCP3008", MCP3008, 10), ("MCP3208", MCP3208, 12)])
def test_gpiozero_reads_the_datasheet_code_through_whole_transfers(chip, cls, bits):
    factory = McpSpiFactory()
    volts = {ch: 0.4 * ch for ch in range(8)}
    sim = McpTransferSimulator(chip, volts.__getitem__, vref=3.3, device=1, pin_factory=factory)
    for ch in range(8):
        adc = cls(channel=ch, max_voltage=3.3, device=1, pin_factory=factory)
        assert adc.raw_value == code_for_voltage(volts[ch], 3.3, bits)
        adc.close()
    other = cls(channel=0, max_voltage=3.3, device=0, pin_factory=factory)
    assert other.raw_value == 0  # nothing on the other chip select
    other.close()
    sim.close()
    assert factory.chips == {}
