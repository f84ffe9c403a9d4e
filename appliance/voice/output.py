"""The coach's voice and tone as a `Sink`: `say` events become queued clips, feedback the tone.

`AudioSink` is what the session talks to; behind it sit the `Mixer` and either a
`DeviceOutput` (the speaker) or a `WavSink` (a file, sample-exact in session time).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import AudioConfig
from appliance.events import Event, Feedback
from appliance.sensor.live import LivePressure
from appliance.voice.audio import DeviceOutput, Mixer, WavSink, frames_for
from appliance.voice.speech import PhraseBank, RenderedTiming, SpeechError, SpeechRenderer
from appliance.voice.tone import ToneMapping, ToneShaper

if TYPE_CHECKING:
    from appliance.voice.voicepack import VoicePack

log = logging.getLogger(__name__)

DEFAULT_BREATH_S = 10.0  # the coach's default breath (4 s in, 6 s out); speech rate 1:1 there
MIN_RATE_WPM, MAX_RATE_WPM = 100, 220
LIVE_STALE_S = 0.1  # seconds without a new live sample before the tick's pitch takes over


def rate_for_pace(base_wpm: int, breath_s: float) -> int:
    """Speech follows the breath: a slower breath gets slower speech, in 5-wpm steps."""
    rate = base_wpm * DEFAULT_BREATH_S / max(breath_s, 1e-3)
    rate = min(max(rate, MIN_RATE_WPM), MAX_RATE_WPM)
    return int(5 * round(rate / 5))


class AudioSink:
    """Turns the coach's events and feedback into what the patient hears.

    - `say` (`phrase`, `at`): the phrase's clip is queued to start at session time `at`.
    - `setting` `volume` (0..1): master volume, immediately; `tone_volume` (0..1): the
      tone's own gain under it; `pace` (`[inhale_s, exhale_s]`,
      a dict of those, or breath seconds): speech re-rendered at a matching rate in the
      background.
    - `feedback`: the tone's loudness and cue at every control tick, and its pitch: from
      the live pressure slot once the wiring has called `follow_live` (the pitch then moves
      within an audio block of each sample, between ticks), else from the tick.

    With a `WavSink` every event and tick first renders the file up to its time, so the
    WAV holds exactly what the speaker would have played, sample for sample.
    """

    def __init__(
        self,
        mixer: Mixer,
        bank: PhraseBank,
        shaper: ToneShaper,
        *,
        wav: WavSink | None = None,
        output: DeviceOutput | None = None,
        base_rate_wpm: int = 150,
    ) -> None:
        self.mixer = mixer
        self.bank = bank
        self.shaper = shaper
        self.wav = wav
        self.output = output
        self.base_rate_wpm = base_rate_wpm
        self.spoken: list[tuple[float, str, float]] = []  # (at, phrase key, duration)
        self._last_t = 0.0
        self._tick_frame = 0
        self._speech_end = 0.0
        self._live: LivePressure | None = None
        self._calibration: Callable[[], Any] | None = None
        self._live_count = -1
        self._live_seen_t = -math.inf
        self._cal_of: tuple[Any, tuple[float, float]] = (None, (0.0, 0.0))

    @classmethod
    def for_config(
        cls,
        cfg: AudioConfig,
        bank: PhraseBank,
        *,
        wav_path: str | Path | None = None,
        device: bool = False,
    ) -> AudioSink:
        """The usual assembly: a mixer at the configured rate, to a WAV file or the speaker."""
        mixer = Mixer(cfg.sample_rate, volume=cfg.volume)
        shaper = ToneShaper(ToneMapping(cfg.tone_rest_hz, cfg.tone_target_hz), always_on=cfg.tone_always_on)
        wav = WavSink(wav_path, mixer) if wav_path else None
        output = None
        if device:
            output = DeviceOutput(mixer, cfg.output_device, cfg.block_size).start()
        return cls(mixer, bank, shaper, wav=wav, output=output, base_rate_wpm=cfg.speech_rate_wpm)

    # -- Sink ---------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        # Only control ticks move the WAV on: a `say` may be emitted ahead of its `at`,
        # and rendering up to it would apply the tone's next ticks too late.
        if event.kind == "say":
            self.say(str(event.data["phrase"]), float(event.data.get("at", event.t)))
        elif event.kind == "setting":
            self._setting(str(event.data.get("setting")), event.data.get("value"))

    def feedback(self, fb: Feedback) -> None:
        self._advance(fb.t)
        self.mixer.set_tone(self.shaper.update(fb, self._live_calibration(fb.t)))

    # -- the live pitch ---------------------------------------------------------------------------
    def follow_live(self, rate_hz: float, calibration: Callable[[], Any]) -> LivePressure:
        """A new live pressure slot for the tone (one per session): the sensor side writes it,
        the audio callback reads it. `calibration()` gives the coach's current calibration
        (rest_cmh2o, mvc_cmh2o; None before it is measured): what a pressure means."""
        slot = LivePressure(rate_hz)
        self._live, self._calibration = slot, calibration
        self._live_count, self._live_seen_t = -1, -math.inf
        self.mixer.tone.slot = slot
        return slot

    def _live_calibration(self, t: float) -> tuple[float, float] | None:
        """(rest, MVC) while the live slot is fresh; None sends the pitch of the tick instead."""
        slot, calibration = self._live, self._calibration
        if slot is None or calibration is None:
            return None
        if slot.count != self._live_count:
            self._live_count, self._live_seen_t = slot.count, t
        if slot.value is None or t - self._live_seen_t > LIVE_STALE_S:
            return None  # the sampler stopped: the pitch falls back to the coach's ticks
        cal = calibration()
        if cal is None:
            return None
        if cal is not self._cal_of[0]:  # a (frozen) calibration is read once, not every tick
            self._cal_of = (cal, (float(cal.rest_cmh2o), float(cal.mvc_cmh2o)))
        return self._cal_of[1]

    # -- actions --------------------------------------------------------------------------------
    def say(self, key: str, at: float) -> bool:
        try:
            clip = self.bank.clip(key)
        except (KeyError, SpeechError) as exc:
            log.error("cannot say %r: %s", key, exc)
            return False
        if self.wav is not None:
            frame = frames_for(at, self.mixer.sample_rate)
        else:
            # Live: session time maps to output frames through the latest control tick
            # (its time and the frame the mixer was at then). A prompt already due plays
            # in the next block.
            frame = self._tick_frame + frames_for(at - self._last_t, self.mixer.sample_rate)
        queued = self.mixer.schedule(clip.pcm, frame, key)
        if queued:
            self.spoken.append((at, key, clip.duration_s))
            self._speech_end = max(self._speech_end, at + clip.duration_s)
        return queued

    def _setting(self, name: str, value: Any) -> None:
        if name in ("volume", "tone_volume"):
            try:
                volume = float(value)
            except (TypeError, ValueError):
                log.error("setting %s: not a number: %r", name, value)
                return
            setattr(self.mixer, name, min(max(volume, 0.0), 1.0))
        elif name == "pace":
            breath_s = _breath_seconds(value)
            if breath_s is None:
                log.error("setting pace: cannot read %r", value)
                return
            # In simulation no time passes while rendering, and a background swap would
            # make the session depend on thread timing: render in step there.
            self.bank.set_rate(rate_for_pace(self.base_rate_wpm, breath_s), wait=self.wav is not None)

    def _advance(self, t: float) -> None:
        if t > self._last_t:
            self._last_t = t
            self._tick_frame = self.mixer.frame_now()
        if self.wav is not None:
            self.wav.render_until(t)

    def close(self, t_end: float | None = None) -> None:
        """Finish: a WAV is rendered until the last phrase has been spoken, then closed."""
        if self.wav is not None:
            end = max(t_end if t_end is not None else self._last_t, self._speech_end) + 0.25
            self.wav.render_until(end)
            self.wav.close()
        if self.output is not None:
            self.output.stop()


def _breath_seconds(value: Any) -> float | None:
    if isinstance(value, dict):
        try:
            return float(value["inhale_s"]) + float(value["exhale_s"])
        except (KeyError, TypeError, ValueError):
            return None
    if isinstance(value, list | tuple):  # the coach sends [inhale_s, exhale_s]
        try:
            return float(sum(float(v) for v in value))
        except (TypeError, ValueError):
            return None
    if hasattr(value, "breath_s"):
        return float(value.breath_s)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def prepare_speech(
    lang: str,
    cfg: AudioConfig,
    cache_dir: str | Path | None = None,
    keys: Iterable[str] | None = None,
    pack: VoicePack | None = None,
) -> PhraseBank:
    """Every phrase of `lang` (or just `keys`) rendered before a session starts; with a
    voice pack its recordings where it has them."""
    from appliance.voice.phrases import Catalogue

    catalogue = Catalogue.load(lang)
    renderer = SpeechRenderer(cache_dir)
    bank = PhraseBank(
        catalogue,
        renderer,
        lang=lang,
        rate_wpm=cfg.speech_rate_wpm,
        sample_rate=cfg.sample_rate,
        pack=pack,
    )
    try:
        bank.prepare(keys)
    finally:
        renderer.close()  # the pyttsx3 worker is not needed once everything is cached
    return bank


def wav_audio(
    cfg: AudioConfig, lang: str, wav_path: str | Path, cache_dir: str | Path | None = None
) -> tuple[AudioSink, RenderedTiming]:
    """An `AudioSink` writing `wav_path`, and the measured phrase timing for the coach.

    Pass the sink to the session's sinks and the timing as its `timing`; call
    `sink.close(session_seconds)` at the end so the last phrase is in the file.
    """
    bank = prepare_speech(lang, cfg, cache_dir)
    return AudioSink.for_config(cfg, bank, wav_path=wav_path), RenderedTiming(bank)


def device_audio(cfg: AudioConfig, lang: str, cache_dir: str | Path | None = None) -> tuple[AudioSink, RenderedTiming]:
    """An `AudioSink` on the sound card (`cfg.output_device`), and the measured timing.

    Without a sound card it runs silently and retries every few seconds. The listener
    reads `sink.mixer.playback_state()`; `sink.close()` stops the stream.
    """
    bank = prepare_speech(lang, cfg, cache_dir)
    return AudioSink.for_config(cfg, bank, device=True), RenderedTiming(bank)
