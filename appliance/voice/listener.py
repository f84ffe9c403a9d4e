"""Hears the patient's spoken commands and never the device itself.

Microphone (16 kHz mono, its own thread) -> feedback tone removed -> recognizer engine
(closed grammar + garbage path) -> acceptance rules -> `on_command(cmd, text, confidence)`.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from appliance.commands import Command
from appliance.config import DEFAULT_STATE_DIR, ConfigError, DeviceConfig, read_toml
from appliance.voice.echo_cancel import EchoCanceller, has_reference
from appliance.voice.engines import (
    SAMPLE_RATE,
    EngineUnavailable,
    Hypothesis,
    PocketsphinxEngine,
    RecognizerEngine,
    VoskEngine,
    normalize,
)
from appliance.voice.tone_removal import ToneRemover

if TYPE_CHECKING:
    from appliance.voice.audio import PlaybackState, PortAudioStream

log = logging.getLogger(__name__)

PHRASES_DIR = Path(__file__).parent / "phrases"
LANGUAGES = ("nl", "en")
BLOCK = 800
"""Samples per microphone block (50 ms): small enough to act quickly on a finished word."""


# --- what the listener is told about the device's own sound ----------------------------


PlaybackTuple = tuple[float | None, float, bool, str | None]
"""(tone_hz or None, tone_amplitude, speaking, speech_phrase or None)."""


class PlaybackMonitor(Protocol):
    """What the mixer is playing right now (implemented by `voice.audio.Mixer`)."""

    def playback_state(self) -> PlaybackState | PlaybackTuple:
        """The mixer's `PlaybackState`, or the same as a plain 4-tuple."""
        ...


def playback_tuple(state: PlaybackState | PlaybackTuple) -> PlaybackTuple:
    """The mixer's `PlaybackState` (a dataclass) or a plain 4-tuple, as a tuple."""
    if not isinstance(state, tuple):
        return (state.tone_hz, state.tone_amplitude, state.speaking, state.speech_phrase)
    tone_hz, amplitude, speaking, phrase = state
    return (tone_hz, amplitude, speaking, phrase)


class Silence:
    """A monitor for when nothing is played (tests, `appliance listen` without a mixer)."""

    def playback_state(self) -> tuple[float | None, float, bool, str | None]:
        return (None, 0.0, False, None)


# --- the vocabulary --------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """One language's command phrases, decoys and filler words (phrases/commands-LANG.toml)."""

    lang: str
    phrases: dict[str, Command]
    decoys: tuple[str, ...]
    fillers: tuple[str, ...]

    @classmethod
    def load(cls, lang: str, path: Path | None = None) -> Vocabulary:
        path = path or PHRASES_DIR / f"commands-{lang}.toml"
        data = read_toml(path)
        table = data.get("commands")
        if not isinstance(table, dict):
            raise ConfigError(path, "commands", table, "must be a table of command = [phrases]")
        phrases: dict[str, Command] = {}
        for name, items in table.items():
            try:
                cmd = Command.parse(name)
            except ValueError as exc:
                raise ConfigError(path, f"commands.{name}", items, str(exc)) from None
            if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip() for p in items):
                raise ConfigError(path, f"commands.{name}", items, "must be a non-empty list of phrases")
            for phrase in items:
                key = normalize(phrase)
                if key in phrases and phrases[key] is not cmd:
                    raise ConfigError(
                        path,
                        f"commands.{name}",
                        phrase,
                        f"already means {phrases[key].value!r}; a phrase has one meaning",
                    )
                phrases[key] = cmd
        missing = [c.value for c in Command if c not in phrases.values()]
        if missing:
            raise ConfigError(path, "commands", sorted(table), f"no phrases for {', '.join(missing)}")
        garbage = data.get("garbage", {})
        decoys = tuple(normalize(d) for d in garbage.get("decoys", []))
        fillers = tuple(normalize(f) for f in garbage.get("fillers", []))
        for key, words in (("garbage.decoys", decoys), ("garbage.fillers", fillers)):
            clash = [w for w in words if w in phrases]
            if clash:
                raise ConfigError(path, key, clash, "is also a command phrase")
        return cls(lang, phrases, decoys, fillers)

    def first_phrase(self, cmd: Command) -> str:
        return next(p for p, c in self.phrases.items() if c is cmd)


def catalogue_text(lang: str) -> Callable[[str], str] | None:
    """Key -> spoken text from the phrase catalogue (the mixer reports prompts by key)."""
    try:
        from appliance.voice.phrases import Catalogue

        return Catalogue.load(lang).text
    except Exception:  # no catalogue for this language (e.g. the Korean test vocabulary)
        return None


# --- choosing and building the engine --------------------------------------------------


def default_model_dir(lang: str, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    """Where install.sh unpacks the language's Vosk model."""
    return state_dir / "models" / lang


def build_engine(
    engine: str, lang: str, vocabulary: Vocabulary, model_dir: Path | None = None, state_dir: Path = DEFAULT_STATE_DIR
) -> RecognizerEngine:
    """The configured engine for `lang`; raises `EngineUnavailable` saying why not."""
    phrases = list(vocabulary.phrases) + list(vocabulary.decoys)
    if engine == "vosk":
        return VoskEngine(model_dir or default_model_dir(lang, state_dir), phrases, vocabulary.fillers)
    if engine == "pocketsphinx":
        if lang != "en" and model_dir is None:
            raise EngineUnavailable(f"pocketsphinx ships an English model only; no model for {lang!r}")
        return PocketsphinxEngine(phrases, vocabulary.fillers, model_dir=model_dir, warps=POCKETSPHINX_WARPS)
    raise EngineUnavailable(f"unknown recognizer engine {engine!r} (known: vosk, pocketsphinx)")


POCKETSPHINX_WARPS = (1.0, 0.88, 1.18)
"""Frequency warps pocketsphinx decodes each utterance with, the best-scoring one winning
(`PocketsphinxEngine`). On the tuning half of bench/voice.py (voices shifted -3 to +3.5
semitones, 72 commands per condition, with `MIN_PHONE_MARGIN`) they took clean commands
from 46 to 52, at 0 dB with the reference from 25 to 29 and without it from 26 to 32, for
two more decoders (~9 MB each) and their CPU while someone speaks."""

FALLBACK_LANG = "en"
"""Without a model for the patient's language the device still hears English commands
through pocketsphinx, whose English model comes with the package (install.sh, issue 18)."""


@dataclass(frozen=True)
class RecognizerStatus:
    """One language's recognizer as the selftest reports it."""

    lang: str
    ok: bool
    detail: str
    """"pocketsphinx, 32 phrases" when ok, else why not."""
    fix: str = ""
    """What a technician does about it (empty when ok or nothing to do)."""


def what_to_do(engine: str, lang: str, reason: str) -> str:
    """The one step that makes `lang`'s recognizer work, from why it does not."""
    if "install " in reason:  # the reason names the package already (a missing library)
        return ""
    if engine == "vosk":
        return (f"install the {lang} model: sudo ./install.sh --only models "
                f"(without network: --model {lang}=vosk-model-small-{lang}-*.zip)")
    if lang != "en":
        return f'set [voice] engine = "vosk" and install the {lang} model (sudo ./install.sh --only models)'
    return "reinstall the voice packages: sudo ./install.sh --only venv"


def recognizer_status(config: DeviceConfig, state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, RecognizerStatus]:
    """For `appliance selftest`: each language's recognizer, and the English fallback's.

    Really loads each model and decodes a second of silence, so a corrupt model shows
    here. Never raises: whatever stops a recognizer is its status.
    """
    status: dict[str, RecognizerStatus] = {}
    tried = [(lang, config.voice.engine) for lang in LANGUAGES]
    if config.voice.engine != "pocketsphinx":
        tried.append((FALLBACK_LANG, "pocketsphinx"))
    for lang, engine_name in tried:
        model_dir = config.voice.model_dir if lang == config.language and engine_name == config.voice.engine else None
        key = lang if engine_name == config.voice.engine else f"{lang} ({engine_name})"
        engine: RecognizerEngine | None = None
        try:
            vocab = Vocabulary.load(lang)
            engine = build_engine(engine_name, lang, vocab, model_dir, state_dir)
            engine.feed(np.zeros(SAMPLE_RATE, dtype=np.int16))
            engine.finish()
            status[key] = RecognizerStatus(lang, True, f"{engine.name}, {len(getattr(engine, 'phrases', []))} phrases")
        except Exception as exc:  # EngineUnavailable, ConfigError, or a library that breaks
            reason = str(exc) if isinstance(exc, (EngineUnavailable, ConfigError)) else f"{type(exc).__name__}: {exc}"
            status[key] = RecognizerStatus(lang, False, reason, what_to_do(engine_name, lang, reason))
        finally:
            engine = None  # a Vosk model is large; let it go before loading the next
    return status


# --- acceptance ------------------------------------------------------------------------


# The second look's thresholds, chosen on the tuning half of bench/voice.py only (its
# --dump; 294 right and 42 wrong accepts), never on the held-out half:
MIN_MARGIN = -2.5
"""Right commands in quiet all scored above it; with the tone, most phantom commands
decoded from its residue ("resume", "pause") scored below."""
MAX_EXTRA_PHONES = 3
"""No right command drew more than 3 phones above its pronunciation; "prices are going up
again this year" taken for "progress report" drew 8 more."""
MIN_PHONE_MARGIN = -4.0
"""See `AcceptanceRules.min_phone_margin`; chosen on the tuning half (docs/voice-acceptance.md)."""
MIN_PHONE_RATIO_WITH_TONE = 0.45
"""While the tone plays, a command whose sound the phone loop hears as fewer than this
share of its phones is the tone's residue (175 of 180 right commands kept, 39 phantom
ones down to 7). Not in quiet: there, right commands went as low as 0.2."""


@dataclass(frozen=True)
class AcceptanceRules:
    min_confidence: float = 0.6
    speaking_min_confidence: float = 0.9
    """While the device speaks, only "stop", and only when the recognizer is this sure."""
    echo_tail_s: float = 0.7
    """The prompt is still arriving this long after the mixer finished (buffers, room)."""
    settle_s: float = 0.2
    """A command partial is acted on after this much silence following it."""
    end_silence_s: float = 0.5
    """Any utterance is closed after this much silence (Vosk's own end-pointer waits 1.5 s+)."""
    preroll_s: float = 0.3
    """The engine hears only sound (with this much before its onset): hours of room noise
    would drag pocketsphinx's cepstral mean away from speech (the first command after a
    quiet spell came out wrong: "pause" as "faster"), and cost a Pi Zero its CPU."""
    max_utterance_s: float = 8.0
    """Talk longer than this is closed and judged; a command is never that long."""
    min_voiced_s: float = 0.12
    """No sound, no command: a recognizer normalizes its input, so it can "hear" words in
    the faint residue of the removed tone; an utterance needs this much real sound."""
    seconds_per_word: float = 0.5
    slack_s: float = 0.3
    """A command of n words sounds for at most n * seconds_per_word + slack_s. Longer
    sound that still decoded to a bare command is a sentence whose other words the
    garbage path failed to absorb ("turn it up a little louder please" -> "louder")."""
    min_margin: float | None = MIN_MARGIN
    """The second look (engines that give `Hypothesis.evidence`, pocketsphinx): the command
    must explain the sound better than the best run of filler words by this much per
    frame. None: not checked."""
    max_extra_phones: int | None = MAX_EXTRA_PHONES
    """...and a free phone loop may hear at most this many phones more than the command's
    own pronunciation: more is a command word inside a longer sentence. None: not checked."""
    min_phone_ratio_with_tone: float | None = MIN_PHONE_RATIO_WITH_TONE
    """...and, while the feedback tone plays (and `tone_tail_s` after), at least this share
    of the command's phones. None: not checked."""
    min_phone_margin: float | None = MIN_PHONE_MARGIN
    """...and the command must explain the sound at most this much worse, per frame, than
    the free phone loop: a word that only sounds like a command ("fast" for "faster",
    "lighter" for "later") falls further below. None: not checked."""
    halting: frozenset[Command] = frozenset({Command.STOP, Command.PAUSE})
    """Commands `min_phone_margin` never refuses: taking one that was not said only halts
    the exercise (safe), while refusing one that was said leaves a patient who wants to
    stop unheard. Short words, they fall below the margin most often (a clean "stop" or
    "pause" by flite's slt: -9 to -10)."""
    tone_tail_s: float = 1.0


@dataclass(frozen=True)
class Heard:
    """An accepted command: stream time (s), command, the words heard, confidence."""

    t: float
    command: Command
    text: str
    confidence: float

    def as_json_dict(self) -> dict:
        return {
            "t": round(self.t, 3),
            "command": self.command.value,
            "text": self.text,
            "confidence": round(self.confidence, 3),
        }


@dataclass(frozen=True)
class Rejected:
    t: float
    text: str
    confidence: float
    reason: str


class VoiceActivity:
    """Energy detector on the tone-free signal. The noise floor is a low percentile of the
    last `memory_s` of frames, so it follows the room and the tone's residue within a
    second, yet a short command never lifts it. Below `floor_min` (-60 dBFS) nothing counts:
    that is quieter than any room."""

    def __init__(self, frame: int = 320, ratio: float = 3.0, floor_min: float = 1e-3, memory_s: float = 1.5) -> None:
        self.frame = frame
        self.ratio = ratio
        self.floor_min = floor_min
        self.floor = floor_min
        self._recent: deque[float] = deque(maxlen=max(1, int(memory_s * SAMPLE_RATE / frame)))

    def frames(self, block: np.ndarray) -> np.ndarray:
        """Per 20 ms frame: True where someone (or something) is sounding."""
        n = len(block) // self.frame
        if n == 0:
            return np.zeros(0, dtype=bool)
        rms = np.sqrt(np.mean(block[: n * self.frame].reshape(n, self.frame).astype(np.float64) ** 2, axis=1))
        voiced = np.zeros(n, dtype=bool)
        for i, r in enumerate(rms):
            self._recent.append(float(r))
            self.floor = max(self.floor_min, float(np.percentile(self._recent, 20)))
            voiced[i] = r > self.floor * self.ratio
        return voiced


class CommandDetector:
    """The listener's logic without the microphone: blocks in, accepted commands out.

    Acts on a stable partial result: when the engine's partial text is exactly a command
    phrase and `settle_s` of silence has followed it, the utterance is closed at once
    (the final result brings word confidences) instead of waiting for Vosk's end-pointer.

    The device's own sound is removed by an echo canceller fed with the mixer's rendered
    output when the monitor offers it (`Mixer.output_reference`) and `echo_cancel` is on;
    otherwise by the notch that follows the reported pitch.
    """

    def __init__(
        self,
        engine: RecognizerEngine,
        vocabulary: Vocabulary,
        rules: AcceptanceRules | None = None,
        monitor: PlaybackMonitor | None = None,
        phrase_text: Callable[[str], str] | None = None,
        echo_cancel: bool = True,
    ) -> None:
        self.engine = engine
        self.vocabulary = vocabulary
        self.rules = rules or AcceptanceRules()
        self.monitor = monitor or Silence()
        self.phrase_text = phrase_text or catalogue_text(vocabulary.lang)
        self.tone = ToneRemover()
        self.echo = EchoCanceller(self.monitor) if echo_cancel and has_reference(self.monitor) else None
        self.vad = VoiceActivity()
        self.t = 0.0
        self.rejected: list[Rejected] = []
        self._speaking_until = -1.0
        self._tone_until = -1.0
        self._recent_prompts: list[tuple[float, str]] = []
        self._last_voice_t = -1.0
        self._utt_start: float | None = None
        self._utt_voiced_s = 0.0
        self._feeding = False
        self._preroll: deque[np.ndarray] = deque()
        self._preroll_n = 0
        self._partial = ""

    def process(self, block: np.ndarray, t_end: float | None = None) -> list[Heard]:
        """Feed one block of float32 (or int16) samples; `t_end` is its end in stream seconds."""
        if block.dtype == np.int16:
            block = block.astype(np.float32) / 32768.0
        self.t = t_end if t_end is not None else self.t + len(block) / SAMPLE_RATE
        tone_hz, _amplitude, speaking, phrase = playback_tuple(self.monitor.playback_state())
        if tone_hz is not None:
            self._tone_until = self.t + self.rules.tone_tail_s
        if speaking:
            self._speaking_until = self.t + self.rules.echo_tail_s
            if phrase:
                self._note_prompt(phrase)
        if self.echo is not None:
            cancelled = self.echo.process(block)  # always: the filter keeps following the path
            if self.echo.delay is None or self.t <= self._speaking_until:
                # Until the canceller has found the delay (the first second of sound), the
                # notch alone holds the tone. The device's own sentence is judged whole, as
                # the notch leaves it (too long to be a command): the short filter removes it
                # only in part (~13 dB), and the fragments it leaves sound like single
                # command words (pulse test).
                cancelled = np.asarray(block, dtype=np.float32)
            # The notch then takes what the canceller left of the tone (~20 dB down through
            # a room, still loud enough to keep the voice detector open while it glides).
            clean = self.tone.process(cancelled, tone_hz, self.t)
        else:
            clean = self.tone.process(block, tone_hz, self.t)
        voiced = self.vad.frames(clean)
        self._utt_voiced_s += float(voiced.sum()) * self.vad.frame / SAMPLE_RATE
        if voiced.any():
            last = int(np.flatnonzero(voiced)[-1])
            self._last_voice_t = self.t - (len(voiced) - 1 - last) * self.vad.frame / SAMPLE_RATE
            if self._utt_start is None:
                self._utt_start = self.t
        pcm = np.clip(clean * 32767, -32768, 32767).astype(np.int16)
        if not self._feeding:
            self._preroll.append(pcm)
            self._preroll_n += len(pcm)
            while self._preroll_n - len(self._preroll[0]) >= self.rules.preroll_s * SAMPLE_RATE:
                self._preroll_n -= len(self._preroll.popleft())
            if not voiced.any():
                return []
            self._feeding = True
            pcm = np.concatenate(self._preroll)
            self._preroll.clear()
            self._preroll_n = 0
        hyp = self.engine.feed(pcm)
        if hyp.final:
            return self._close(hyp)
        silence = self.t - self._last_voice_t
        if hyp.text != self._partial:
            self._partial = hyp.text
        if self._partial and self._partial in self.vocabulary.phrases and silence >= self.rules.settle_s:
            return self._close(self.engine.finish())
        if self._utt_start is not None and (
            silence >= self.rules.end_silence_s or self.t - self._utt_start > self.rules.max_utterance_s
        ):
            return self._close(self.engine.finish())
        return []

    def _note_prompt(self, phrase: str) -> None:
        text = phrase
        if self.phrase_text is not None:
            try:
                text = self.phrase_text(phrase)
            except (KeyError, ValueError):
                pass  # already text, not a catalogue key
        if not self._recent_prompts or self._recent_prompts[-1][1] != text:
            self._recent_prompts.append((self.t, normalize(re.sub(r"[^\w\s']", " ", text))))
        self._recent_prompts = [(t, p) for t, p in self._recent_prompts if t > self.t - 10.0]

    def _close(self, hyp: Hypothesis) -> list[Heard]:
        voiced_s = self._utt_voiced_s
        self._feeding = False
        self._partial = ""
        self._utt_start = None
        self._utt_voiced_s = 0.0
        if not hyp.text:
            return []
        verdict = self._judge(hyp, voiced_s)
        if isinstance(verdict, Rejected):
            self.rejected.append(verdict)
            log.debug("not a command: %r (%.2f): %s", verdict.text, verdict.confidence, verdict.reason)
            return []
        log.info("heard %s: %r (%.2f)", verdict.command.value, verdict.text, verdict.confidence)
        return [verdict]

    def _judge(self, hyp: Hypothesis, voiced_s: float) -> Heard | Rejected:
        text, conf = hyp.text, hyp.confidence
        cmd = self.vocabulary.phrases.get(text)
        if cmd is None:
            return Rejected(self.t, text, conf, "not exactly one command phrase")
        if voiced_s < self.rules.min_voiced_s:
            return Rejected(self.t, text, conf, f"only {voiced_s:.2f} s of sound: not spoken")
        longest = len(text.split()) * self.rules.seconds_per_word + self.rules.slack_s
        if voiced_s > longest:
            return Rejected(self.t, text, conf, f"{voiced_s:.1f} s of sound is too long for {text!r}")
        ev = hyp.evidence
        if ev is not None:
            if self.rules.max_extra_phones is not None and ev.extra_phones > self.rules.max_extra_phones:
                return Rejected(self.t, text, conf, f"{ev.phones} phones heard, {text!r} has {ev.expected}: "
                                "a longer sentence")
            ratio = self.rules.min_phone_ratio_with_tone
            if ratio is not None and self.t <= self._tone_until and ev.phones < ratio * ev.expected:
                return Rejected(self.t, text, conf, f"{ev.phones} phones heard, {text!r} has {ev.expected}: "
                                "the tone's residue")
            floor = self.rules.min_phone_margin
            if floor is not None and cmd not in self.rules.halting and ev.phone_margin < floor:
                return Rejected(self.t, text, conf, f"{ev.phone_margin:.1f} per frame below the phone loop: "
                                "only sounds like a command")
            if self.rules.min_margin is not None and ev.margin < self.rules.min_margin:
                return Rejected(self.t, text, conf, f"margin {ev.margin:.1f} per frame over other words: "
                                "not clearly a command")
        if self.t <= self._speaking_until:
            if cmd is not Command.STOP:
                return Rejected(self.t, text, conf, "the device is speaking; only stop is heard")
            if conf < self.rules.speaking_min_confidence:
                return Rejected(self.t, text, conf, "stop while speaking needs higher confidence")
            if any(f" {text} " in f" {prompt} " for _, prompt in self._recent_prompts[-2:]):
                return Rejected(self.t, text, conf, "the device's own prompt says it")
        elif conf < self.rules.min_confidence:
            return Rejected(self.t, text, conf, "confidence below threshold")
        return Heard(self.t, cmd, text, conf)


def open_detector(
    engine: str,
    lang: str,
    model_dir: Path | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    rules: AcceptanceRules | None = None,
    monitor: PlaybackMonitor | None = None,
    phrase_text: Callable[[str], str] | None = None,
    echo_cancel: bool = True,
    vocabulary: Vocabulary | None = None,
) -> tuple[CommandDetector, str]:
    """The patient's language's detector, or else English via pocketsphinx.

    Returns (detector, fallback): `fallback` says why the patient's language is not heard
    ("" when it is). Raises `EngineUnavailable`/`ConfigError` when neither works.
    """
    try:
        vocab = vocabulary or Vocabulary.load(lang)
        detector = CommandDetector(
            build_engine(engine, lang, vocab, model_dir, state_dir), vocab, rules, monitor, phrase_text, echo_cancel
        )
        return detector, ""
    except (EngineUnavailable, ConfigError) as exc:
        if (engine == "pocketsphinx" and lang == FALLBACK_LANG) or vocabulary is not None:
            raise
        reason = f"no recognizer for {lang}: {exc}"
    try:
        vocab = Vocabulary.load(FALLBACK_LANG)
        fallback_engine = build_engine("pocketsphinx", FALLBACK_LANG, vocab, None, state_dir)
    except (EngineUnavailable, ConfigError) as exc:
        raise EngineUnavailable(f"{reason}; and no English fallback: {exc}") from None
    # The device still speaks the patient's language: its prompts are known in that language.
    detector = CommandDetector(
        fallback_engine, vocab, rules, monitor, phrase_text or catalogue_text(lang), echo_cancel
    )
    return detector, f"{reason}; English commands via pocketsphinx"


# --- the microphone --------------------------------------------------------------------


OnCommand = Callable[[Command, str, float], None]


class Listener:
    """Microphone -> `CommandDetector` on a thread of its own -> `on_command(cmd, text, conf)`.

    Never raises into the coach: without a microphone or a model, `available` is False,
    `reason` says why (logged once) and the button drives the device.
    """

    def __init__(
        self,
        on_command: OnCommand,
        lang: str,
        engine: str = "vosk",
        model_dir: Path | None = None,
        monitor: PlaybackMonitor | None = None,
        rules: AcceptanceRules | None = None,
        input_device: str | int | None = None,
        state_dir: Path = DEFAULT_STATE_DIR,
        phrase_text: Callable[[str], str] | None = None,
        vocabulary: Vocabulary | None = None,
        echo_cancel: bool = True,
    ) -> None:
        self.on_command = on_command
        self.lang = lang
        self.input_device = input_device
        self.available = False
        self.reason = ""
        self.detector: CommandDetector | None = None
        self.fallback = ""
        """Why the patient's language is not heard and English is ("" when it is)."""
        self._blocks: queue.Queue[tuple[np.ndarray, float]] = queue.Queue(maxsize=200)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: PortAudioStream | None = None
        try:
            self.detector, self.fallback = open_detector(
                engine, lang, model_dir, state_dir, rules, monitor, phrase_text, echo_cancel, vocabulary
            )
        except (EngineUnavailable, ConfigError) as exc:
            self._unavailable(str(exc) if str(exc).startswith("no recognizer") else f"no recognizer for {lang}: {exc}")
            return
        if self.fallback:
            log.warning("voice commands in English only (%s)", self.fallback)

    @classmethod
    def from_config(
        cls, config: DeviceConfig, on_command: OnCommand, monitor: PlaybackMonitor | None = None, **kwargs
    ) -> Listener:
        voice = config.voice
        rules = AcceptanceRules(min_confidence=voice.min_confidence)
        return cls(
            on_command,
            kwargs.pop("lang", config.language),
            voice.engine,
            voice.model_dir,
            monitor,
            rules,
            voice.input_device,
            **kwargs,
        )

    def _unavailable(self, reason: str) -> None:
        self.available = False
        if reason != self.reason:  # said once, however often the service retries
            log.warning("voice commands off (%s); the button drives the device", reason)
        self.reason = reason

    def start(self) -> bool:
        """Open the microphone and start listening; False (and `reason`) if it cannot."""
        if self.detector is None:
            return False
        try:
            import sounddevice as sd

            stream = self._stream = sd.InputStream(
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="float32",
                blocksize=BLOCK,
                device=self.input_device,
                callback=self._on_audio,
            )
            stream.start()
        except Exception as exc:  # PortAudio reports a missing device in several ways
            self._stream = None
            self._unavailable(f"no microphone: {exc}")
            return False
        self.available = True
        if self.reason:
            log.warning("voice commands on again (microphone open)")
        self.reason = ""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="voice-listener", daemon=True)
        self._thread.start()
        return True

    def _on_audio(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        if status.input_overflow:
            log.debug("microphone overflow")
        try:
            self._blocks.put_nowait((indata[:, 0].copy(), time.monotonic()))
        except queue.Full:
            log.warning("listener is behind; a microphone block was dropped")

    def _run(self) -> None:
        assert self.detector is not None
        while not self._stop.is_set():
            try:
                block, _ = self._blocks.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                heard = self.detector.process(block)
            except Exception:
                log.exception("recognizer failed on a block; listening on")
                continue
            for h in heard:
                try:
                    self.on_command(h.command, h.text, h.confidence)
                except Exception:
                    log.exception("the command handler failed for %s", h.command.value)

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            except Exception:
                log.debug("closing the microphone failed", exc_info=True)
            self._stream = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None


def blocks(samples: np.ndarray, size: int = BLOCK) -> Iterator[np.ndarray]:
    for i in range(0, len(samples), size):
        yield samples[i : i + size]


def detect_in_samples(
    detector: CommandDetector,
    samples: np.ndarray,
    tail_s: float = 1.0,
    before_block: Callable[[float], None] | None = None,
) -> list[Heard]:
    """Run a whole recording through `detector` (plus `tail_s` of silence to close it).

    `before_block(t_end)` is told each block's end time first (a recorded reference
    follows the microphone this way)."""
    heard: list[Heard] = []
    padded = np.concatenate([np.asarray(samples, dtype=np.float32), np.zeros(int(tail_s * SAMPLE_RATE), np.float32)])
    t = 0.0
    for block in blocks(padded):
        t += len(block) / SAMPLE_RATE
        if before_block is not None:
            before_block(t)
        heard += detector.process(block, t)
    return heard
