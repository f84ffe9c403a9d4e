"""How often technique warnings are right: simulated push-down, breath-hold and correct lifts.

Runs many seeded simulated sessions with the signal observers on, records which technique
fault the simulated patient really had in each repetition, and prints, per truth, the share
of repetitions flagged push_down / breath_hold. Usage: .venv/bin/python bench/technique.py [SESSIONS]
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict

from appliance.sensor import simulated
from appliance.sensor.simulated import Fault
from appliance.simulation.session import simulate

TRUTH: dict[tuple, str] = {}
_original_emit = simulated.SimulatedPelvicFloor.emit


def _recording_emit(self, event):
    _original_emit(self, event)
    if event.kind == "phase":
        d = event.data
        fault = self._fault.value if self._fault is not None else "correct"
        TRUTH[(id(self), d.get("exercise"), d.get("rep"))] = fault


simulated.SimulatedPelvicFloor.emit = _recording_emit


def main(sessions: int = 24, max_seconds: float = 1800.0) -> None:
    flagged: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    started = time.perf_counter()
    for seed in range(sessions):
        patient = ("average", "weak", "strong", "postop")[seed % 4]
        result = simulate(
            patient=patient,
            seed=seed,
            faults=[Fault.PUSH_DOWN, Fault.BREATH_HOLD],
            fault_rate=0.4,
            max_seconds=max_seconds,
            observe=True,
        )
        monitor = result.extra["observed"].technique
        for j in monitor.judgements:
            truth = TRUTH.get((id(result.floor), j.exercise, j.rep))
            if truth is None:
                continue
            # Breath-hold can only be judged on holds of a breath or longer (ex2, ex3).
            long_hold = j.hold_ripple is not None
            key = truth if truth != "breath_hold" or long_hold else "breath_hold (short hold)"
            # Bearing down shows in the rise only in a still squeeze of 4 s or more.
            if truth == "push_down" and j.rise_63_s is None:
                key = "push_down (short or moving)"
            totals[key] += 1
            for w in j.warnings or ["none"]:
                flagged[key][w] += 1
    elapsed = time.perf_counter() - started
    print(f"technique warnings over {sessions} simulated sessions "
          f"(profiles average/weak/strong/postop, faults at 40 %), {elapsed:.0f} s")
    print(f"{'truth':26s} {'reps':>5s} {'push_down':>10s} {'breath_hold':>12s} {'none':>6s}")
    for key in ("correct", "push_down", "push_down (short or moving)", "breath_hold",
                "breath_hold (short hold)"):
        n = totals[key]
        if not n:
            continue
        row = [100.0 * flagged[key][w] / n for w in ("push_down", "breath_hold", "none")]
        print(f"{key:26s} {n:5d} {row[0]:9.1f}% {row[1]:11.1f}% {row[2]:5.1f}%")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 24)
