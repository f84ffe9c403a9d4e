"""pocketsphinx (English, the light engine) with the real English command vocabulary."""

from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest
from pulse_fixture import ESPEAK_EN, FLITE_EN, have_tools, normalize_level, synthesize, voices_for

from appliance.commands import Command
from appliance.voice.engines import PocketsphinxEngine
from appliance.voice.listener import AcceptanceRules, CommandDetector, Vocabulary, build_engine, detect_in_samples

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


def test_each_warp_has_a_decoder_of_its_own_and_unwarped_comes_first():
    eng = PocketsphinxEngine(["stop"], ["weather"], warps=(0.88, 1.0, 1.18))
    assert eng.warps == (1.0, 0.88, 1.18)
    assert len(eng._decs) == 3


def test_a_deeper_voice_is_heard_through_a_warped_decoder(en):
    """"tone softer" by espeak-ng three semitones lower (formants too, as sox shifts them):
    the model's own frequency axis hears no command; the warped decoders hear it and win."""
    raw = (np.clip(spoken("tone softer", ESPEAK_EN[0]), -1, 1) * 32767).astype(np.int16).tobytes()
    fmt = ["-t", "raw", "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed"]
    out = subprocess.run(["sox", *fmt, "-", *fmt, "-", "pitch", "-300"], input=raw, check=True, capture_output=True)
    deeper = np.frombuffer(out.stdout, dtype=np.int16).astype(np.float32) / 32768.0
    unwarped = PocketsphinxEngine(list(en.phrases), en.fillers)
    warped = PocketsphinxEngine(list(en.phrases), en.fillers, warps=(0.88, 1.18))
    assert detect_in_samples(CommandDetector(unwarped, en), deeper) == []
    assert [h.command for h in detect_in_samples(CommandDetector(warped, en), deeper)] == [Command.TONE_SOFTER]


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


# --- the second look -------------------------------------------------------------------

# Said once, in a sentence: the grammar can only take each as its command word or fillers.
LONGER = [
    ("stop", "please stop the car at the corner"),
    ("help", "my neighbour will help me with the garden"),
    ("later", "we can talk about the weather later"),
    ("again", "the children are hungry again"),
]


def test_a_command_said_alone_is_looked_at_twice_and_fits(en):
    engine = PocketsphinxEngine(list(en.phrases), en.fillers)
    detector = CommandDetector(engine, en)
    judged = []
    judge = detector._judge
    detector._judge = lambda hyp, voiced: judged.append(hyp) or judge(hyp, voiced)
    heard = detect_in_samples(detector, spoken("stop", FLITE_EN[0]))
    assert [h.command for h in heard] == [Command.STOP]
    ev = judged[0].evidence
    assert ev is not None and ev.expected == 4  # S T AA P
    assert ev.extra_phones <= 3 and ev.margin > -2.5


def test_a_command_word_inside_a_longer_sentence_is_never_a_command(en):
    """Without the second look (with the sound-length rule loosened, as for a fast talker,
    and a garbage path too poor to absorb them) some of these come out as their command
    word; with it, none."""
    # A garbage path of one word: the rest of a sentence has almost nowhere else to go.
    engine = PocketsphinxEngine([p for p, _ in LONGER], ["hello"])
    vocab = Vocabulary("en", {p: en.phrases[p] for p, _ in LONGER}, (), ("hello",))
    lax = AcceptanceRules(seconds_per_word=5.0, min_margin=None, max_extra_phones=None, min_phone_margin=None)
    strict = AcceptanceRules(seconds_per_word=5.0)
    taken_lax, taken_strict = [], []
    for voice in (FLITE_EN[0], FLITE_EN[2]):
        for _word, sentence in LONGER:
            x = spoken(sentence, voice)
            taken_lax += [h.text for h in detect_in_samples(CommandDetector(engine, vocab, lax), x)]
            taken_strict += [h.text for h in detect_in_samples(CommandDetector(engine, vocab, strict), x)]
    assert taken_lax, "the sentences should tempt the grammar into a command word"
    assert taken_strict == []
