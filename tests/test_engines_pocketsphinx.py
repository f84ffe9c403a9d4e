"""pocketsphinx (English, the light engine) with the real English command vocabulary."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pulse_fixture import FLITE_EN, have_tools, normalize_level, synthesize, voices_for

from appliance.commands import Command
from appliance.voice.engines import PocketsphinxEngine
from appliance.voice.listener import CommandDetector, Vocabulary, build_engine, detect_in_samples

pytestmark = pytest.mark.skipif(not have_tools("espeak-ng", "flite", "sox"), reason="synthesizers needed")

SR = 16000
SENTENCES = [
    "turn it up a little louder please",
    "we will continue after the break",
    "can you repeat the question please",
    "I think we should stop by the shop later",
    "the next train leaves at noon",
    "how are you doing today",
]


@pytest.fixture(scope="module")
def en() -> Vocabulary:
    return Vocabulary.load("en")


@pytest.fixture(scope="module")
def engine(en):
    return build_engine("pocketsphinx", "en", en)


def spoken(text, voice) -> np.ndarray:
    pad = np.zeros(int(0.4 * SR), np.float32)
    return np.concatenate([pad, normalize_level(synthesize(text, voice)), pad])


def test_words_missing_from_the_dictionary_are_left_out():
    eng = PocketsphinxEngine(["stop", "zzqxv"], ["weather"])
    assert eng.phrases == ["stop"]
    assert eng.has_confidence is False


def test_every_command_said_by_flite_is_heard_as_itself_or_not_at_all(engine, en):
    rng = random.Random(9)
    right = 0
    for cmd in Command:
        phrase = rng.choice([p for p, c in en.phrases.items() if c is cmd])
        voice = rng.choice(FLITE_EN)
        heard = detect_in_samples(CommandDetector(engine, en), spoken(phrase, voice))
        assert [h.command for h in heard] in ([cmd], []), (phrase, voice.label, heard)
        right += len(heard) == 1
    assert right >= len(Command) - 1


def test_sentences_with_command_words_in_them_are_not_commands(engine, en):
    voices = voices_for("en")
    for i, sentence in enumerate(SENTENCES):
        heard = detect_in_samples(CommandDetector(engine, en), spoken(sentence, voices[i % len(voices)]))
        assert heard == [], sentence
