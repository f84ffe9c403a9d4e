"""Achieved sample rate and jitter of the ADC sampling thread (appliance.sensor.adc.AdcSampler).

In simulation the chip is the bit-level MCP3008/MCP3208 simulator on gpiozero's MockFactory,
so every conversion bit-bangs 24 clocks through gpiozero's software SPI: slower than spidev
on a Pi, so these figures are a floor. On a Pi with the probe attached, `--hardware` reads
the configured chip over spidev instead.
Usage: .venv/bin/python bench/adc_rate.py [SECONDS] [--hardware] [--config FILE]
"""

from __future__ import annotations

import argparse
import math
import time

from appliance.clock import RealClock
from appliance.config import SensorConfig, load_device_config
from appliance.sensor.adc import AdcSampler, open_adc


def measure(label: str, readers, seconds: float, rate_hz: float, oversample: int) -> None:
    sampler = AdcSampler(readers, RealClock(), rate_hz, oversample)
    cpu0 = time.process_time()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    cpu = (time.process_time() - cpu0) / seconds
    s = sampler.stats()
    print(
        f"{label:34s} target {s.target_rate_hz:5.0f} Hz  achieved {s.achieved_rate_hz:7.2f} Hz  "
        f"interval {s.interval_mean_ms:5.2f} ± {s.interval_sd_ms:4.2f} ms  "
        f"lateness mean {s.lateness_mean_ms:5.2f} p99 {s.lateness_p99_ms:5.2f} max {s.lateness_max_ms:6.2f} ms  "
        f"burst {s.conversion_mean_ms:5.2f} ms  overruns {s.overruns}  CPU {100 * cpu:4.1f} %"
    )


def simulated(chip: str, seconds: float, rate_hz: float, oversample: int) -> None:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from appliance.sensor.mcp_sim import McpSimulator

    factory = MockFactory()
    previous = Device.pin_factory
    Device.pin_factory = factory
    try:
        t0 = time.monotonic()
        sim = McpSimulator(chip, lambda ch: 1.0 + 0.3 * math.sin(time.monotonic() - t0), 3.3)
        adc = open_adc(SensorConfig(chip=chip), pin_factory=factory)
        measure(f"{chip} sim ×{oversample}", [lambda: adc.raw_value], seconds, rate_hz, oversample)
        adc.close()
        sim.close()
    finally:
        factory.reset()
        Device.pin_factory = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("seconds", nargs="?", type=float, default=10.0)
    parser.add_argument("--hardware", action="store_true", help="read the configured chip (on a Pi)")
    parser.add_argument("--config", default=None, help="device configuration TOML")
    args = parser.parse_args()
    cfg = load_device_config(args.config).sensor
    print(f"AdcSampler over {args.seconds:g} s per line (RealClock, own thread)")
    if args.hardware:
        adc = open_adc(cfg)
        measure(f"{cfg.chip} spidev ×{cfg.oversample}", [lambda: adc.raw_value], args.seconds,
                cfg.sample_rate_hz, cfg.oversample)
        adc.close()
        return
    measure("scheduler only (no SPI) ×4", [lambda: 512], args.seconds, 200.0, 4)
    for chip in ("MCP3008", "MCP3208"):
        simulated(chip, args.seconds, 200.0, 4)
    simulated("MCP3008", args.seconds, 200.0, 1)
    simulated("MCP3008", args.seconds, 500.0, 1)


if __name__ == "__main__":
    main()
