"""What the probe's observers cost per control tick, on the device's schedule (its tick, 200 Hz sensor).

bench/cpu.py measures the whole real-time path; this one times the observers' pieces alone,
in a steady state the first minute of a session does not reach:

- the breath fit (`BreathDetector`), refitted every half second while the patient rests:
  a resting patient breathing 10/min (4 s in, 6 s out) with sensor noise, fed every tick;
- the probe's status monitor (`ProbeMonitor.update`) on every read of a full window;
- feeding the breath detector and the technique monitor one tick's samples.

Prints the median and 90th centile per call and what it comes to in a core's share.
Run it from two checkouts back to back to compare (`PYTHONPATH=CHECKOUT`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from appliance.device.wiring import CONTROL_TICK_S
from appliance.sensor.breath import BreathDetector
from appliance.sensor.probe import Mpx5010Transfer, ProbeMonitor, counts_to_volts
from appliance.sensor.technique import TechniqueMonitor

TICK_S = CONTROL_TICK_S
SENSOR_HZ = 200.0


def resting_breath(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probe pressure (cmH2O) of a patient at rest: 30 cmH2O, a 1.8 cmH2O breath ripple, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, seconds, 1.0 / SENSOR_HZ)
    tau = np.mod(t, 10.0)
    ripple = np.where(tau < 4.0, 0.5 * (1 - np.cos(np.pi * tau / 4.0)), 0.5 * (1 + np.cos(np.pi * (tau - 4.0) / 6.0)))
    return t, 30.0 + 1.8 * ripple + rng.normal(0.0, 0.3, len(t))


def per_call(samples: list[float]) -> str:
    a = np.array(samples) * 1e6
    return f"median {np.median(a):7.1f} us, p90 {np.percentile(a, 90):7.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="seconds of resting breath")
    args = parser.parse_args()
    t, p = resting_breath(args.seconds)
    per_tick = int(round(TICK_S * SENSOR_HZ))

    det = BreathDetector()
    fits: list[float] = []
    feeds: list[float] = []
    for k in range(0, len(t), per_tick):
        before = det._cached
        t0 = time.perf_counter()
        det.add(t[k:k + per_tick].tolist(), p[k:k + per_tick].tolist())
        est = det.estimate()
        spent = time.perf_counter() - t0
        if est is not before and est.breaths_per_minute is not None:
            fits.append(spent)  # a whole fit (not the early "too little breath yet")
        elif est is before:
            feeds.append(spent)
    print(f"breath fit: {len(fits)} fits, {per_call(fits)}; every {det.settings.refit_s:.1f} s "
          f"= {np.median(fits) / det.settings.refit_s:.4f} of a core while the patient rests "
          f"(last estimate {est.breaths_per_minute:.2f}/min, confidence {est.confidence:.2f})")
    print(f"breath feeding between fits: {per_call(feeds)} a tick = {np.median(feeds) / TICK_S:.4f} of a core")

    mon = TechniqueMonitor()
    feeds = []
    for k in range(0, len(t), per_tick):
        t0 = time.perf_counter()
        mon.add(t[k:k + per_tick].tolist(), p[k:k + per_tick].tolist())
        feeds.append(time.perf_counter() - t0)
    print(f"technique feeding: {per_call(feeds)} a tick = {np.median(feeds) / TICK_S:.4f} of a core")

    transfer = Mpx5010Transfer()
    probe = ProbeMonitor(transfer, 3.3, 10, rest_reference_cmh2o=30.0)
    counts = np.floor(transfer.volts(p) / 3.3 * 1024)
    volts = counts_to_volts(counts, 3.3, 10)
    cmh2o = transfer.cmh2o(volts)
    reads = []
    for k in range(0, len(t), per_tick):
        s = slice(k, k + per_tick)
        t0 = time.perf_counter()
        probe.update(t[s], counts[s], volts[s], cmh2o[s])
        reads.append(time.perf_counter() - t0)
    reads = reads[int(1.0 / TICK_S):]  # a whole window on
    print(f"probe status monitor: {per_call(reads)} a read = {np.median(reads) / TICK_S:.4f} of a core "
          f"(status {probe.status.value})")


if __name__ == "__main__":
    main()
