"""A bit-level simulator of the MCP3008 (10-bit) and MCP3208 (12-bit) ADCs for gpiozero's mocks.

gpiozero ships `MockSPIDevice` but no MCP3xxx; this one answers on the wire as the chip does
(datasheet DS21295 / DS21298 §5, SPI mode 0): it waits for the start bit, reads SGL/DIFF and
D2..D0, samples during the following clock, then shifts out a null bit, the result MSB first,
and, if the master keeps clocking, the result again LSB first followed by zeros. The analog
input is a function of the channel, so a simulated pelvic floor (or a test) can drive it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockSPIDevice

log = logging.getLogger(__name__)

# Hardware SPI pins on every 40-pin Pi (BCM numbering): port -> (clock, mosi, miso, selects).
SPI_PINS: dict[int, tuple[int, int, int, tuple[int, ...]]] = {
    0: (11, 10, 9, (8, 7)),
    1: (21, 20, 19, (18, 17, 16)),
}

VoltageFunction = Callable[[int], float]
"""Volts on one input channel at the moment the chip samples it."""


@dataclass(frozen=True)
class ChipModel:
    name: str
    bits: int

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1


CHIPS = {"MCP3008": ChipModel("MCP3008", 10), "MCP3208": ChipModel("MCP3208", 12)}


def code_for_voltage(volts: float, vref: float, bits: int) -> int:
    """The datasheet's transfer: code = floor(2^bits · Vin / Vref), clipped to the code range."""
    if not math.isfinite(volts):
        volts = 0.0
    code = math.floor((1 << bits) * volts / vref)
    return max(0, min((1 << bits) - 1, code))


class McpSimulator(MockSPIDevice):
    """The slave side of an MCP3008/MCP3208 on a mock SPI bus.

    `voltage(channel)` gives the input voltage (0..7) when the chip samples. In
    differential mode the chip converts IN+ − IN− of the channel pair and reads
    0 when IN+ is below IN−, as the real part does. `connected=False` leaves MISO
    floating at `float_level` (a pull-up reads as all ones, an unplugged board as zeros).
    """

    def __init__(
        self,
        chip: str,
        voltage: VoltageFunction,
        vref: float = 3.3,
        port: int = 0,
        device: int = 0,
        pin_factory: MockFactory | None = None,
    ) -> None:
        if chip not in CHIPS:
            raise ValueError(f"unknown ADC chip {chip!r} (known: {', '.join(CHIPS)})")
        if port not in SPI_PINS or device >= len(SPI_PINS[port][3]):
            raise ValueError(f"no hardware SPI port {port} device {device}")
        clock, mosi, miso, selects = SPI_PINS[port]
        super().__init__(
            clock, mosi, miso, selects[device], pin_factory=pin_factory or Device.pin_factory
        )
        self.model = CHIPS[chip]
        self.voltage = voltage
        self.vref = float(vref)
        self.connected = True
        self.float_level = 0
        self.conversions = 0
        self.last_channel: int | None = None
        self._started_at: int | None = None

    def on_start(self) -> None:
        super().on_start()
        self._started_at = None
        # Before the start bit DOUT is high-impedance; model it as the floating level.
        self._idle_bit()

    def _idle_bit(self) -> None:
        self.tx_buf = [self.float_level]

    def on_bit(self) -> None:
        if not self.connected:
            self.tx_buf = [self.float_level]
            return
        if self._started_at is None:
            # The first clock with CS low and DIN high is the start bit; leading zeros are ignored.
            if self.rx_buf[-1]:
                self._started_at = len(self.rx_buf)
            self._idle_bit()
            return
        after_start = len(self.rx_buf) - self._started_at
        if after_start < 4:
            # SGL/DIFF, D2, D1 still arriving: DOUT stays high-impedance.
            self._idle_bit()
            return
        if after_start == 4:
            # D0 has arrived: the chip samples during the next clock, then shifts out a null
            # bit and the result MSB first, then (if clocked on) LSB first, then zeros.
            bits = self.rx_buf[self._started_at : self._started_at + 4]
            single = bool(bits[0])
            channel = bits[1] << 2 | bits[2] << 1 | bits[3]
            code = self._convert(single, channel)
            n = self.model.bits
            msb_first = [(code >> i) & 1 for i in range(n - 1, -1, -1)]
            lsb_tail = [(code >> i) & 1 for i in range(1, n)]
            self.tx_buf = [self.float_level, 0, *msb_first, *lsb_tail]

    def _convert(self, single: bool, channel: int) -> int:
        self.conversions += 1
        self.last_channel = channel
        if single:
            volts = float(self.voltage(channel))
        else:
            # Differential pairs: 0/1, 2/3, 4/5, 6/7; the low bit of the channel swaps IN+ and IN−.
            pair = channel & 0b110
            plus, minus = (pair, pair + 1) if not channel & 1 else (pair + 1, pair)
            volts = float(self.voltage(plus)) - float(self.voltage(minus))
        return code_for_voltage(volts, self.vref, self.model.bits)


# --- driving the simulated chip from simulated pressure ------------------------------------


class ResampledPressure:
    """Pressure at any instant from a `PressureSource` that delivers samples in chunks.

    Pulls from the source as time moves on and interpolates linearly between its samples,
    so a 100 Hz simulated pelvic floor can feed a 200 Hz ADC. Times must not go backwards.
    """

    def __init__(self, source) -> None:
        self.source = source
        self._t: list[float] = []
        self._p: list[float] = []

    def __call__(self, t: float) -> float:
        if not self._t or t > self._t[-1]:
            times, values = self.source.read_until(t)
            self._t.extend(float(x) for x in times)
            self._p.extend(float(x) for x in values)
            # Only the last couple of samples are ever needed again.
            if len(self._t) > 64:
                del self._t[:-8], self._p[:-8]
        if not self._t:
            return 0.0
        if t >= self._t[-1] or len(self._t) == 1:
            return self._p[-1]
        return float(np.interp(t, self._t, self._p))


class AnalogFrontEnd:
    """The sensor and divider as the chip's pins see them: pressure (cmH2O) → volts plus noise.

    `pressure_at(t)` drives the probe channel and, if given, `abdominal_at(t)` the abdominal
    channel. The ADC sampler calls `set_time` before each conversion (simulated time).
    `noise_v` is the sensor's white output noise at the ADC pin (MPX5010: a few mV).
    """

    def __init__(
        self,
        pressure_at: Callable[[float], float],
        transfer,
        probe_channel: int = 0,
        abdominal_at: Callable[[float], float] | None = None,
        abdominal_channel: int | None = None,
        noise_v: float = 0.003,
        seed: int = 0,
    ) -> None:
        self.pressure_at = pressure_at
        self.transfer = transfer
        self.probe_channel = probe_channel
        self.abdominal_at = abdominal_at
        self.abdominal_channel = abdominal_channel
        self.noise_v = noise_v
        self.rng = np.random.default_rng(seed)
        self.t = 0.0

    def set_time(self, t: float) -> None:
        self.t = t

    def voltage(self, channel: int) -> float:
        if channel == self.probe_channel:
            p = self.pressure_at(self.t)
        elif channel == self.abdominal_channel and self.abdominal_at is not None:
            p = self.abdominal_at(self.t)
        else:
            return 0.0
        return float(self.transfer.volts(p)) + self.rng.normal(0.0, self.noise_v)


def simulated_adc_probe(
    pressure_at: Callable[[float], float],
    config,
    clock,
    abdominal_at: Callable[[float], float] | None = None,
    noise_v: float = 0.003,
    seed: int = 0,
    state_dir=None,
):
    """A `Probe` whose numbers come through the real code path: front end → chip simulator →
    gpiozero MCP3xxx (bit-banged on a MockFactory) → AdcSampler → Probe.

    Returns `(probe, simulator, front_end)` so tests can unplug or disturb them.
    """
    from appliance.sensor.probe import load_probe_calibration, open_probe, transfer_from_config

    transfer = transfer_from_config(config, load_probe_calibration(state_dir))
    factory = MockFactory()
    if Device.pin_factory is None:
        # gpiozero 2.0.1's SPISoftwareBus builds its base Device without the pin_factory it
        # was given, which makes gpiozero hunt for a real GPIO library; off a Pi none loads.
        Device.pin_factory = MockFactory()
    front = AnalogFrontEnd(
        pressure_at, transfer, config.channel, abdominal_at, config.abdominal_channel, noise_v, seed
    )
    sim = McpSimulator(
        config.chip, front.voltage, config.vref, config.spi_port, config.spi_device, factory
    )
    probe = open_probe(
        config,
        clock,
        state_dir,
        pin_factory=factory,
        stepped=True,
        before_conversion=front.set_time,
    )
    inner_close = probe._on_close

    def close() -> None:
        if inner_close is not None:
            inner_close()
        sim.close()
        factory.close()

    probe._on_close = close
    return probe, sim, front
