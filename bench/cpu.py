"""CPU cost of the real-time path, through the device itself, in real time.

Runs `appliance run --simulated` in-process (bench/device_rig.py): the `Appliance`
supervisor on the simulated edges with a real clock, so the session is built by the
device's one wiring with every observer it runs (store, jump counter, voice and tone,
breath, technique, breath following, the live pressure slot) and its control loop ticks
at the shipped rate. The simulated floor delivers samples at the sensor rate; a stand-in
sound card thread calls the device's audio callback (sounddevice's wrapper around
`DeviceOutput._callback`, as PortAudio would; there is no sound card here) in
callback-sized blocks on the device's schedule. The calibration is given, so the
exercises (tone on, prompts spoken) start after the intro. No microphone: the listener's
share is bench/device_budget.py's.

`--via-adc` reads the simulated floor through the device's probe path instead: the
MCP3xxx chip simulator behind gpiozero, the ADC sampler, `Probe.read_until` and the
probe's status monitor. The simulated probe is stepped, so the chip simulator runs in the
control loop; its share (`AdcSampler.acquire_until`, a bit-level simulation, not what a
Pi's SPI transfer costs) is printed apart, and the control loop less it is what the
device's control loop does with a probe.

Prints `realtime_cpu_fraction=…`: CPU seconds of the control loop plus the audio callback
per second of session, then each thread's share and the whole process's.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import tempfile
from pathlib import Path

from device_rig import RigEdges, run_session

from appliance.config import DeviceConfig

REALTIME_THREADS = ("MainThread", "audio-callback", "adc-sampler")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="session seconds to run (real time)")
    parser.add_argument("--lang", default="nl")
    parser.add_argument("--tick", type=float, default=None, help="control tick in seconds (default: the device's)")
    parser.add_argument("--speech-cache", type=Path, default=Path(tempfile.gettempdir()) / "appliance-bench-speech",
                        help="rendered phrases, kept between runs")
    parser.add_argument("--via-adc", action="store_true",
                        help="read the floor through the probe path (chip simulator, sampler, probe monitor)")
    parser.add_argument("--split", action="store_true",
                        help="time the control loop's pieces and the audio callback (thread CPU per call, no "
                             "profiler; the clock reads add to the figures) and print their shares")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the control loop and the audio callback; print their top entries")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    cfg = DeviceConfig()
    loop_prof = cProfile.Profile() if args.profile else None
    audio_prof = cProfile.Profile() if args.profile else None
    chip = _time_chip_simulator() if args.via_adc else None
    pieces = _time_pieces() if args.split else None
    edges = RigEdges(profile_audio=audio_prof, via_adc=args.via_adc, time_callbacks=args.split)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        run = run_session(args.seconds, edges, Path(tmp), lang=args.lang, speech_cache=args.speech_cache,
                          tick_s=args.tick, profile=loop_prof)
    realtime = sum(v for k, v in run.per_thread.items() if k in REALTIME_THREADS)
    from appliance.device.wiring import CONTROL_TICK_S

    via = " via the ADC" if args.via_adc else ""
    print(
        f"config: sample_rate={cfg.audio.sample_rate} Hz block_size={cfg.audio.block_size} "
        f"sensor={cfg.sensor.sample_rate_hz:.0f} Hz{via} control_tick={(args.tick or CONTROL_TICK_S) * 1000:.0f} ms; "
        f"{run.seconds:.1f} s of session, state {run.state}, {run.callbacks} audio callbacks ({run.late} late)"
    )
    print(f"realtime_cpu_fraction={realtime:.4f}")
    for name, share in sorted(run.per_thread.items(), key=lambda kv: -kv[1]):
        if share >= 0.00005:
            print(f"  {name}={share:.4f}")
    if chip is not None:
        main_thread = run.per_thread.get("MainThread", 0.0)
        print(f"  of MainThread, the stepped chip simulator={chip[0] / run.seconds:.4f} "
              f"(the control loop without it={main_thread - chip[0] / run.seconds:.4f})")
    if pieces is not None:
        print("  of MainThread, by piece (thread CPU per second of session; nested pieces indented):")
        for label, spent in pieces.items():
            print(f"    {label}={spent / run.seconds:.4f}")
    if args.split:
        print(f"  of audio-callback, inside the device's callback (sounddevice's wrapper, DeviceOutput._callback, "
              f"Mixer.render)={run.render:.4f} (the rest: the stand-in card's wake-ups and these clock reads)")
    print(f"  whole process={run.process:.4f}")
    for name, prof in (("control loop (MainThread, start-up included)", loop_prof), ("audio callback", audio_prof)):
        if prof is not None:
            print(f"--- cProfile: {name}, by own time")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


def _time_pieces() -> dict[str, float]:
    """Wrap the control loop's pieces to add up their thread CPU seconds (a dict, filled in as
    the run goes; start-up's few ticks included). Costs about a microsecond a call itself."""
    import time

    from appliance.coach.session import Session
    from appliance.device.health import HealthChecks
    from appliance.sensor.breath import BreathDetector
    from appliance.sensor.live import LiveSource
    from appliance.sensor.technique import ObservedSource, TechniqueMonitor

    spent: dict[str, float] = {}
    for owner, name, label in (
        (ObservedSource, "read_until", "ObservedSource.read_until (the loop's read)"),
        (LiveSource, "read_until", "  LiveSource.read_until (the floor, the live slot)"),
        (BreathDetector, "add", "  BreathDetector.add"),
        (BreathDetector, "_fit", "  BreathDetector._fit"),
        (TechniqueMonitor, "add", "  TechniqueMonitor.add"),
        (Session, "tick", "Session.tick"),
        (Session, "_take_samples", "  Session._take_samples"),
        (Session, "_follow_plan", "  Session._follow_plan"),
        (Session, "_give_feedback", "  Session._give_feedback"),
        (HealthChecks, "_check_health", "HealthChecks._check_health"),
    ):
        spent[label] = 0.0
        original = getattr(owner, name)

        def timed(*args: object, _f: object = original, _label: str = label, **kwargs: object) -> object:
            t0 = time.thread_time()
            try:
                return _f(*args, **kwargs)  # type: ignore[operator]
            finally:
                spent[_label] += time.thread_time() - t0

        setattr(owner, name, timed)
    return spent


def _time_chip_simulator() -> list[float]:
    """Thread CPU seconds spent taking samples from the chip simulator (session and start-up
    alike; the session's share dominates). A list, filled in as the run goes."""
    import time

    from appliance.sensor.adc import AdcSampler

    spent = [0.0]
    acquire = AdcSampler.acquire_until

    def timed(self: AdcSampler, t: float) -> None:
        t0 = time.thread_time()
        acquire(self, t)
        spent[0] += time.thread_time() - t0

    AdcSampler.acquire_until = timed  # type: ignore[method-assign]
    return spent


if __name__ == "__main__":
    main()
