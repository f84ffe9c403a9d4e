"""CPU cost of the real-time path: sensor loop + coach + tone + mixer, in real time.

Runs a session in real time (a real monotonic clock): the simulated pelvic floor delivers
samples at the sensor rate, the control loop ticks every 5 ms (Session.tick, AudioSink
feedback and speech scheduling, the store, the probe's breath and technique observers:
the session is built by the device's own `build_session`), and an audio thread pulls the mixer in callback-sized
blocks on the device's schedule (as PortAudio would; there is no sound card here). The
calibration is given, so the exercises (tone on, prompts spoken) start after the intro.

Prints `realtime_cpu_fraction=…`: CPU seconds of this process per second of session.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from appliance.coach.programme import load_programme
from appliance.coach.runner import ScriptedCommand, run
from appliance.coach.session import Calibration
from appliance.commands import Command
from appliance.config import DeviceConfig
from appliance.device.sinks import GuardedStoreSink
from appliance.device.wiring import SessionParts, build_session
from appliance.sensor.simulated import SimulatedPelvicFloor, profile
from appliance.store import Store, StoreSink
from appliance.voice.output import AudioSink, prepare_speech
from appliance.voice.phrases import Catalogue
from appliance.voice.speech import RenderedTiming


class SessionClock:
    """The real monotonic clock, counted from the start of the bench (so session time = clock)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)

    def wall(self):  # noqa: ANN201 - only for stored timestamps, unused here
        from datetime import UTC, datetime

        return datetime.now(UTC)


class CallbackThread(threading.Thread):
    """Pulls `block` samples from the mixer every block period, like a sound card would."""

    def __init__(self, sink: AudioSink, block: int) -> None:
        super().__init__(name="audio-callback", daemon=True)
        self.sink, self.block = sink, block
        self.period = block / sink.mixer.sample_rate
        self.stop = threading.Event()
        self.callbacks = 0
        self.late = 0  # rendered more than one block period after its deadline
        self.cpu_s = 0.0
        self.render_cpu_s = 0.0  # inside Mixer.render only: the mixing itself

    def run(self) -> None:
        out = np.zeros((self.block, 1), dtype=np.float32)
        deadline = time.monotonic()
        while not self.stop.is_set():
            deadline += self.period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif -delay > self.period:
                self.late += 1
            t0 = time.thread_time()
            self.sink.mixer.render(out)
            self.render_cpu_s += time.thread_time() - t0
            self.callbacks += 1
        self.cpu_s = time.thread_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="real seconds to run")
    parser.add_argument("--tick", type=float, default=0.005, help="control tick in seconds (the device ships 0.005)")
    parser.add_argument("--lang", default="nl")
    parser.add_argument("--block", type=int, default=None, help="override the shipped block size")
    args = parser.parse_args()

    cfg = DeviceConfig()
    audio_cfg = cfg.audio
    if args.block:
        audio_cfg = dataclasses.replace(audio_cfg, block_size=args.block)
    sensor_hz = cfg.sensor.sample_rate_hz
    bank = prepare_speech(args.lang, audio_cfg)  # before the clock starts, as on the device
    sink = AudioSink.for_config(audio_cfg, bank)
    catalogue = Catalogue.load(args.lang)
    programme = load_programme("leaflet", catalogue.keys())
    clock = SessionClock()
    floor = SimulatedPelvicFloor(profile("average"), seed=0, sample_rate_hz=sensor_hz)
    # The device's wiring (appliance.device.wiring): the store first, the jump counter, the
    # voice and tone, the floor, and the probe's observers (breath, technique) with breath
    # following, as `appliance run` builds every session.
    tmp = tempfile.TemporaryDirectory(prefix="bench-cpu-")
    store = Store(Path(tmp.name) / "appliance.db")
    store_sink = GuardedStoreSink(StoreSink(store, clock, programme.id, args.lang, source="bench"))
    built = build_session(programme, catalogue, clock, SessionParts(
        source=floor, store=store_sink, audio=sink, timing=RenderedTiming(bank),
        calibration=Calibration(20.0, 35.0)))
    session = built.session
    audio = CallbackThread(sink, audio_cfg.block_size)

    cpu0, wall0, main0 = time.process_time(), time.monotonic(), time.thread_time()
    audio.start()
    run(session, built.source, clock, tick_s=args.tick, script=[ScriptedCommand(0.5, Command.START)],
        max_seconds=args.seconds)
    loop_cpu = time.thread_time() - main0
    audio.stop.set()
    audio.join()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    store.close()
    tmp.cleanup()

    spoken = len(sink.spoken)
    phases = session.state.value
    print(
        f"config: sample_rate={audio_cfg.sample_rate} Hz block_size={audio_cfg.block_size} "
        f"sensor={sensor_hz:.0f} Hz control_tick={args.tick * 1000:.0f} ms; {wall:.1f} s real time, state {phases}, "
        f"{spoken} prompts scheduled, {audio.callbacks} audio callbacks ({audio.late} late)"
    )
    print(f"realtime_cpu_fraction={cpu / wall:.4f}")
    print(
        f"  of which control loop (sensor + coach + tone control)={loop_cpu / wall:.4f} "
        f"audio callback (tone + speech mix)={audio.cpu_s / wall:.4f}"
    )
    # The callback thread above is this bench's stand-in for PortAudio: a Python thread
    # that sleeps one block period per call. Its own wake-ups are counted in the total.
    print(
        f"  the callback splits into Mixer.render={audio.render_cpu_s / wall:.4f} "
        f"and the stand-in sound card's wake-ups={(audio.cpu_s - audio.render_cpu_s) / wall:.4f}"
    )


if __name__ == "__main__":
    main()
