"""What the patient hears in a simulated session, checked on the rendered session.wav itself."""

from __future__ import annotations

import bisect
import logging
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.coach.session import DEFAULT_TONE_VOLUME
from appliance.config import AudioConfig
from appliance.events import Event, Feedback
from appliance.simulation.session import simulate
from appliance.voice.audio import Mixer, WavSink, frames_for
from appliance.voice.output import AudioSink, rate_for_pace, wav_audio
from appliance.voice.speech import Clip
from appliance.voice.tone import ToneCue, ToneShaper

SR = 22050
CFG = AudioConfig()


class FeedbackLog:
    def __init__(self) -> None:
        self.ticks: list[Feedback] = []

    def emit(self, event: Event) -> None:
        return None

    def feedback(self, fb: Feedback) -> None:
        self.ticks.append(fb)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == CFG.sample_rate and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32767.0


def measure_pitch(x: np.ndarray) -> float:
    w = x * np.hanning(x.shape[0])
    n = 16 * x.shape[0]
    spec = np.abs(np.fft.rfft(w, n))
    k = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n


def band_amplitude(x: np.ndarray, freq: float) -> float:
    t = np.arange(x.shape[0]) / SR
    w = np.hanning(x.shape[0])
    return float(2 * abs(np.sum(x * w * np.exp(-2j * np.pi * freq * t))) / np.sum(w))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The first 150 s of the leaflet programme in Dutch, with its session.wav."""
    out = tmp_path_factory.mktemp("heard")
    audio, timing = wav_audio(CFG, "nl", out / "session.wav", cache_dir=out / "speech")
    ticks = FeedbackLog()
    result = simulate(out_dir=None, lang="nl", seed=3, max_seconds=150.0, extra_sinks=[audio, ticks], timing=timing)
    audio.close(result.duration_s)
    says = [e for e in result.log.events if e.kind == "say"]
    return {
        "wav": read_wav(out / "session.wav"),
        "audio": audio,
        "timing": timing,
        "ticks": ticks.ticks,
        "says": says,
        "events": result.log.events,
        "duration_s": result.duration_s,
    }


def speech_spans(session) -> list[tuple[int, int]]:
    spans = []
    for e in session["says"]:
        start = frames_for(e.data["at"], SR)
        spans.append((start, start + session["audio"].bank.clip(e.data["phrase"]).samples.shape[0]))
    return spans


def test_every_prompt_is_in_the_wav_on_the_sample_the_timeline_gives(session):
    x, bank = session["wav"], session["audio"].bank
    says = session["says"]
    volume = CFG.volume
    # the ducked tone, at most 1.5x its amplitude with the cue's upper partial added
    ducked_tone = 0.3 * 0.25 * volume * 1.5 * DEFAULT_TONE_VOLUME
    checked = 0
    for i, e in enumerate(says):
        clip: Clip = bank.clip(e.data["phrase"])
        start = frames_for(e.data["at"], SR)
        end = start + clip.samples.shape[0]
        if i + 1 < len(says) and frames_for(says[i + 1].data["at"], SR) < end:
            continue  # cut short by the next prompt on purpose
        heard = x[start:end]
        residual = heard - volume * clip.samples
        # What is left once the phrase is taken out is at most the ducked tone, once the
        # duck is complete: it starts when the coach fires the prompt, within one tick.
        settled = frames_for(0.012, SR)
        assert np.abs(residual[settled:]).max() <= ducked_tone + 2e-3, e.data["phrase"]
        assert np.abs(residual[:settled]).max() <= 0.3 * volume * 1.5 + 2e-3
        assert np.sqrt(np.mean(heard**2)) > 0.05  # and the phrase is clearly audible
        checked += 1
    assert checked >= 10


def test_the_tone_is_ducked_under_speech_and_full_between_prompts(session):
    x = session["wav"]
    spans = speech_spans(session)
    starts = [s for s, _ in spans]
    full = 0.3 * CFG.volume * DEFAULT_TONE_VOLUME  # the tone's own level, below the voice (issue 15)
    shaper = ToneShaper()
    steady = {ToneCue.FOLLOW, ToneCue.ON_TARGET}  # not the pulsing let-go or warble
    cues = [shaper.update(fb).cue for fb in session["ticks"]]
    loud_windows = 0
    ticks = session["ticks"]
    for j in range(len(ticks) - 10):
        fb0, fb1 = ticks[j], ticks[j + 10]
        if not all(fb.active for fb in ticks[j : j + 11]) or not set(cues[j : j + 11]) <= steady:
            continue
        a, b = frames_for(fb0.t, SR), frames_for(fb1.t, SR)
        i = bisect.bisect_right(starts, b + SR // 10) - 1
        if i >= 0 and spans[i][1] + SR // 10 > a:
            continue  # speech within 100 ms
        seg = x[a:b]
        assert np.abs(seg).max() > 0.8 * full * 0.75  # full tone (allow a tremolo dip)
        loud_windows += 1
    assert loud_windows > 20


def test_pitch_follows_the_squeeze_within_one_percent(session):
    x, shaper = session["wav"], ToneShaper()
    ticks = session["ticks"]
    spans = speech_spans(session)
    starts = [s for s, _ in spans]
    expected = [shaper.mapping.pitch_hz(fb.strength_pct, fb.target_pct) for fb in ticks]
    checked = 0
    times = [fb.t for fb in ticks]
    for j in range(len(ticks)):
        # At least 25 ms and three ticks: the first tick's glide, then what follows measured
        # (20 ms at the 5 ms tick, 40 ms at the 40 ms tick).
        k = max(bisect.bisect_left(times, times[j] + 0.025 - 1e-9), j + 2)
        if k >= len(ticks):
            break
        window = ticks[j : k + 1]
        if not all(fb.active and fb.target_pct > 0 for fb in window):
            continue
        f = expected[j:k]  # each tick's pitch sounds until the next tick
        if max(f) / min(f) > 1.01:
            continue  # the squeeze moves too much for one pitch to be measured
        a, b = frames_for(window[1].t, SR), frames_for(window[-1].t, SR)
        i = bisect.bisect_right(starts, b) - 1
        if i >= 0 and spans[i][1] > a:
            continue  # under speech
        measured = measure_pitch(x[a:b])
        assert 0.99 * min(f) <= measured <= 1.01 * max(f), f"at {window[1].t:.2f} s"
        checked += 1
    assert checked >= 20


def test_target_cue_sounds_exactly_while_the_target_is_held(session):
    x, ticks = session["wav"], session["ticks"]
    shaper = ToneShaper()
    cues = [shaper.update(fb).cue for fb in ticks]
    spans = speech_spans(session)
    starts = [s for s, _ in spans]
    held = plain = 0
    for j in range(3, len(ticks) - 8):
        run = cues[j - 3 : j + 8]  # 30 ms settling before the 50 ms window
        if len(set(run)) != 1 or run[0] not in (ToneCue.ON_TARGET, ToneCue.FOLLOW):
            continue
        a, b = frames_for(ticks[j].t, SR), frames_for(ticks[j + 5].t, SR)
        i = bisect.bisect_right(starts, b) - 1
        if i >= 0 and spans[i][1] > a:
            continue
        seg = x[a:b]
        f0 = measure_pitch(seg)
        fifth = band_amplitude(seg, 1.5 * f0) / max(band_amplitude(seg, f0), 1e-9)
        if run[0] is ToneCue.ON_TARGET:
            assert fifth > 0.3, f"target held at {ticks[j].t:.2f} s but no cue"
            held += 1
        else:
            assert fifth < 0.03, f"target cue at {ticks[j].t:.2f} s while not held"
            plain += 1
    assert held >= 10 and plain >= 10


def test_keywords_land_within_150_ms_of_the_breath_transition(session):
    timing, cat = session["timing"], session["audio"].bank.catalogue
    transitions = sorted({e.data["start"] for e in session["events"] if e.kind == "phase"})
    checked = 0
    for e in session["says"]:
        key = e.data["phrase"]
        if not cat.keyword_prefix(key):
            continue  # no keyword, or the phrase begins with it
        keyword_at = e.data["at"] + timing.keyword_offset(key)
        if keyword_at > session["duration_s"]:
            continue  # the run ended (max_seconds) before the transition it announces
        i = bisect.bisect_left(transitions, keyword_at)
        near = min(abs(keyword_at - t) for t in transitions[max(0, i - 1) : i + 1])
        assert near <= 0.150, f"{key} keyword {near * 1000:.0f} ms off the transition"
        checked += 1
    assert checked >= 5


# --- the sink's handling of single events ----------------------------------------------------


class FakeBank:
    def __init__(self, n: int = 1000) -> None:
        samples = np.full(n, 0.5, dtype=np.float32)
        self.clips = {"cue.hold": Clip("cue.hold", "Houd vast.", samples, SR, 0.0)}
        self.rates: list[int] = []

    def clip(self, key: str) -> Clip:
        return self.clips[key]

    def set_rate(self, rate_wpm: int, *, wait: bool = False) -> None:
        self.rates.append(rate_wpm)


def test_a_prompt_said_ahead_starts_on_its_own_sample_in_the_wav(tmp_path):
    mixer = Mixer(SR, volume=1.0)
    sink = AudioSink(mixer, FakeBank(), ToneShaper(), wav=WavSink(tmp_path / "a.wav", mixer))
    sink.feedback(Feedback(0.50, 0.0, 0.0, False))
    sink.emit(Event(0.50, "say", {"phrase": "cue.hold", "at": 0.7321}))
    for i in range(51, 100):
        sink.feedback(Feedback(i / 100, 0.0, 0.0, False))
    sink.close()
    x = read_wav(tmp_path / "a.wav")
    nonzero = np.flatnonzero(x)
    assert nonzero[0] == frames_for(0.7321, SR) and nonzero.shape[0] == 1000


def test_live_prompts_are_placed_by_their_lead_over_the_latest_tick():
    mixer = Mixer(SR)
    sink = AudioSink(mixer, FakeBank(), ToneShaper())
    mixer.render(np.zeros(640))
    sink.feedback(Feedback(10.0, 0.0, 0.0, False))  # the tick at frame 640
    mixer.render(np.zeros(128))  # the callback runs on while the coach works
    sink.emit(Event(10.25, "say", {"phrase": "cue.hold", "at": 10.25}))
    sink.emit(Event(9.99, "say", {"phrase": "cue.hold", "at": 9.99}))  # fired a tick late
    mixer._take_from_ring()
    starts = sorted(item.start_frame for item in mixer._pending)
    assert starts == [640 + frames_for(-0.01, SR), 640 + frames_for(0.25, SR)]


def test_louder_softer_and_pace_settings_reach_mixer_and_speech(caplog):
    mixer, bank = Mixer(SR, volume=0.8), FakeBank()
    sink = AudioSink(mixer, bank, ToneShaper(), base_rate_wpm=150)
    sink.emit(Event(1.0, "setting", {"setting": "volume", "value": 0.5}))
    assert mixer.volume == 0.5
    sink.emit(Event(1.0, "setting", {"setting": "pace", "value": [4.6, 6.9]}))  # slower
    sink.emit(Event(1.0, "setting", {"setting": "pace", "value": [3.48, 5.22]}))  # faster
    assert bank.rates == [rate_for_pace(150, 11.5), rate_for_pace(150, 8.7)]
    assert bank.rates[0] < 150 < bank.rates[1]
    with caplog.at_level(logging.ERROR):
        sink.emit(Event(1.0, "setting", {"setting": "volume", "value": "loud"}))
        sink.emit(Event(1.0, "say", {"phrase": "no.such.phrase", "at": 1.0}))
    assert mixer.volume == 0.5
    assert "'loud'" in caplog.text and "no.such.phrase" in caplog.text


class _Steady:
    """A probe without a sampler thread of its own: 30 cmH2O at 200 Hz."""

    sample_rate_hz = 200.0

    def __init__(self) -> None:
        self._next = 0.0

    def read_until(self, t: float):
        times = []
        while self._next <= t:
            times.append(self._next)
            self._next += 0.005
        return times, [30.0] * len(times)

    @property
    def status(self):
        from appliance.sensor.base import ProbeStatus

        return ProbeStatus.OK

    def close(self) -> None:
        return None


def test_the_sessions_wiring_gives_the_tone_every_sample_the_loop_reads():
    from appliance.clock import SimClock
    from appliance.coach.programme import load_programme
    from appliance.coach.session import Calibration
    from appliance.device.wiring import SessionParts, build_session
    from appliance.voice.phrases import Catalogue

    class ToneOnly(AudioSink):
        def emit(self, event: Event) -> None:  # no phrases rendered: the tone alone
            return None

    catalogue = Catalogue.load("nl")
    mixer = Mixer(SR)
    sink = ToneOnly(mixer, None, ToneShaper())  # type: ignore[arg-type]
    built = build_session(load_programme("leaflet", catalogue.keys()), catalogue, SimClock(),
                          SessionParts(source=_Steady(), audio=sink, calibration=Calibration(20.0, 40.0)))
    slot = mixer.tone.slot
    assert slot is not None and slot.value is None
    built.source.read_until(0.1025)  # samples at 0, 5, ... 100 ms
    assert slot.count == 21 and slot.value == pytest.approx(30.0)
