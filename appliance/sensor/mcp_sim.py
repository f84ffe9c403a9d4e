"""Simulators of the MCP3008 (10-bit) and MCP3208 (12-bit) ADCs for gpiozero's mocks.

gpiozero ships `MockSPIDevice` but no MCP3xxx; these answer on the wire as the chip does
(datasheet DS21295 / DS21298 §5, SPI mode 0): the chip waits for the start bit, reads
SGL/DIFF and D2..D0, samples during the following clock, then shifts out a null bit, the
result MSB first, and, if the master keeps clocking, the result again LSB first followed by
zeros. The analog input is a function of the channel, so a simulated pelvic floor (or a
test) can drive it.

Two ways onto the bus, one chip: `McpSimulator` is clocked bit by bit through gpiozero's
mock pins and software SPI (the tests that check the wire); `McpTransferSimulator` is the
SPI interface gpiozero's `SPIDevice` talks to on an `McpSpiFactory`, and answers each
`transfer` whole with the same bits (`McpChip.answer`), some fifty times faster, for
`appliance simulate --via-adc`.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gpiozero import Device
from gpiozero.devices import SharedMixin
from gpiozero.pins import SPI
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


class McpChip:
    """What an MCP3008/MCP3208 does with its inputs, whichever way it is clocked.

    `voltage(channel)` gives the input voltage (0..7) when the chip samples. In
    differential mode the chip converts IN+ − IN− of the channel pair and reads
    0 when IN+ is below IN−, as the real part does. `connected=False` leaves MISO
    floating at `float_level` (a pull-up reads as all ones, an unplugged board as zeros).
    """

    model: ChipModel
    voltage: VoltageFunction
    vref: float
    connected: bool
    float_level: int
    conversions: int
    last_channel: int | None

    def _chip_init(self, chip: str, voltage: VoltageFunction, vref: float) -> None:
        self.model = CHIPS[chip]
        self.voltage = voltage
        self.vref = float(vref)
        self.connected = True
        self.float_level = 0
        self.conversions = 0
        self.last_channel = None

    def answer(self, mosi: str) -> str:
        """The MISO bits for the MOSI bits clocked in while the chip is selected, all at once
        (strings of "0" and "1", first clocked first): the bits `McpSimulator.on_bit` drives
        one clock at a time (SPI mode 0)."""
        level = "1" if self.float_level else "0"
        command = _COMMANDS.get(mosi)
        if command is None:
            start = mosi.find("1")
            sample = start + 4  # D0 arrives here; the chip samples during the next clock
            if len(_COMMANDS) > 4096:  # a test's random patterns; a device sends a few
                _COMMANDS.clear()
            if start < 0 or sample >= len(mosi):
                command = _COMMANDS[mosi] = (-1, False, 0)
            else:
                command = _COMMANDS[mosi] = (sample, mosi[start + 1] == "1", int(mosi[start + 2 : sample + 1], 2))
        sample, single, channel = command
        if not self.connected or sample < 0:
            return level * len(mosi)
        code = self._convert(single, channel)
        key = (code, self.model.bits, level, sample, len(mosi))
        miso = _ANSWERS.get(key)
        if miso is None:
            msb_first = format(code, f"0{self.model.bits}b")
            # a null bit, the result MSB first, then LSB first (its LSB is not sent twice), then zeros
            tx = level + "0" + msb_first + msb_first[-2::-1]
            tail = len(mosi) - sample - 1
            miso = (level * (sample + 1) + tx[:tail]).ljust(len(mosi), "0")
            if len(_ANSWERS) > 65536:
                _ANSWERS.clear()
            _ANSWERS[key] = miso
        return miso

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


_COMMANDS: dict[str, tuple[int, bool, int]] = {}  # MOSI bits -> (bit D0 is on, SGL, channel)
_ANSWERS: dict[tuple, str] = {}  # (code, bits, float level, D0's bit, length) -> the MISO bits


def _check_chip(chip: str, port: int, device: int) -> tuple[int, int, int, int]:
    if chip not in CHIPS:
        raise ValueError(f"unknown ADC chip {chip!r} (known: {', '.join(CHIPS)})")
    if port not in SPI_PINS or device >= len(SPI_PINS[port][3]):
        raise ValueError(f"no hardware SPI port {port} device {device}")
    clock, mosi, miso, selects = SPI_PINS[port]
    return clock, mosi, miso, selects[device]


class McpSimulator(McpChip, MockSPIDevice):
    """The slave side of an MCP3008/MCP3208 on a mock SPI bus, clocked bit by bit."""

    def __init__(
        self,
        chip: str,
        voltage: VoltageFunction,
        vref: float = 3.3,
        port: int = 0,
        device: int = 0,
        pin_factory: MockFactory | None = None,
    ) -> None:
        clock, mosi, miso, select = _check_chip(chip, port, device)
        MockSPIDevice.__init__(self, clock, mosi, miso, select, pin_factory=pin_factory or Device.pin_factory)
        self._chip_init(chip, voltage, vref)
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


class McpSpiFactory(MockFactory):
    """gpiozero's mock pins, whose SPI interfaces are simulated MCP3xxx chips answering whole
    transfers (`McpTransferSimulator`); gpiozero's MCP3008/MCP3208 code above is unchanged."""

    def __init__(self, revision: str | None = None, pin_class: Any = None) -> None:
        super().__init__(revision, pin_class)
        self.chips: dict[str, McpTransferSimulator] = {}  # by chip-select pin, "GPIO8"

    def _get_spi_class(self, shared: bool, hardware: bool) -> type:
        return _McpSpiShared if shared else _McpSpi


class McpTransferSimulator(McpChip):
    """An MCP3008/MCP3208 on an `McpSpiFactory`'s SPI port/device: each `transfer` of
    gpiozero's SPI interface is answered whole, with the bits `McpSimulator` would clock out."""

    def __init__(
        self,
        chip: str,
        voltage: VoltageFunction,
        vref: float = 3.3,
        port: int = 0,
        device: int = 0,
        pin_factory: McpSpiFactory | None = None,
    ) -> None:
        *_, select = _check_chip(chip, port, device)
        factory = pin_factory or Device.pin_factory
        if not isinstance(factory, McpSpiFactory):
            raise TypeError("McpTransferSimulator answers on an McpSpiFactory's SPI interfaces")
        self._chip_init(chip, voltage, vref)
        self.factory = factory
        self.select = _gpio_name(select)
        factory.chips[self.select] = self

    def close(self) -> None:
        if self.factory.chips.get(self.select) is self:
            del self.factory.chips[self.select]


_WIRE: dict[tuple, str] = {}  # (bits per word, LSB first, *words) -> the MOSI bits
_WORDS: dict[tuple, list[int]] = {}  # (MISO bits, bits per word, LSB first) -> the words read


def _gpio_name(pin: int | str) -> str:
    """gpiozero names the chip-select pin "GPIO8"; the SPI tables here number it 8."""
    return pin if isinstance(pin, str) and pin.startswith("GPIO") else f"GPIO{pin}"


class _McpSpi(SPI):
    """gpiozero's SPI interface for one chip select on an `McpSpiFactory` (mode 0 only,
    as the MCP3xxx and gpiozero's MCP3xxx code use it). Nothing attached reads as zeros."""

    def __init__(self, clock_pin: int | str, mosi_pin: int | str, miso_pin: int | str, select_pin: int | str, *,
                 pin_factory: McpSpiFactory) -> None:
        self._open = False
        super().__init__(pin_factory=pin_factory)
        self._select_pin = _gpio_name(select_pin)
        self._clock_mode = 0
        self._lsb_first = False
        self._select_high = False
        self._bits_per_word = 8
        self._open = True

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        self._open = False
        super().close()

    def transfer(self, data: list[int]) -> list[int]:
        self._check_open()
        if self._clock_mode != 0:
            raise ValueError(f"the simulated MCP3xxx answers in SPI mode 0, not {self._clock_mode}")
        width, lsb = self._bits_per_word, self._lsb_first
        key = (width, lsb, *data)
        mosi = _WIRE.get(key)
        if mosi is None:
            # each word's bits as clocked out: high bit first, or low bit first with lsb_first
            mosi = "".join(format(word, f"0{width}b")[:: -1 if lsb else 1] for word in data)
            if len(mosi) != width * len(data):
                raise ValueError(f"SPI words wider than {width} bits: {data}")
            if len(_WIRE) > 4096:
                _WIRE.clear()
            _WIRE[key] = mosi
        chip = self.pin_factory.chips.get(self._select_pin)
        miso = chip.answer(mosi) if chip is not None else "0" * len(mosi)
        words = _WORDS.get((miso, width, lsb))
        if words is None:
            words = [int(miso[i : i + width][:: -1 if lsb else 1], 2) for i in range(0, len(miso), width)]
            if len(_WORDS) > 65536:
                _WORDS.clear()
            _WORDS[(miso, width, lsb)] = words
        return list(words)

    def _get_clock_mode(self) -> int:
        return self._clock_mode

    def _set_clock_mode(self, value: int) -> None:
        self._clock_mode = int(value)

    def _get_lsb_first(self) -> bool:
        return self._lsb_first

    def _set_lsb_first(self, value: bool) -> None:
        self._lsb_first = bool(value)

    def _get_select_high(self) -> bool:
        return self._select_high

    def _set_select_high(self, value: bool) -> None:
        self._select_high = bool(value)

    def _get_bits_per_word(self) -> int:
        return self._bits_per_word

    def _set_bits_per_word(self, value: int) -> None:
        if value < 1:
            raise ValueError("bits_per_word must be positive")
        self._bits_per_word = int(value)


class _McpSpiShared(SharedMixin, _McpSpi):
    @classmethod
    def _shared_key(cls, clock_pin: int | str, mosi_pin: int | str, miso_pin: int | str,
                    select_pin: int | str, pin_factory: Any) -> tuple[int | str, int | str]:
        return (clock_pin, select_pin)


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
        xs, ps = self._t, self._p
        if t >= xs[-1] or len(xs) == 1:
            return ps[-1]
        # np.interp's arithmetic for one point, without building arrays (800 calls a second)
        j = bisect.bisect_right(xs, t) - 1
        if j < 0:
            return ps[0]
        if t == xs[j]:
            return ps[j]
        slope = (ps[j + 1] - ps[j]) / (xs[j + 1] - xs[j])
        return slope * (t - xs[j]) + ps[j]


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
        self._volts: dict[int, float] = {}  # each channel's noiseless volts at `t`
        self._noise: list[float] = []  # the rng's next draws, the same numbers drawn one by one

    def set_time(self, t: float) -> None:
        if t != self.t:
            self._volts.clear()
        self.t = t

    def voltage(self, channel: int) -> float:
        volts = self._volts.get(channel)
        if volts is None:
            if channel == self.probe_channel:
                p = self.pressure_at(self.t)
            elif channel == self.abdominal_channel and self.abdominal_at is not None:
                p = self.abdominal_at(self.t)
            else:
                return 0.0
            volts = self._volts[channel] = float(self.transfer.volts(p))
        if not self._noise:
            self._noise = self.rng.normal(0.0, self.noise_v, 1024).tolist()[::-1]
        return volts + self._noise.pop()


def simulated_adc_probe(
    pressure_at: Callable[[float], float],
    config,
    clock,
    abdominal_at: Callable[[float], float] | None = None,
    noise_v: float = 0.003,
    seed: int = 0,
    state_dir=None,
    bit_level: bool = False,
):
    """A `Probe` whose numbers come through the real code path: front end → chip simulator →
    gpiozero MCP3xxx → AdcSampler → Probe.

    The chip answers whole SPI transfers (`McpTransferSimulator`); with `bit_level` it is
    clocked bit by bit through gpiozero's software SPI on mock pins (`McpSimulator`): the
    same words, some fifty times slower. Returns `(probe, simulator, front_end)` so tests
    can unplug or disturb them.
    """
    from appliance.sensor.probe import load_probe_calibration, open_probe, transfer_from_config

    transfer = transfer_from_config(config, load_probe_calibration(state_dir))
    factory = MockFactory() if bit_level else McpSpiFactory()
    if Device.pin_factory is None:
        # gpiozero 2.0.1's SPISoftwareBus builds its base Device without the pin_factory it
        # was given, which makes gpiozero hunt for a real GPIO library; off a Pi none loads.
        Device.pin_factory = MockFactory()
    front = AnalogFrontEnd(
        pressure_at, transfer, config.channel, abdominal_at, config.abdominal_channel, noise_v, seed
    )
    chip = McpSimulator if bit_level else McpTransferSimulator
    sim = chip(config.chip, front.voltage, config.vref, config.spi_port, config.spi_device, factory)
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
