"""The device in-process on a real clock, for the CPU benchmarks (bench/cpu.py, bench/device_budget.py).

It is `appliance run --simulated`: the `Appliance` supervisor on `SimulatedEdges` with a
`RealClock` (its idle loop, its one wiring, every observer a session has), with only what
is physically absent stood in for:

- the sound card: `StandInSoundCard`, a thread that calls the device's own callback
  (through sounddevice's wrapper) in the configured block size on the block period's
  schedule, as PortAudio's callback thread would;
- the microphone (device_budget.py): `WavMicrophone`, the device's own `Listener`
  (voice-activity detection, echo canceller, recognizer on its own thread) fed from a WAV
  file at real-time pace instead of a PortAudio input stream.

`ThreadCpu` reads each thread's own CPU clock, so the figures are split by thread.
"""

from __future__ import annotations

import resource
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.clock import RealClock
from appliance.coach.session import Calibration
from appliance.device.appliance import Appliance, RunOptions
from appliance.device.edges import SimulatedEdges
from appliance.device.service import Notifier, Signals

CONFIG = """
language = "{lang}"
[sensor]
source = "simulated"
[voice]
enabled = {voice}
{voice_extra}
"""


class StandInSoundCard:
    """The sound card's callback thread: every block period, what PortAudio's callback thread
    does on the device. That is a call of the device's cffi function pointer
    (`DeviceOutput.portaudio_callback`, into `DeviceOutput._callback` and `Mixer.render`)
    on a float32 buffer of the card's size — the same functions, not a shortcut to
    `Mixer.render`. (A checkout whose `DeviceOutput` opens a sounddevice `OutputStream` or
    `RawOutputStream` gets sounddevice's own wrapper around its callback, as it would on
    the device; without sounddevice, a plain buffer and a flags stand-in.)

    What is not the device's: the wake-up (a Python sleep loop where the device has
    PortAudio's C thread waiting on ALSA) and, only with `time_callbacks`, two thread-clock
    reads per callback for the figure inside the callback (`render_cpu_s`).
    """

    def __init__(self, mixer: Any, block: int, profile: Any = None, time_callbacks: bool = False) -> None:
        from appliance.voice.audio import DeviceOutput

        self.mixer = mixer
        self.profile = profile  # a cProfile.Profile for this thread (bench/cpu.py --profile)
        self.time_callbacks = time_callbacks
        self.render_cpu_s = 0.0  # inside the callback only (with time_callbacks)
        self.block = block
        self.period = block / mixer.sample_rate
        self.last_error: str | None = None
        self.output_latency_s: float | None = None
        self.late = 0  # rendered more than a block period after its deadline
        # The device's output, as it is once its stream has opened (not started: no stream here).
        self.output = DeviceOutput(mixer, block_size=block)
        mixer.running = True
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="audio-callback", daemon=True)
        self.thread.start()

    @property
    def callbacks(self) -> int:
        return self.output.callbacks

    @property
    def is_open(self) -> bool:
        return not self._stop.is_set()

    def _portaudio_callback(self) -> Any:
        """What PortAudio calls each block period: sounddevice's `callback_ptr` for the
        output stream `DeviceOutput` opens (`DeviceOutput.STREAM`; a checkout without it
        opens an `OutputStream`), on a float32 buffer of the card's size."""
        callback, frames = self.output._callback, self.block
        if getattr(self.output, "STREAM", "") == "portaudio":  # PortAudio calls the device's C function pointer
            from appliance.voice.audio import _portaudio_ffi

            ffi = _portaudio_ffi()
            c_callback = self.output.portaudio_callback()
            out_buffer = ffi.new("float[]", frames)
            info = ffi.new("PaStreamCallbackTimeInfo *")

            def portaudio_calls() -> Any:  # through C into Python, as from PortAudio's thread
                return c_callback(ffi.NULL, out_buffer, frames, info, 0, ffi.NULL)

            return portaudio_calls
        raw_stream = getattr(self.output, "STREAM", "OutputStream") == "RawOutputStream"
        try:
            import sounddevice as sd

            ffi, buffer, array, wrap = sd._ffi, sd._buffer, sd._array, sd._wrap_callback
            optr = ffi.new("float[]", frames)
            time_info = ffi.new("PaStreamCallbackTimeInfo*")

            # Their bodies (kind 'output', wrap 'buffer' or 'array'); the status comes from C as an int.
            def raw_callback_ptr() -> Any:
                return wrap(callback, buffer(optr, frames, 1, 4), frames, time_info, 0)

            def array_callback_ptr() -> Any:
                return wrap(callback, array(buffer(optr, frames, 1, 4), 1, "float32"), frames, time_info, 0)

            return raw_callback_ptr if raw_stream else array_callback_ptr
        except (ImportError, OSError):
            raw = bytearray(4 * frames) if raw_stream else np.zeros((frames, 1), dtype=np.float32)

            class Flags:
                output_underflow = False

                def __bool__(self) -> bool:
                    return False

            def callback_ptr() -> Any:
                return callback(raw, frames, None, Flags())

            return callback_ptr

    def _run(self) -> None:
        if self.profile is not None:
            self.profile.enable()
        callback = self._portaudio_callback()
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += self.period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif -delay > self.period:
                self.late += 1
            if self.time_callbacks:
                t0 = time.thread_time()
                callback()
                self.render_cpu_s += time.thread_time() - t0
            else:
                callback()
        if self.profile is not None:
            self.profile.disable()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2.0)


def read_wav_16k(path: Path) -> np.ndarray:
    """A mono 16-bit WAV at the listener's 16 kHz, as float32."""
    from appliance.voice.listener import SAMPLE_RATE

    with wave.open(str(path)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            raise SystemExit(f"{path}: needs a mono 16-bit WAV at {SAMPLE_RATE} Hz "
                             f"(has {w.getnchannels()} channel(s), {8 * w.getsampwidth()} bit, {w.getframerate()} Hz)")
        return (np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0).astype(np.float32)


def wav_listener(samples: np.ndarray, *args: Any, **kwargs: Any) -> Any:
    """The device's `Listener`, its microphone a WAV file played in a loop at real-time pace."""
    from appliance.voice.listener import BLOCK, SAMPLE_RATE, Listener

    class WavMicrophone(Listener):
        def start(self) -> bool:
            if self.detector is None:
                return False
            self.available = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="voice-listener", daemon=True)
            self._thread.start()
            self._mic = threading.Thread(target=self._play, name="microphone", daemon=True)
            self._mic.start()
            return True

        def _play(self) -> None:  # what PortAudio's input callback would deliver, block by block
            period = BLOCK / SAMPLE_RATE
            deadline = time.monotonic()
            pos = 0
            while not self._stop.is_set():
                deadline += period
                delay = deadline - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                block = samples[pos : pos + BLOCK]
                if block.shape[0] < BLOCK:
                    pos = 0
                    block = samples[:BLOCK]
                pos += BLOCK
                try:
                    self._blocks.put_nowait((block.copy(), time.monotonic()))
                except Exception:  # queue.Full: the listener is behind, as on the device
                    pass

    return WavMicrophone(*args, **kwargs)


class RigEdges(SimulatedEdges):
    """`appliance run --simulated`'s edges with a stand-in sound card (and a WAV microphone)."""

    def __init__(self, mic: np.ndarray | None = None, listener_kwargs: dict | None = None,
                 via_adc: bool = False, profile_audio: Any = None, time_callbacks: bool = False) -> None:
        super().__init__(clock=RealClock(), via_adc=via_adc)
        self.profile_audio = profile_audio
        self.time_callbacks = time_callbacks
        self.mic = mic
        self.listener_kwargs = listener_kwargs or {}
        self.card: StandInSoundCard | None = None
        self.the_listener: Any = None

    def audio_output(self, mixer: Any, config: Any) -> Any:
        self.card = StandInSoundCard(mixer, config.audio.block_size, self.profile_audio, self.time_callbacks)
        return self.card

    def listener(self, config: Any, state_dir: Path, on_command: Any, monitor: Any) -> Any:
        if self.mic is None:
            return super().listener(config, state_dir, on_command, monitor)
        from appliance.voice.listener import Listener

        kwargs = dict(self.listener_kwargs)
        voice = config.voice
        from appliance.voice.listener import AcceptanceRules

        self.the_listener = wav_listener(
            self.mic, on_command, kwargs.pop("lang", config.language), kwargs.pop("engine", voice.engine),
            kwargs.pop("model_dir", voice.model_dir), monitor, AcceptanceRules(min_confidence=voice.min_confidence),
            state_dir=state_dir, **kwargs)
        assert isinstance(self.the_listener, Listener)
        return self.the_listener


class ThreadCpu:
    """CPU seconds of every thread of this process, by name: Python threads by their name,
    threads Python did not start (PortAudio's on a Pi) by the kernel's. Linux /proc."""

    @staticmethod
    def snapshot() -> dict[str, float]:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        out: dict[str, float] = {}
        for task in Path("/proc/self/task").iterdir():
            tid = int(task.name)
            try:
                ns = int((task / "schedstat").read_text().split()[0])
                name = names.get(tid) or f"{(task / 'comm').read_text().strip()} (not Python's)"
            except (OSError, ValueError, IndexError):
                continue
            out[name] = out.get(name, 0.0) + ns * 1e-9
        return out


@dataclass
class Run:
    """One session's figures: CPU seconds per second of session, by thread, and the whole process."""

    seconds: float
    per_thread: dict[str, float]
    process: float
    peak_rss_mb: float
    callbacks: int = 0
    late: int = 0
    render: float = 0.0  # of the audio callback: inside the device's callback (when timed)
    spoken: int = 0
    state: str = ""
    notes: list[str] = field(default_factory=list)


def run_session(seconds: float, edges: RigEdges, state_dir: Path, *, lang: str = "nl", voice: bool = False,
                voice_extra: str = "", speech_cache: Path | None = None, tick_s: float | None = None,
                profile: Any = None) -> Run:
    """One leaflet session of `seconds` on the device (`Appliance.main`), calibration given."""
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = state_dir / "appliance.toml"
    cfg.write_text(CONFIG.format(lang=lang, voice="true" if voice else "false", voice_extra=voice_extra))
    options = RunOptions(config_path=cfg, state_dir=state_dir / "state", programme="leaflet", auto_start=True,
                         sessions=1, calibration=Calibration(20.0, 35.0), max_session_s=seconds,
                         speech_cache=speech_cache, language=lang)
    if tick_s is not None:
        options.tick_s = tick_s
    app = Appliance(options, edges, Notifier({}), Signals())
    marks: dict[str, Any] = {}

    def watch() -> None:  # snapshot the threads' clocks when the session starts and just before it ends
        while app.session is None and not marks.get("done"):
            time.sleep(0.005)
        marks["t0"], marks["cpu0"], marks["p0"] = time.monotonic(), ThreadCpu.snapshot(), time.process_time()
        marks["render0"] = edges.card.render_cpu_s if edges.card else 0.0
        session = app.session
        while session is not None and not session.finished and not marks.get("done"):
            if time.monotonic() - marks["t0"] >= seconds - 0.2:
                break
            time.sleep(0.1)
        marks["t1"], marks["cpu1"], marks["p1"] = time.monotonic(), ThreadCpu.snapshot(), time.process_time()
        card = edges.card
        marks["render"] = card.render_cpu_s - marks.get("render0", 0.0) if card else 0.0
        marks["spoken"] = len(getattr(getattr(app, "idle_audio", None), "spoken", []) or [])
        marks["state"] = session.state.value if session is not None else "none"

    watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
    watcher.start()
    try:
        if profile is not None:
            profile.enable()
        app.main()
    finally:
        if profile is not None:
            profile.disable()
        marks["done"] = True
        watcher.join(timeout=5)
    wall = marks["t1"] - marks["t0"]
    before, after = marks["cpu0"], marks["cpu1"]
    per_thread = {name: (after[name] - before.get(name, 0.0)) / wall for name in after}
    card = edges.card
    return Run(wall, per_thread, (marks["p1"] - marks["p0"]) / wall,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               card.callbacks if card else 0, card.late if card else 0, marks["render"] / wall, 0, marks["state"])
