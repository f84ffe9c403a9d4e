"""Is this unit fit to coach? Speaker, microphone, voice model, probe, ADC rate, disk, and
(only when asked, into a test load) the stimulation line. `appliance selftest` prints it.

Each check returns a `CheckResult` and never raises. Missing voice control is a WARN,
not a FAIL: the appliance works with the button alone. `simulated=True` runs the same
checks through the simulated edges (a WAV instead of the speaker, synthesised speech
instead of the microphone, the ADC simulator on mock pins).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from appliance.config import DeviceConfig

if TYPE_CHECKING:
    from appliance.voice.speech import PhraseBank

log = logging.getLogger(__name__)

TONE_HZ = 440.0
TONE_S = 0.5
PROBE_READ_S = 1.0
ATMOSPHERE_TOLERANCE_CMH2O = 2.0  # more than this at atmosphere: re-zero (appliance calibrate)
ADC_RATE_MIN = 0.95  # achieved / configured sample rate
DISK_FAIL_BYTES = 50 * 1024 * 1024  # matches `appliance run`: below this samples stop
DISK_WARN_BYTES = 200 * 1024 * 1024
MIC_LISTEN_S = 4.0
MIC_SILENT_DBFS = -90.0  # a connected microphone always hears some noise
STIM_PULSE_S = 0.5


class Status(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.name:<12} {self.status.value:<5} {self.detail}"


class SelfTest:
    """Each `check_*` returns a `CheckResult` and never raises."""

    def __init__(self, config: DeviceConfig, state_dir: Path, simulated: bool = False,
                 pin_factory: object | None = None) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.simulated = simulated
        self.pin_factory = pin_factory
        if simulated and pin_factory is None:
            from gpiozero.pins.mock import MockFactory

            self.pin_factory = MockFactory()
        self.work = Path(tempfile.mkdtemp(prefix="selftest-"))
        self.wav_path = self.work / "speaker.wav"
        self._bank: PhraseBank | None = None
        self._probe_stats = None

    # -- running -----------------------------------------------------------------------
    def run_all(self, stim: bool = False) -> list[CheckResult]:
        checks: list[tuple[str, Callable[[], CheckResult]]] = [
            ("speaker", self.check_speaker),
            ("speech", self.check_voice_pack),
            ("microphone", self.check_microphone),
            ("voice model", self.check_recognizer),
            ("probe", self.check_probe),
            ("adc rate", self.check_adc_rate),
            ("disk", self.check_disk),
        ]
        if stim:
            checks.append(("stim line", self.check_stim))
        results = []
        for name, check in checks:
            try:
                results.append(check())
            except Exception as exc:  # a check that crashes is a failed check, not a crash
                log.exception("selftest %s crashed", name)
                results.append(CheckResult(name, Status.FAIL, f"{type(exc).__name__}: {exc}"))
        if not stim:
            results.append(CheckResult("stim line", Status.SKIP, "not tested (use --stim "
                                       "with the test load connected)"))
        return results

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # -- speech ----------------------------------------------------------------------------
    def bank(self) -> PhraseBank:
        if self._bank is None:
            from appliance.voice.phrases import Catalogue
            from appliance.voice.speech import PhraseBank, SpeechRenderer

            lang = self.config.language
            cache = self.state_dir / "cache" / "speech" if os.access(self.state_dir, os.W_OK) \
                else self.work / "speech"
            from appliance.voice.voicepack import pack_for

            self._bank = PhraseBank(Catalogue.load(lang), SpeechRenderer(cache), lang=lang,
                                    rate_wpm=self.config.audio.speech_rate_wpm,
                                    sample_rate=self.config.audio.sample_rate,
                                    pack=pack_for(self.config, lang))
            self._bank.prepare([k for k in self._bank.catalogue.keys() if k.startswith("selftest.")])
        return self._bank

    def speak(self, phrase: str) -> bool:
        """Say a phrase on the speaker (or, simulated, into the WAV); False if it could not."""
        try:
            clip = self.bank().clip(phrase)
            return self._play([clip.samples])
        except Exception as exc:
            log.warning("cannot say %s: %s", phrase, exc)
            return False

    def _tone(self) -> np.ndarray:
        rate = self.config.audio.sample_rate
        t = np.arange(int(TONE_S * rate)) / rate
        ramp = np.minimum(1.0, np.minimum(t, TONE_S - t) / 0.02)  # no clicks
        return 0.5 * ramp * np.sin(2 * np.pi * TONE_HZ * t)

    def _play(self, clips: list[np.ndarray]) -> bool:
        from appliance.voice.audio import Mixer

        rate = self.config.audio.sample_rate
        mixer = Mixer(rate, volume=self.config.audio.volume)
        gap = int(0.2 * rate)
        starts, frame = [], gap
        for c in clips:
            starts.append(frame)
            frame += len(c) + gap
        if self.simulated:
            from appliance.voice.audio import WavSink

            with WavSink(self.wav_path, mixer, self.config.audio.block_size) as sink:
                for c, s in zip(clips, starts, strict=True):
                    mixer.schedule(c, s)
                sink.render_until_frame(frame)
            return True
        from appliance.voice.audio import DeviceOutput

        out = DeviceOutput(mixer, self.config.audio.output_device, self.config.audio.block_size)
        out.start()
        try:
            if not out.wait_open(3.0):
                raise OSError(out.last_error or "no output device")
            now = mixer.frame_now()
            for c, s in zip(clips, starts, strict=True):
                mixer.schedule(c, now + s)
            time.sleep(frame / rate + 0.2)
            return True
        finally:
            out.stop()

    # -- checks ------------------------------------------------------------------------------
    def check_speaker(self) -> CheckResult:
        try:
            phrase = self.bank().clip("selftest.start").samples
        except Exception as exc:
            return CheckResult("speaker", Status.FAIL, f"speech cannot be rendered: {exc}")
        tone = self._tone()
        try:
            self._play([phrase, tone])
        except Exception as exc:
            return CheckResult("speaker", Status.FAIL, f"no sound output: {exc}")
        if not self.simulated:
            return CheckResult("speaker", Status.OK,
                               f"played a phrase and a {TONE_HZ:.0f} Hz tone (listen for both)")
        with wave.open(str(self.wav_path)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0
            rate = w.getframerate()
        gap = int(0.2 * rate)
        said = pcm[gap: gap + len(phrase)]
        played_tone = pcm[2 * gap + len(phrase): 2 * gap + len(phrase) + len(tone)]
        spectrum = np.abs(np.fft.rfft(played_tone))
        peak_hz = np.argmax(spectrum) * rate / len(played_tone) if len(played_tone) else 0.0
        rms = float(np.sqrt(np.mean(said**2))) if len(said) else 0.0
        if rms < 0.01 or abs(peak_hz - TONE_HZ) > 5:
            return CheckResult("speaker", Status.FAIL,
                               f"output wrong: phrase rms {rms:.3f}, tone at {peak_hz:.0f} Hz")
        return CheckResult("speaker", Status.OK, f"phrase rms {rms:.2f} and tone at "
                           f"{peak_hz:.0f} Hz in {self.wav_path.name} (simulated)")

    def check_voice_pack(self) -> CheckResult:
        """Whose voice speaks: the pack's recordings, and how many phrases fall back."""
        from appliance.config import voice_pack_dirs

        lang = self.config.language
        if lang not in voice_pack_dirs(self.config.speech, self.config.source):
            return CheckResult("speech", Status.SKIP, f"none configured: the synthesizer speaks ({lang})")
        bank = self.bank()
        if bank.pack is None:
            return CheckResult("speech", Status.FAIL, "configured but unreadable (see the journal)")
        fallback = bank.fallback_keys()
        total = len(bank.catalogue.keys())
        detail = (f"{bank.pack.describe()}: {total - len(fallback)} of {total} phrases recorded, "
                  f"{len(fallback)} fall back to the synthesizer")
        return CheckResult("speech", Status.WARN if fallback else Status.OK, detail)

    def _detector(self):
        from appliance.voice.listener import AcceptanceRules, CommandDetector, Vocabulary, build_engine

        lang = self.config.language
        vocab = Vocabulary.load(lang)
        engine = build_engine(self.config.voice.engine, lang, vocab, self.config.voice.model_dir,
                              self.state_dir)
        rules = AcceptanceRules(min_confidence=self.config.voice.min_confidence)
        return CommandDetector(engine, vocab, rules)

    def check_microphone(self) -> CheckResult:
        from appliance.commands import Command
        from appliance.voice.listener import SAMPLE_RATE, detect_in_samples

        if not self.config.voice.enabled:
            return CheckResult("microphone", Status.SKIP, "voice control disabled in the configuration")
        if self.simulated:
            samples = self._synthesised_start(SAMPLE_RATE)
            level = _dbfs(samples)
        else:
            import sounddevice as sd

            self.speak("selftest.say_start")
            try:
                rec = sd.rec(int(MIC_LISTEN_S * SAMPLE_RATE), samplerate=SAMPLE_RATE, channels=1,
                             dtype="float32", device=self.config.voice.input_device)
                sd.wait()
            except Exception as exc:
                return CheckResult("microphone", Status.WARN,
                                   f"no microphone ({exc}); the button drives the device")
            samples = rec[:, 0]
            level = _dbfs(samples)
            if level < MIC_SILENT_DBFS:
                return CheckResult("microphone", Status.WARN,
                                   f"microphone silent ({level:.0f} dBFS): unplugged or muted")
        try:
            detector = self._detector()
        except Exception as exc:
            return CheckResult("microphone", Status.WARN,
                               f"level {level:.0f} dBFS; no recogniser to test a word ({exc})")
        heard = [h.command for h in detect_in_samples(detector, samples)]
        source = "synthesised" if self.simulated else "spoken"
        if Command.START in heard:
            if not self.simulated:
                self.speak("selftest.heard")
            return CheckResult("microphone", Status.OK,
                               f"level {level:.0f} dBFS, recognised '{source} start'")
        return CheckResult("microphone", Status.WARN,
                           f"level {level:.0f} dBFS, but '{source} start' not recognised "
                           f"(heard {[c.value for c in heard]})")

    def _synthesised_start(self, rate: int) -> np.ndarray:
        """The word for START in this language, spoken by the TTS, at the recogniser's rate."""
        from appliance.commands import Command
        from appliance.voice.listener import Vocabulary
        from appliance.voice.speech import SpeechRenderer

        word = Vocabulary.load(self.config.language).first_phrase(Command.START)
        r = SpeechRenderer(self.work / "speech-mic").render(word, self.config.language, 150, 1.0)
        samples = np.asarray(r.samples, dtype=float) / 32768.0  # int16 PCM
        src_rate = r.sample_rate
        n = int(len(samples) * rate / src_rate)
        resampled = np.interp(np.arange(n) * src_rate / rate, np.arange(len(samples)), samples)
        pad = np.zeros(int(0.5 * rate))
        return np.concatenate([pad, resampled, pad, pad])

    def check_recognizer(self) -> CheckResult:
        from appliance.voice.listener import recognizer_status

        if not self.config.voice.enabled:
            return CheckResult("voice model", Status.SKIP, "voice control disabled")
        status = recognizer_status(self.config, self.state_dir)
        mine = status.get(self.config.language, "unavailable: not checked")
        others = ", ".join(f"{k}: {v.split(':')[0]}" for k, v in status.items()
                           if k != self.config.language)
        if mine.startswith("ok"):
            return CheckResult("voice model", Status.OK, f"{self.config.language} {mine}"
                               + (f" ({others})" if others else ""))
        return CheckResult("voice model", Status.WARN,
                           f"{self.config.language} {mine}; the button drives the device")

    def _open_probe(self):
        from appliance.clock import RealClock
        from appliance.sensor.probe import open_probe

        sensor = self.config.sensor
        if self.simulated or sensor.source == "simulated":
            from dataclasses import replace

            from gpiozero import Device
            from gpiozero.pins.mock import MockFactory

            from appliance.sensor.mcp_sim import AnalogFrontEnd, McpSimulator
            from appliance.sensor.probe import load_probe_calibration, transfer_from_config

            sensor = replace(sensor, source="adc")
            if Device.pin_factory is None:
                Device.pin_factory = MockFactory()  # gpiozero's soft SPI asks the default
            factory = MockFactory()
            transfer = transfer_from_config(sensor, load_probe_calibration(self.state_dir))
            front = AnalogFrontEnd(lambda t: 0.0, transfer, sensor.channel)  # atmosphere
            sim = McpSimulator(sensor.chip, front.voltage, sensor.vref, sensor.spi_port,
                               sensor.spi_device, factory)
            probe = open_probe(sensor, RealClock(), self.state_dir, pin_factory=factory,
                               stepped=False)
            return probe, sim.close
        return open_probe(sensor, RealClock(), self.state_dir, pin_factory=self.pin_factory), None

    def check_probe(self) -> CheckResult:
        from appliance.sensor.base import ProbeStatus

        try:
            probe, extra_close = self._open_probe()
        except Exception as exc:
            return CheckResult("probe", Status.FAIL, f"ADC cannot be opened: {exc}")
        try:
            time.sleep(PROBE_READ_S)
            times, cmh2o = probe.read_until(probe.sampler.clock.now())
            status = probe.status
            self._probe_stats = probe.sampler.stats()
        finally:
            probe.close()
            if extra_close:
                extra_close()
        if len(cmh2o) == 0:
            return CheckResult("probe", Status.FAIL, "no samples in 1 s")
        mean = float(np.mean(cmh2o))
        if status in (ProbeStatus.DISCONNECTED, ProbeStatus.SATURATED):
            return CheckResult("probe", Status.FAIL, f"probe {status.value} (mean {mean:.1f} cmH2O)")
        if abs(mean) > ATMOSPHERE_TOLERANCE_CMH2O:
            return CheckResult("probe", Status.FAIL, f"{mean:+.1f} cmH2O at atmosphere: re-zero "
                               "with `appliance calibrate` (probe out of the body)")
        return CheckResult("probe", Status.OK,
                           f"{mean:+.2f} cmH2O at atmosphere, status {status.value}")

    def check_adc_rate(self) -> CheckResult:
        stats = self._probe_stats
        if stats is None:
            return CheckResult("adc rate", Status.FAIL, "no sampling to measure (probe check failed)")
        target = self.config.sensor.sample_rate_hz
        achieved = float(stats.achieved_rate_hz)
        detail = (f"{achieved:.0f}/{target:.0f} Hz, lateness p99 {stats.lateness_p99_ms:.1f} ms, "
                  f"{stats.overruns} overruns")
        if achieved >= ADC_RATE_MIN * target:
            return CheckResult("adc rate", Status.OK, detail)
        if self.simulated:  # the bit-banged mock bus is slower than spidev; not the device's figure
            return CheckResult("adc rate", Status.WARN, detail + " (simulated bus)")
        return CheckResult("adc rate", Status.FAIL, detail)

    def check_disk(self) -> CheckResult:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe_file = self.state_dir / ".selftest-write"
            with open(probe_file, "wb") as fh:
                fh.write(b"selftest")
                fh.flush()
                os.fsync(fh.fileno())
            probe_file.unlink()
        except OSError as exc:
            return CheckResult("disk", Status.FAIL, f"{self.state_dir} not writable: {exc}")
        free = shutil.disk_usage(self.state_dir).free
        db = self.state_dir / "appliance.db"
        integrity = "no database yet"
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                integrity = "database " + con.execute("PRAGMA integrity_check").fetchone()[0]
                con.close()
            except sqlite3.Error as exc:
                return CheckResult("disk", Status.FAIL, f"database unreadable: {exc}")
            if integrity != "database ok":
                return CheckResult("disk", Status.FAIL, integrity)
        detail = f"{free / 2**20:.0f} MB free in {self.state_dir}, {integrity}"
        if free < DISK_FAIL_BYTES:
            return CheckResult("disk", Status.FAIL, detail)
        if free < DISK_WARN_BYTES:
            return CheckResult("disk", Status.WARN, detail)
        return CheckResult("disk", Status.OK, detail)

    def check_stim(self) -> CheckResult:
        from appliance.stim import StimLine

        pin = self.config.controls.stim_pin
        line = StimLine(pin, pin_factory=self.pin_factory)
        try:
            if line.is_active:
                return CheckResult("stim line", Status.FAIL, f"GPIO{pin} high before the test")
            line.on(STIM_PULSE_S + 0.5)
            time.sleep(STIM_PULSE_S)
            was_high = line.is_active
            line.off()
            is_low = not line.is_active
        finally:
            line.close()
        if was_high and is_low:
            return CheckResult("stim line", Status.OK,
                               f"GPIO{pin} pulsed high for {STIM_PULSE_S:.1f} s and back low")
        return CheckResult("stim line", Status.FAIL,
                           f"GPIO{pin}: high during pulse {was_high}, low after {is_low}")


def _dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0
    return 20 * np.log10(max(rms, 1e-10))
