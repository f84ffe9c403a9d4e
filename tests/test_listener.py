"""The listener's rules, without a microphone: a scripted engine, real tone removal and VAD."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.commands import Command
from appliance.config import ConfigError, DeviceConfig, VoiceConfig
from appliance.voice.engines import Hypothesis, WordHit
from appliance.voice.listener import (
    LANGUAGES,
    CommandDetector,
    Listener,
    Vocabulary,
    detect_in_samples,
    recognizer_status,
)
from appliance.voice.tone_removal import ToneRemover

SR = 16000


class ScriptedEngine:
    """Hears `text` while the audio clock is inside [start, end) of a script line."""

    name = "scripted"
    has_confidence = True

    def __init__(self, script: list[tuple[float, float, str]], confidence: float = 0.95) -> None:
        self.script = sorted(script)
        self.confidence = confidence
        self.fed_s = 0.0
        self.consumed = 0  # script lines already closed into a final result

    @property
    def current(self) -> str:
        started = [text for start, _end, text in self.script[self.consumed :] if start <= self.now()]
        return started[-1] if started else ""

    def now(self) -> float:
        """The stream time; `run` points this at the detector's clock (it feeds only sound)."""
        return self.fed_s

    def feed(self, pcm: np.ndarray) -> Hypothesis:
        self.fed_s += len(pcm) / SR
        return Hypothesis(self.current)

    def finish(self) -> Hypothesis:
        text = self.current
        self.consumed = sum(1 for start, _e, _t in self.script if start <= self.now())
        words = tuple(WordHit(w, self.confidence) for w in text.split())
        return Hypothesis(text, words, final=True)

    def reset(self) -> None:
        self.consumed = len(self.script)

    def known_words(self, words):
        return list(words)


@dataclass
class FakeMixer:
    tone_hz: float | None = None
    tone_amplitude: float = 0.0
    speaking: bool = False
    speech_phrase: str | None = None

    def playback_state(self):
        return (self.tone_hz, self.tone_amplitude, self.speaking, self.speech_phrase)


def sound(spans: list[tuple[float, float]], total_s: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """Noise bursts standing in for speech: loud where someone talks, near-silent elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1e-5, int(total_s * SR)).astype(np.float32)
    for a, b in spans:
        x[int(a * SR) : int(b * SR)] += rng.normal(0, level, int(b * SR) - int(a * SR)).astype(np.float32)
    return x


@pytest.fixture(scope="module")
def en() -> Vocabulary:
    return Vocabulary.load("en")


def run(engine, vocab, audio, mixer=None, rules=None, phrase_text=None):
    det = CommandDetector(engine, vocab, rules, mixer, phrase_text)
    engine.now = lambda: det.t
    return det, detect_in_samples(det, audio)


def test_pause_acts_on_the_stable_partial_within_400_ms_of_the_word_end(en):
    engine = ScriptedEngine([(0.75, 1.0, "pause")])
    det, heard = run(engine, en, sound([(0.5, 1.0)], 3.0))
    assert [h.command for h in heard] == [Command.PAUSE]
    # The end-pointer of Vosk would wait 1.5 s or more; we act on the partial.
    assert heard[0].t - 1.0 <= 0.4
    assert heard[0].confidence == pytest.approx(0.95)


def test_a_command_word_inside_a_sentence_is_not_a_command(en):
    engine = ScriptedEngine([(0.6, 0.9, "stop"), (0.9, 2.0, "stop weather people")])
    _, heard = run(engine, en, sound([(0.5, 2.0)], 3.5))
    assert heard == []


def test_unsure_recognition_is_rejected(en):
    engine = ScriptedEngine([(0.7, 1.0, "louder")], confidence=0.4)
    det, heard = run(engine, en, sound([(0.5, 1.0)], 2.5))
    assert heard == []
    assert "confidence" in det.rejected[0].reason


def test_fillers_never_become_commands(en):
    for text in ["start weather", *en.fillers[:5]]:
        _, heard = run(ScriptedEngine([(0.7, 1.0, text)]), en, sound([(0.5, 1.0)], 2.5))
        assert heard == [], text


def test_while_the_device_speaks_only_a_sure_stop_is_heard(en):
    mixer = FakeMixer(speaking=True, speech_phrase="Breathe in slowly.")
    _, heard = run(ScriptedEngine([(0.7, 1.0, "pause")], 0.99), en, sound([(0.5, 1.0)], 2.5), mixer)
    assert heard == []
    _, heard = run(ScriptedEngine([(0.7, 1.0, "stop")], 0.8), en, sound([(0.5, 1.0)], 2.5), mixer)
    assert heard == []
    _, heard = run(ScriptedEngine([(0.7, 1.0, "stop")], 0.95), en, sound([(0.5, 1.0)], 2.5), mixer)
    assert [h.command for h in heard] == [Command.STOP]


def test_the_prompt_is_still_arriving_just_after_the_mixer_finished(en):
    class EndsSpeaking(FakeMixer):
        calls = 0

        def playback_state(self):
            self.calls += 1
            return (None, 0.0, self.calls <= 16, "x")  # 16 blocks of 50 ms: speaks until 0.8 s

    _, heard = run(ScriptedEngine([(0.9, 1.0, "pause")], 0.99), en, sound([(0.8, 1.0)], 2.5), EndsSpeaking())
    assert heard == []  # heard ~1.3 s: inside the 0.7 s echo tail after 0.8 s
    _, heard = run(ScriptedEngine([(2.0, 2.2, "pause")], 0.99), en, sound([(1.9, 2.2)], 3.5), EndsSpeaking())
    assert [h.command for h in heard] == [Command.PAUSE]


def test_the_device_saying_stop_itself_is_not_obeyed(en):
    texts = {"cue.stop_jumping": "^Stop hopping, and let go."}
    mixer = FakeMixer(speaking=True, speech_phrase="cue.stop_jumping")
    _, heard = run(
        ScriptedEngine([(0.7, 1.0, "stop")], 0.99), en, sound([(0.5, 1.0)], 2.5), mixer, phrase_text=texts.__getitem__
    )
    assert heard == []


def test_long_sound_that_decoded_to_a_bare_command_is_a_sentence(en):
    # "turn it up a little louder please": the garbage path missed, only "louder" came out.
    engine = ScriptedEngine([(1.8, 2.4, "louder")])
    det, heard = run(engine, en, sound([(0.5, 2.4)], 4.0))
    assert heard == []
    assert "too long" in det.rejected[0].reason


def test_the_feedback_tone_does_not_keep_an_utterance_open(en):
    mixer = FakeMixer(tone_hz=440.0, tone_amplitude=0.14)
    audio = sound([(0.5, 1.0)], 3.0)
    t = np.arange(len(audio)) / SR
    audio = audio + (0.14 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    engine = ScriptedEngine([(0.75, 1.0, "pause")])
    _, heard = run(engine, en, audio, mixer)
    assert [h.command for h in heard] == [Command.PAUSE]
    assert heard[0].t - 1.0 <= 0.45


def test_the_real_mixer_state_object_is_understood(en):
    audio_mod = pytest.importorskip("appliance.voice.audio")
    state = audio_mod.PlaybackState(tone_hz=None, tone_amplitude=0.0, speaking=True, speech_phrase="session.help")

    class Mixer:
        def playback_state(self):
            return state

    _, heard = run(ScriptedEngine([(0.7, 1.0, "pause")], 0.99), en, sound([(0.5, 1.0)], 2.5), Mixer())
    assert heard == []  # speaking: pause is not taken


# --- vocabularies ----------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_command_the_coach_accepts_can_be_said_in_each_language(lang):
    vocab = Vocabulary.load(lang)
    assert set(vocab.phrases.values()) == set(Command)
    assert not set(vocab.decoys) & set(vocab.phrases)
    assert not set(vocab.fillers) & set(vocab.phrases)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_taught_start_phrase_is_not_start_because_it_sounds_like_stop(lang):
    vocab = Vocabulary.load(lang)
    assert vocab.first_phrase(Command.START) != "start"
    assert vocab.phrases["start"] is Command.START  # what patients say anyway
    assert vocab.phrases["stop"] is Command.STOP


def test_a_bad_vocabulary_names_file_key_and_value(tmp_path: Path):
    bad = tmp_path / "commands-xx.toml"
    bad.write_text('[commands]\nstop = ["stop"]\njump = ["jump"]\n')
    with pytest.raises(ConfigError) as err:
        Vocabulary.load("xx", bad)
    assert str(bad) in str(err.value) and "commands.jump" in str(err.value) and "jump" in str(err.value)
    bad.write_text('[commands]\nstop = ["stop"]\npause = ["stop"]\n')
    with pytest.raises(ConfigError, match="already means 'stop'"):
        Vocabulary.load("xx", bad)


# --- fallbacks -------------------------------------------------------------------------


def test_without_the_dutch_model_the_listener_hears_english_commands_and_says_why(tmp_path: Path, caplog):
    listener = Listener(lambda *a: None, "nl", "vosk", model_dir=tmp_path / "none")
    assert listener.detector is not None and listener.detector.vocabulary.lang == "en"
    assert listener.detector.engine.name == "pocketsphinx"
    assert listener.fallback.startswith("no recognizer for nl: no Vosk model")
    assert sum("English only" in r.message for r in caplog.records) == 1
    # the device's own Dutch prompts are still known, so "stop" inside one is not obeyed
    assert listener.detector.phrase_text is not None
    assert listener.detector.phrase_text("session.welcome").startswith("Welkom")


def test_without_any_recognizer_the_listener_says_why_and_does_not_raise(tmp_path: Path, caplog):
    heard = []
    listener = Listener(lambda *a: heard.append(a), "nl", "vosk", model_dir=tmp_path / "none",
                        vocabulary=Vocabulary.load("nl"))  # this vocabulary and no other
    assert listener.available is False
    assert "no Vosk model" in listener.reason
    assert listener.start() is False
    listener.stop()
    assert sum("voice commands off" in r.message for r in caplog.records) == 1


def test_selftest_learns_which_languages_have_a_recognizer(tmp_path: Path):
    status = recognizer_status(DeviceConfig(), state_dir=tmp_path)
    assert set(status) == {*LANGUAGES, "en (pocketsphinx)"}
    assert all(not status[lang].ok and status[lang].detail.startswith("no Vosk model") for lang in LANGUAGES)
    assert status["nl"].fix.startswith("install the nl model")
    assert status["en (pocketsphinx)"].ok  # the fallback the device runs on
    light = DeviceConfig(voice=VoiceConfig(engine="pocketsphinx"))
    status = recognizer_status(light, state_dir=tmp_path)
    assert set(status) == set(LANGUAGES)
    assert status["en"].ok and status["en"].detail.startswith("pocketsphinx")
    assert not status["nl"].ok and "English" in status["nl"].detail


# --- tone removal ----------------------------------------------------------------------


def residual_db(signal: np.ndarray, tone_hz) -> float:
    remover = ToneRemover()
    hz = np.broadcast_to(np.asarray(tone_hz, dtype=float), signal.shape)
    out = np.concatenate(
        [remover.process(signal[i : i + 800], float(hz[i]), (i + 800) / SR) for i in range(0, len(signal), 800)]
    )
    settled = out[SR // 2 :]  # after the first half second
    return 20 * np.log10(np.sqrt(np.mean(settled**2)) / np.sqrt(np.mean(signal[SR // 2 :] ** 2)))


@settings(max_examples=15, deadline=None)
@given(st.floats(150.0, 1500.0), st.floats(0.01, 0.5))
def test_a_steady_feedback_tone_is_removed_by_at_least_40_db(freq, amp):
    t = np.arange(2 * SR) / SR
    assert residual_db(amp * np.sin(2 * np.pi * freq * t + 0.3), freq) < -40


def test_a_gliding_tone_with_its_cue_partials_is_removed_by_at_least_20_db():
    n = 3 * SR
    f = np.linspace(220.0, 660.0, n)  # the pitch rises as the patient squeezes
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = 0.2 * np.sin(phase) + 0.05 * np.sin(1.5 * phase) + 0.03 * np.sin(3 * phase)
    # The mixer reports the pitch it plays; the microphone hears it 30 ms later.
    reported = np.concatenate([f[480:], np.full(480, f[-1])])
    assert residual_db(x, reported) < -20


def test_without_a_tone_the_voice_passes_untouched_one_frame_late():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.1, SR).astype(np.float32)
    remover = ToneRemover()
    out = np.concatenate([remover.process(x[i : i + 800], None, (i + 800) / SR) for i in range(0, len(x), 800)])
    d = remover.delay_samples
    assert np.allclose(out[d:], x[:-d], atol=1e-6)
    assert np.all(out[:d] == 0)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_word_the_help_prompt_teaches_is_a_command_phrase(lang):
    from appliance.voice.phrases import Catalogue

    taught = Catalogue.load(lang).text("session.help").split(":", 1)[1]
    for joiner in ("Of:", "Or:", ".", " or ", " of "):  # "..., herhaal. Of: langzamer, ..."
        taught = taught.replace(joiner, ",")
    words = [w.strip() for w in taught.split(",") if w.strip()]
    vocab = Vocabulary.load(lang)
    assert len(words) >= 10
    assert [w for w in words if w.lower() not in vocab.phrases] == []


def test_without_a_microphone_it_is_said_once_however_often_the_service_retries(caplog):
    listener = Listener(lambda *a: None, "en", "pocketsphinx", input_device="no such microphone 4711")
    assert listener.detector is not None  # the recognizer is fine; only the microphone is missing
    for _ in range(3):
        assert listener.start() is False
    assert listener.available is False and listener.reason.startswith("no microphone")
    assert sum("voice commands off" in r.message for r in caplog.records) == 1
    listener.stop()
