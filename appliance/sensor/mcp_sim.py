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
