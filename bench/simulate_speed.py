"""How many times faster than real time the whole leaflet programme simulates.

Goal: >= 600x. Runs the full programme (average patient, timeline and store on disk,
no audio) a few times and prints the best and median factor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from appliance.simulation.session import simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    factors = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            start = time.perf_counter()
            cpu0 = time.process_time()
            result = simulate(out_dir=Path(tmp) / str(i), seed=i)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            factors.append(result.duration_s / wall)
            print(f"run {i}: {result.duration_s / 60:.1f} min of session in {wall:.2f} s wall "
                  f"({cpu:.2f} s CPU), {len(result.log.of('rep'))} repetitions")
    print(f"simulate_speed_x median={statistics.median(factors):.0f} best={max(factors):.0f} "
          f"(goal >= 600)")


if __name__ == "__main__":
    main()
