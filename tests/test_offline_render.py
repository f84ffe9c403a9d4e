"""session.wav rendered offline: the speaker's blocks planned as the clock moves, their
samples made a second at a time, and still exactly what the speaker would have played."""

import numpy as np
import pytest
from wav_fixture import digest, short_session_wav

from appliance.voice.audio import Mixer
from appliance.voice.tone import LivePitch, ToneCue, ToneMapping, ToneParams


def test_the_patient_hears_in_session_wav_what_the_speaker_plays_block_by_block(tmp_path, monkeypatch):
    """The same simulated session twice: once rendered offline (the default), once with the
    mixer rendering every block of the card's size (`audio.block_size`, 128 samples) on its own
    as the real sound card's callback does.
    (A digest pinned from main before the offline renderer was merged held until the coach's
    tone level and the day plan changed what the session sounds like; the two ways of
    rendering the session as it is now must still agree to the byte.)"""
    import appliance.voice.audio as audio

    offline = short_session_wav(tmp_path / "offline")
    real_sink = audio.WavSink  # the simulated speaker imports it when it opens
    monkeypatch.setattr(audio, "WavSink", lambda *a, **k: real_sink(*a, **{**k, "deferred": False}))
    blockwise = short_session_wav(tmp_path / "blockwise")
    assert offline.stat().st_size > 44 + 16000 * 2 * 10  # a session of some length, not an empty file
    assert digest(offline) == digest(blockwise)


def _drive(seed, quiet=0.3):
    """A random session's worth of mixer control, in the speaker's blocks: tone changes
    every few blocks (all cues, glides, silence), phrases that overlap and preempt,
    cancellations and volume steps."""
    rng = np.random.default_rng(seed)
    clips = [(rng.uniform(-0.8, 0.8, int(n)) * np.hanning(int(n))).astype(np.float32)
             for n in rng.integers(30, 4000, 6)]
    # the phrase bank's clips are int16 PCM; a tool's may be floats: both kinds, overlapping
    clips = [np.rint(c * 32767).astype(np.int16) if i % 2 else c for i, c in enumerate(clips)]
    steps = []
    frame = 0
    for _ in range(1500):
        action = {}
        r = rng.random()
        if r < 0.3:
            cue = list(ToneCue)[rng.integers(len(ToneCue))]
            amp = 0.0 if rng.random() < quiet else float(rng.choice([0.08, 0.3]))
            live = LivePitch(10.0, 30.0, ToneMapping()) if rng.random() < 0.5 else None
            action["tone"] = ToneParams(float(rng.uniform(200, 1000)), amp, cue, live)
        elif r < 0.36:
            action["say"] = (int(rng.integers(len(clips))), frame + int(rng.integers(-50, 600)))
        elif r < 0.37:
            action["cancel"] = True
        elif r < 0.39:
            action["volume"] = float(rng.choice([0.2, 0.8, 1.0]))
        elif r < 0.41:  # "toon zachter" / "toon luider": the tone's own volume
            action["tone_volume"] = float(rng.choice([0.1, 0.25, 0.5]))
        if rng.random() < 0.3:  # the sensor side writes the live pressure slot
            action["pressure"] = float(rng.uniform(5.0, 60.0))
        n = int(rng.integers(1, 65)) if rng.random() < 0.95 else int(rng.integers(65, 600))  # a WAV's longer blocks too
        steps.append((action, n))
        frame += n
    return clips, steps


class Slot:
    """The live pressure slot, as the audio thread reads it: the newest value."""

    value = None


def _apply(mixer, clips, action):
    if "pressure" in action:
        mixer.tone.slot.value = action["pressure"]
    if "tone" in action:
        mixer.set_tone(action["tone"])
    if "say" in action:
        i, at = action["say"]
        mixer.schedule(clips[i], at, f"clip{i}")
    if action.get("cancel"):
        mixer.cancel_speech()
    if "volume" in action:
        mixer.volume = action["volume"]
    if "tone_volume" in action:
        mixer.tone_volume = action["tone_volume"]


@pytest.mark.parametrize(("seed", "quiet"), [(0, 0.3), (1, 0.3), (2, 0.3), (3, 0.9)])  # 0.9: instructions, little tone
def test_blocks_rendered_offline_are_the_speakers_blocks_bit_for_bit(seed, quiet):
    clips, steps = _drive(seed, quiet)
    live, offline = Mixer(22050), Mixer(22050)
    live.tone.slot, offline.tone.slot = Slot(), Slot()
    heard, made, pending = [], [], 0
    for i, (action, n) in enumerate(steps):
        _apply(live, clips, action)
        _apply(offline, clips, action)
        out = np.zeros(n)
        live.render(out)
        heard.append(out)
        offline.plan_block(n)
        pending += n
        # What the rest of the device asks between blocks is answered as by the live mixer.
        assert offline.playback_state() == live.playback_state()
        assert offline.frame_now() == live.frame_now()
        assert offline.has_queued_speech() == live.has_queued_speech()
        if i % 97 == 96 or i == len(steps) - 1:
            block = np.zeros(pending)
            offline.render_planned(block)
            made.append(block)
            pending = 0
    heard_all, made_all = np.concatenate(heard), np.concatenate(made)
    assert np.abs(heard_all).max() > 0.05  # the tone and the clips were there
    assert np.array_equal(heard_all, made_all)
    # and the echo canceller's copy of the output is the same too
    end = live.output_frame()
    assert offline.output_frame() == end
    assert np.array_equal(live.output_reference(end - 22050, end), offline.output_reference(end - 22050, end))


@pytest.mark.parametrize(("seed", "quiet"), [(4, 0.3), (5, 0.9)])
def test_silence_and_instructions_planned_in_one_go_are_the_cards_blocks_to_the_byte(tmp_path, seed, quiet):
    """session.wav plans a stretch of silence, or of an instruction alone, in one go up to
    the next control tick; the file must still be the one the card's 128-sample callbacks
    make, tick after tick."""
    from appliance.voice.audio import WavSink

    clips, steps = _drive(seed, quiet)
    live, offline = Mixer(22050), Mixer(22050)
    live.tone.slot, offline.tone.slot = Slot(), Slot()
    planned = []
    plan_block = offline.plan_block
    offline.plan_block = lambda n: (planned.append(n), plan_block(n))  # type: ignore[method-assign]
    frame = 0
    with WavSink(tmp_path / "card.wav", live, block_size=128) as card, \
            WavSink(tmp_path / "offline.wav", offline, block_size=128, deferred=True) as wav:
        for action, n in steps:
            _apply(live, clips, action)
            _apply(offline, clips, action)
            frame += 4 * n  # a control tick: several of the card's blocks
            card.render_until_frame(frame)
            wav.render_until_frame(frame)
    assert (tmp_path / "card.wav").read_bytes() == (tmp_path / "offline.wav").read_bytes()
    assert max(planned) > 128  # some stretches were planned in one go
    assert len(planned) < sum(-(-4 * n // 128) for _, n in steps)  # fewer than the card's blocks


@pytest.mark.parametrize(("seed", "quiet"), [(6, 0.1), (7, 0.3)])
def test_the_tone_and_the_prompts_said_over_it_planned_in_one_go_are_the_cards_blocks_to_the_byte(
        tmp_path, seed, quiet):
    """A contraction's stretches of the tone alone, and of a phrase said over the ducked tone,
    are planned a control tick at a time (`Mixer.plan_run`); long ticks here, so those
    stretches span many of the card's blocks, cut where the card cuts them."""
    from appliance.voice.audio import WavSink

    clips, steps = _drive(seed, quiet)
    live, offline = Mixer(22050), Mixer(22050)
    live.tone.slot, offline.tone.slot = Slot(), Slot()
    runs = []  # (blocks planned in one call, a phrase said over the tone)
    plan_run = offline.tone.plan_run
    offline.tone.plan_run = lambda sizes: (  # type: ignore[method-assign]
        runs.append((len(f := plan_run(sizes)), offline._active is not None)), f)[1]
    frame = 0
    with WavSink(tmp_path / "card.wav", live, block_size=128) as card, \
            WavSink(tmp_path / "offline.wav", offline, block_size=128, deferred=True) as wav:
        for action, n in steps:
            _apply(live, clips, action)
            _apply(offline, clips, action)
            frame += 40 * n  # a long control tick: tens of the card's blocks
            card.render_until_frame(frame)
            wav.render_until_frame(frame)
            assert offline.playback_state() == live.playback_state()
    assert (tmp_path / "card.wav").read_bytes() == (tmp_path / "offline.wav").read_bytes()
    assert any(blocks > 1 and not speaking for blocks, speaking in runs)  # the tone alone
    assert any(blocks > 1 and speaking for blocks, speaking in runs)  # a phrase over the tone
