"""One output stream: the live tone and queued speech mixed, the tone ducked under speech.

`Mixer` produces the samples (lock-free, allocation-free per block); `DeviceOutput` pulls
them from a sounddevice stream (PortAudio calling it directly) and survives a missing sound card; `WavSink` pulls
them into a WAV file in session time, sample-exact, for simulation and tests.
"""

from __future__ import annotations

import logging
import math
import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from appliance.voice.tone import ToneParams, ToneSynth

log = logging.getLogger(__name__)

PCM_SCALE = 1.0 / 32768.0  # int16 clip samples to floats; a power of two, so exact
RING_SLOTS = 64  # speech items in flight between the coach and the audio thread
OUTPUT_TAP_S = 3.0  # seconds of rendered output kept for the listener's echo canceller


@dataclass(frozen=True)
class PlaybackState:
    """What the mixer is playing right now (for the listener's notch and strictness).

    `tone_hz` is None when the tone is inaudible; `tone_amplitude` is the fundamental's
    peak amplitude at the output (full scale 1.0), after ducking and volume.
    """

    tone_hz: float | None
    tone_amplitude: float
    speaking: bool
    speech_phrase: str | None


@dataclass(frozen=True)
class SpeechItem:
    """A clip queued by reference: `samples` (mono, mixer rate) starts at `start_frame`;
    `scale` takes a sample to full scale 1.0 (1/32768 for int16 PCM, 1 for floats)."""

    start_frame: int
    samples: np.ndarray
    phrase: str
    scale: float = 1.0


class _Voice:
    """A clip being played: where in it we are. Mutated only by the audio thread."""

    __slots__ = ("item", "pos")

    def __init__(self, item: SpeechItem, pos: int = 0) -> None:
        self.item = item
        self.pos = pos


class Mixer:
    """Tone plus speech into one mono stream of float samples in [-1, 1].

    Producer side (coach thread): `set_tone`, `schedule`, `cancel_speech`, `volume`.
    Consumer side (audio thread or WAV writer): `render`. They share only attribute swaps
    and a preallocated single-producer/single-consumer ring, so the audio thread never
    waits on a lock. A new clip preempts one still playing (fading it out over
    `fade_ms`): landing on the breath matters more than finishing a sentence.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        max_block: int = 4096,
        volume: float = 0.8,
        tone_volume: float = 1.0,
        duck_gain: float = 0.25,
        duck_ms: float = 10.0,
        unduck_ms: float = 80.0,
        fade_ms: float = 10.0,
        glide_ms: float = 4.0,
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.max_block = int(max_block)
        self.tone = ToneSynth(self.sample_rate, max_block=self.max_block, glide_ms=glide_ms)
        self.volume = float(volume)
        self.tone_volume = float(tone_volume)  # the tone's own gain under the master volume
        self.duck_gain = float(duck_gain)
        # The coach fires a prompt at the control tick that reaches its start, so the
        # duck must be complete within one tick (10 ms); coming back up can take longer.
        self.duck_frames = max(1, int(duck_ms * 1e-3 * self.sample_rate))
        self.unduck_frames = max(1, int(unduck_ms * 1e-3 * self.sample_rate))
        self.volume_frames = max(1, int(0.03 * self.sample_rate))
        self.running = True  # False while no device pulls samples: speech is then dropped
        self.dropped_items = 0
        self._frame = 0
        self._vol = self.volume
        self._tvol = self.tone_volume
        self._duck = 1.0
        self._ring: list[SpeechItem | None] = [None] * RING_SLOTS
        self._ring_w = 0
        self._ring_r = 0
        self._cancel_req = 0
        self._cancel_seen = 0
        self._pending: list[SpeechItem] = []  # audio-thread private, sorted by start_frame
        self._active: _Voice | None = None
        self._fading: _Voice | None = None
        self._fade_pos = 0
        fade_len = max(1, int(fade_ms * 1e-3 * self.sample_rate))
        self._fade = np.linspace(1.0, 0.0, fade_len + 1)[1:]
        self._mix = np.zeros(self.max_block)
        self._speech = np.zeros(self.max_block)
        self._tmp = np.zeros(self.max_block)
        self._cast = np.zeros(self.max_block)
        # The rendered output, for the echo canceller: a preallocated ring written by the
        # audio thread (no allocation), `_tap_end` frames written so far, published after
        # the samples. float64 like `_mix`, so the copy never needs a cast buffer.
        # A whole number of the largest block, so that fixed-size blocks never wrap around it.
        blocks = -(-max(int(OUTPUT_TAP_S * self.sample_rate), 2 * self.max_block) // self.max_block)
        self._tap = np.zeros(blocks * self.max_block)
        self._tap_end = 0
        self._tap_silent = 0  # frames of silence last written to it in a row: past its size, none to write
        # Offline rendering (`plan_block`, `render_planned`): blocks planned, samples not yet made.
        self._planned: list[tuple] = []
        self._runs: list[list] = []  # speech to add: [offset, samples, src, length, fade_pos or -1]
        self._run_of: dict[int, int] = {}  # id(samples) -> its latest plain run in _runs
        self._planned_frames = 0
        self._silent_entry = -1  # index in _planned of the entry silent blocks are joining
        self._speech_entry = -1  # and of the entry blocks of one phrase without tone are joining

    # -- producer side -----------------------------------------------------------------------
    def set_tone(self, params: ToneParams) -> None:
        self.tone.set_params(params)

    def frame_now(self) -> int:
        """The frame the next rendered block starts at (samples since the mixer started)."""
        return self._frame

    def schedule(self, samples: np.ndarray, start_frame: int, phrase: str = "") -> bool:
        """Queue a clip (by reference) to start at `start_frame`; False if it was dropped.

        `samples`: int16 PCM (full scale 32768, what the phrase bank holds: half the memory
        of float32, and mapped from the speech cache) or floats in [-1, 1]."""
        if not self.running:
            log.debug("no output device: speech %r dropped", phrase)
            self.dropped_items += 1
            return False
        if self._ring_w - self._ring_r >= RING_SLOTS:
            log.warning("speech queue full: %r dropped", phrase)
            self.dropped_items += 1
            return False
        scale = PCM_SCALE if samples.dtype.kind in "iu" else 1.0
        self._ring[self._ring_w % RING_SLOTS] = SpeechItem(int(start_frame), samples, phrase, scale)
        self._ring_w += 1  # published only after the slot is written
        return True

    def cancel_speech(self) -> None:
        """Fade out what is being said and forget everything queued."""
        self._cancel_req += 1

    def playback_state(self) -> PlaybackState:
        """A snapshot of what is playing; cheap, any thread, never blocks the audio thread."""
        amp = self.tone.current_amplitude * self._duck * self._vol * self._tvol
        active = self._active
        phrase = active.item.phrase if active is not None else None
        return PlaybackState(
            tone_hz=self.tone.current_freq_hz if amp > 1e-4 else None,
            tone_amplitude=amp,
            speaking=active is not None,
            speech_phrase=phrase,
        )

    def has_queued_speech(self) -> bool:
        """A clip is scheduled but has not started yet (the WAV writer plays it out at the end)."""
        return self._ring_w != self._ring_r or bool(self._pending)

    def prepare(self, block: int) -> None:
        """Precompute per-block-length tables outside the audio thread."""
        self.tone.prepare(min(block, self.max_block))

    # -- consumer side -------------------------------------------------------------------------
    def _nothing_to_say(self) -> bool:
        """No speech playing, fading, queued or waiting in the ring: the tone alone, or silence."""
        return self._ring_r == self._ring_w and self._active is None and self._fading is None and not self._pending

    def _pass_silent(self, n: int, block_end: int) -> None:
        """A silent block (`render` and `plan_block` alike): the tone sleeps, the gains settle."""
        self.tone.skip_silent(n)
        self._frame = block_end
        self._vol = self.volume
        self._tvol = self.tone_volume
        self._duck = 1.0

    def _phrase_alone(self, pending: list[SpeechItem], block_end: int, n: int) -> bool:
        """One phrase fills the whole block: nothing fading, nothing starting in it, no tone."""
        active = self._active
        return (
            active is not None
            and self._fading is None
            and active.item.samples.shape[0] - active.pos >= n
            and not (pending and pending[0].start_frame < block_end)
            and self.tone.is_silent()
        )

    def render(self, out: np.ndarray) -> None:
        """Fill `out` (shape (n,) or (n, 1), any float dtype) with the next n samples.

        The audio callback: 172 calls a second at the device's 128-sample blocks, where
        numpy's cost per call, not per sample, is what counts. Silence is one fill; the
        tone alone (most of a contraction) skips everything speech needs; the samples are
        made in the echo canceller's output ring itself and copied once, into `out`.
        """
        n = out.shape[0]
        if n > self.max_block:
            for start in range(0, n, self.max_block):
                self.render(out[start : start + self.max_block])
            return
        block_start = self._frame
        block_end = block_start + n
        cancel = self._cancel_req  # read first: a later cancellation waits for the next block
        tone = self.tone
        active = self._active
        # `_nothing_to_say()` and `_begin_block` written out for the common cases (every call
        # a callback saves counts on a small CPU): nothing new in the ring, nothing fading.
        settled = self._ring_r == self._ring_w and self._fading is None
        if settled and active is None and not self._pending:  # nothing to say
            self._cancel_seen = cancel  # nothing said or queued: nothing to cancel, nothing left pending
            if tone.is_silent():
                # Nothing to say and no tone: the common case between contractions.
                out.fill(0.0)
                self._tap_write(None, n)
                self._pass_silent(n, block_end)
                return
            # The tone alone: no speech to mix, nothing to clip.
            tone0, tone1, _, _ = self._ramp_gains(n, False)
            mix = self._tap_slot(n)
            tone.render(mix, tone0, tone1)
            self._emit(out, mix, n)
            return
        if settled and active is not None and self._cancel_seen == cancel:
            pending, spoke = self._pending, True  # what `_begin_block` would find: a phrase playing
        else:
            pending, spoke = self._begin_block(block_end)
            active = self._active
        if active is not None and self._phrase_alone(pending, block_end, n) and self._pcm_at_volume(active):
            self._render_phrase_alone(out, active, n)
            return
        sp = self._speech[:n]
        if spoke:
            sp.fill(0.0)
        fading = self._fading
        if fading is not None:
            self._render_fade(fading, sp, n)
        active = self._active
        if active is not None:
            samples = active.item.samples
            take = min(n, samples.shape[0] - active.pos)
            self._add_clip(sp[:take], samples[active.pos : active.pos + take], active.item.scale)
            active.pos += take
            if active.pos >= samples.shape[0]:
                active = self._active = None
        while pending and pending[0].start_frame < block_end:
            item = pending.pop(0)
            offset = max(0, item.start_frame - block_start)
            if active is not None:  # preempted: it fades out from the next block on
                self._start_fade(active)
            take = min(n - offset, item.samples.shape[0])
            self._add_clip(sp[offset : offset + take], item.samples[:take], item.scale)
            active = self._active = _Voice(item, take)
            if take >= item.samples.shape[0]:
                active = self._active = None

        # Duck the tone while speech plays, starting just before a clip begins.
        speaking = spoke or (bool(pending) and pending[0].start_frame - block_end < self.duck_frames)
        tone0, tone1, vol0, vol1 = self._ramp_gains(n, speaking)

        mix = self._tap_slot(n)
        tone.render(mix, tone0, tone1)
        if spoke:  # the tone alone never comes near full scale: no mixing, no clipping
            if vol0 == vol1:
                sp *= vol1
            else:
                tmp = self._tmp[:n]
                tone.ramp_into(tmp, vol0, vol1)
                sp *= tmp
            mix += sp
            # np.clip's wrapper costs more than the clipping on a 128-sample block: two ufuncs.
            np.minimum(mix, 1.0, out=mix)
            np.maximum(mix, -1.0, out=mix)
        self._emit(out, mix, n)

    def _pcm_at_volume(self, active: _Voice) -> bool:
        """PCM (at most full scale, never clipped at a volume <= 1) at the settled volume."""
        return active.item.scale != 1.0 and self._vol == self.volume <= 1.0

    def _render_phrase_alone(self, out: np.ndarray, active: _Voice, n: int) -> None:
        """One phrase and no tone (an instruction): the clip at the volume, the very numbers
        the full path makes (+0.0 and clipping change nothing here), in three calls."""
        _, _, _, vol = self._ramp_gains(n, True)
        mix = self._tap_slot(n)
        pos = active.pos
        samples = active.item.samples
        mix[...] = samples[pos : pos + n]  # a casting copy (np.copyto is a Python-level wrapper)
        mix *= active.item.scale
        mix *= vol
        active.pos = pos = pos + n
        if pos >= samples.shape[0]:
            self._active = None
        self.tone.skip_silent(n)
        self._emit(out, mix, n)

    def _tap_slot(self, n: int) -> np.ndarray:
        """Where to make the next n samples: the output ring's own slice when they fit in
        one piece (always, for the sound card's fixed blocks: the ring is a whole number of
        them), else scratch space that `_emit` copies into the ring."""
        start = self._tap_end % self._tap.shape[0]
        if start + n <= self._tap.shape[0]:
            return self._tap[start : start + n]
        return self._mix[:n]

    def _emit(self, out: np.ndarray, mix: np.ndarray, n: int) -> None:
        """The block made (in `_tap_slot(n)`) goes to the sound card and is published to the ring."""
        if out.ndim == 1:  # the card's own buffer (DeviceOutput), the WAV writer's
            out[...] = mix
        else:
            out[:, 0] = mix
            if out.shape[1] > 1:
                out[:, 1:] = out[:, :1]
        if mix.base is self._tap:
            self._tap_silent = 0
            self._tap_end += n  # published after the samples are in place
        else:
            self._tap_write(mix, n)
        self._frame += n

    def _begin_block(self, block_end: int) -> tuple[list[SpeechItem], bool]:
        """Take in what the control side queued or cancelled; returns the pending clips and
        whether speech sounds in the block (which also keeps the tone ducked to the clip's
        last sample). Shared by `render` and `plan_block`."""
        self._take_from_ring()
        if self._cancel_seen != self._cancel_req:
            self._cancel_seen = self._cancel_req
            self._pending.clear()
            if self._active is not None:
                self._start_fade(self._active)
                self._active = None
        pending = self._pending
        spoke = (
            self._fading is not None
            or self._active is not None
            or (bool(pending) and pending[0].start_frame < block_end)
        )
        return pending, spoke

    def _ramp_gains(self, n: int, speaking: bool) -> tuple[float, float, float, float]:
        """Move the duck, the master volume and the tone's own volume on by one block of
        `n` samples; returns the tone's gain and the master volume at its two ends.
        `render` and `plan_block` both step through here, so session.wav and the speaker
        ramp alike."""
        vol0, tv0 = self._vol, self._tvol
        if vol0 == self.volume and tv0 == self.tone_volume:
            # All settled: the same numbers as the steps below give (a step from a target
            # stays on it), without them.
            if not speaking and self._duck == 1.0:
                g = vol0 * tv0
                return g, g, vol0, vol0
            if speaking and self._duck == self.duck_gain:
                g = self._duck * vol0 * tv0
                return g, g, vol0, vol0
        duck_target = self.duck_gain if speaking else 1.0
        step = n / (self.duck_frames if speaking else self.unduck_frames) * (1.0 - self.duck_gain)
        duck0 = self._duck
        duck1 = min(duck0 + step, duck_target) if duck_target > duck0 else max(duck0 - step, duck_target)
        vol0 = self._vol
        vol1 = self.volume
        vstep = n / self.volume_frames
        vol1 = min(vol0 + vstep, vol1) if vol1 > vol0 else max(vol0 - vstep, vol1)
        tv0, tv1 = self._tvol, self.tone_volume
        tv1 = min(tv0 + vstep, tv1) if tv1 > tv0 else max(tv0 - vstep, tv1)
        self._duck, self._vol, self._tvol = duck1, vol1, tv1
        return duck0 * vol0 * tv0, duck1 * vol1 * tv1, vol0, vol1

    def _tap_write(self, mix: np.ndarray | None, n: int) -> None:
        """Append n rendered samples (None: silence) to the output ring; audio thread only."""
        size = self._tap.shape[0]
        if mix is None and self._tap_silent >= size:  # the whole ring is silence already
            self._tap_end += n
            return
        start = self._tap_end % size
        first = min(n, size - start)
        if mix is None:
            self._tap[start : start + first] = 0.0
            if first < n:
                self._tap[: n - first] = 0.0
            self._tap_silent += n
        else:
            self._tap_silent = 0
            self._tap[start : start + first] = mix[:first]
            if first < n:
                self._tap[: n - first] = mix[first:n]
        self._tap_end += n  # published after the samples are in place

    # -- the rendered output, for the echo canceller (any thread) ---------------------------
    def output_frame(self) -> int:
        """Frames rendered so far: the output reference is available up to (not including) it."""
        return self._tap_end

    def output_reference(self, start_frame: int, stop_frame: int) -> np.ndarray | None:
        """What the mixer rendered for frames [start_frame, stop_frame), float64, a new array.

        Frames before 0 are silence. None if part of the range is not rendered yet or has
        already been overwritten (the ring holds `OUTPUT_TAP_S` seconds). Lock-free: the
        range is checked again after copying, so a copy the audio thread overtook is refused.
        """
        start, stop = int(start_frame), int(stop_frame)
        if stop < start:
            raise ValueError(f"output_reference: stop_frame {stop} before start_frame {start}")
        size = self._tap.shape[0]
        out = np.zeros(stop - start)
        lo = max(start, 0)
        if stop > self._tap_end or (lo < stop and lo < self._tap_end - size):
            return None
        if lo < stop:
            a = lo % size
            first = min(stop - lo, size - a)
            out[lo - start : lo - start + first] = self._tap[a : a + first]
            out[lo - start + first :] = self._tap[: stop - lo - first]
            if lo < self._tap_end - size:  # overwritten while we copied
                return None
        return out

    def _add_clip(self, dst: np.ndarray, src: np.ndarray, scale: float) -> None:
        # A mixed-dtype `+=` (or multiply) would allocate numpy's cast buffer on every call;
        # a casting copy into scratch space does not.
        tmp = self._cast[: dst.shape[0]]
        tmp[...] = src
        if scale != 1.0:
            tmp *= scale
        dst += tmp

    def _take_from_ring(self) -> None:
        while self._ring_r < self._ring_w:
            slot = self._ring_r % RING_SLOTS
            item = self._ring[slot]
            self._ring[slot] = None
            self._ring_r += 1
            if item is None:
                continue
            # keep pending sorted; it holds a handful of items at most
            i = len(self._pending)
            while i > 0 and self._pending[i - 1].start_frame > item.start_frame:
                i -= 1
            self._pending.insert(i, item)

    def _start_fade(self, voice: _Voice) -> None:
        self._fading = voice
        self._fade_pos = 0

    def _render_fade(self, voice: _Voice, sp: np.ndarray, n: int) -> None:
        samples = voice.item.samples
        m = min(n, self._fade.shape[0] - self._fade_pos, samples.shape[0] - voice.pos)
        if m > 0:
            tmp = self._tmp[:m]
            tmp[...] = samples[voice.pos : voice.pos + m]
            if voice.item.scale != 1.0:
                tmp *= voice.item.scale
            tmp *= self._fade[self._fade_pos : self._fade_pos + m]
            sp[:m] += tmp
            voice.pos += m
            self._fade_pos += m
        if m <= 0 or self._fade_pos >= self._fade.shape[0] or voice.pos >= samples.shape[0]:
            self._fading = None


    # -- offline: the same blocks, their samples made many at a time ----------------------------
    def plan_block(self, n: int) -> None:
        """Do what `render` does for a block of `n` samples, except making the samples.

        Speech, ducking, volume and the tone move on exactly as in `render` (so
        `playback_state`, `frame_now` and `has_queued_speech` answer as they would), and
        the block is remembered; `render_planned` then makes the samples of every block
        planned so far in one go, bit for bit what `render` would have given block by
        block. Simulation renders `session.wav` this way (`WavSink(deferred=True)`).
        """
        offset = self._planned_frames
        self._planned_frames = offset + n
        block_start = self._frame
        block_end = block_start + n
        tone = self.tone
        quiet = self._nothing_to_say()
        if quiet and not tone.is_silent():  # the tone alone, as in `render`
            self._cancel_seen = self._cancel_req
            g0, g1, vol0, vol1 = self._ramp_gains(n, False)
            self._planned.append((n, tone.plan(n, g0, g1), g0, g1, False, vol0, vol1))
            self._frame = block_end
            return
        if quiet:
            self._cancel_seen = self._cancel_req  # as `render`: nothing said or queued to cancel
            planned = self._planned
            if self._silent_entry == len(planned) - 1 >= 0:  # silence goes on: one longer entry
                planned[-1] = (planned[-1][0] + n, None, 1.0, 1.0, False, 1.0, 1.0)
            else:
                self._silent_entry = len(planned)
                planned.append((n, None, 1.0, 1.0, False, 1.0, 1.0))
            self._pass_silent(n, block_end)
            return
        pending, spoke = self._begin_block(block_end)
        active = self._active
        if active is not None and self._phrase_alone(pending, block_end, n):
            # One phrase, no tone (an instruction): its run grows, and so does the block's
            # entry while the volume stays (render_planned mixes a stretch at a time anyway).
            self._plan_clip(offset, active.item.samples, active.pos, n)
            active.pos += n
            if active.pos >= active.item.samples.shape[0]:
                self._active = None
            _, _, vol0, vol1 = self._ramp_gains(n, True)
            tone.skip_silent(n)
            planned = self._planned
            if self._speech_entry == len(planned) - 1 >= 0 and vol0 == vol1 == planned[-1][5] == planned[-1][6]:
                planned[-1] = (planned[-1][0] + n, None, 1.0, 1.0, True, vol0, vol1)
            else:
                self._speech_entry = len(planned)
                planned.append((n, None, 1.0, 1.0, True, vol0, vol1))
            self._frame = block_end
            return
        fading = self._fading
        if fading is not None:
            samples = fading.item.samples
            m = min(n, self._fade.shape[0] - self._fade_pos, samples.shape[0] - fading.pos)
            if m > 0:
                self._runs.append([offset, samples, fading.pos, m, self._fade_pos])
                fading.pos += m
                self._fade_pos += m
            if m <= 0 or self._fade_pos >= self._fade.shape[0] or fading.pos >= samples.shape[0]:
                self._fading = None
        active = self._active
        if active is not None:
            samples = active.item.samples
            take = min(n, samples.shape[0] - active.pos)
            self._plan_clip(offset, samples, active.pos, take)
            active.pos += take
            if active.pos >= samples.shape[0]:
                active = self._active = None
        while pending and pending[0].start_frame < block_end:
            item = pending.pop(0)
            start = max(0, item.start_frame - block_start)
            if active is not None:
                self._start_fade(active)
            take = min(n - start, item.samples.shape[0])
            self._plan_clip(offset + start, item.samples, 0, take)
            active = self._active = _Voice(item, take)
            if take >= item.samples.shape[0]:
                active = self._active = None
        speaking = spoke or (bool(pending) and pending[0].start_frame - block_end < self.duck_frames)
        g0, g1, vol0, vol1 = self._ramp_gains(n, speaking)
        self._planned.append((n, tone.plan(n, g0, g1), g0, g1, spoke, vol0, vol1))
        self._frame = block_end

    def _plan_clip(self, offset: int, samples: np.ndarray, src: int, length: int) -> None:
        """Speech to add at `offset`; joined to the clip's previous run where it continues it."""
        key = id(samples)
        i = self._run_of.get(key)
        if i is not None:
            run = self._runs[i]
            if run[1] is samples and run[0] + run[3] == offset and run[2] + run[3] == src:
                run[3] += length
                return
        self._run_of[key] = len(self._runs)
        self._runs.append([offset, samples, src, length, -1])

    def steady_frames(self, block: int, limit: int) -> int:
        """How many frames (at most `limit`) `plan_block` can take as one block with the
        same result as blocks of `block` frames, until the control side acts again.

        Silence (nothing said, queued, fading or cancelled, no tone) stays silence: all of
        it. One phrase alone at a settled volume and duck (an instruction) goes on the same
        way until it ends or the next phrase starts: whole blocks of it, so the block where
        it ends is cut where the card would cut it (all of `limit` when it goes on that
        far). Anything else: one block.
        """
        if self._ring_r != self._ring_w or self._fading is not None or not self.tone.is_silent():
            return min(block, limit)
        active = self._active
        if active is None:
            return limit if not self._pending else min(block, limit)
        if self._cancel_seen != self._cancel_req or self._duck != self.duck_gain \
                or self._vol != self.volume or self._tvol != self.tone_volume:
            return min(block, limit)
        room = min(limit, self._phrase_room(active))
        if room == limit:  # it goes on to the end of the call: the card's last, shorter block too
            return limit
        return max(room - room % block, min(block, limit))

    def _phrase_room(self, active: _Voice) -> int:
        """Frames until the phrase being said ends or the next one is due to start."""
        room = active.item.samples.shape[0] - active.pos
        if self._pending:
            room = min(room, self._pending[0].start_frame - self._frame)
        return room

    def plan_run(self, block: int, limit: int) -> int:
        """Plan the card's next blocks of `block` frames, as many as are alike, up to `limit`
        frames (the last block cut at `limit`, as the WAV writer cuts it); returns the frames
        planned (at least one block).

        Between two calls the control side does not act, so a stretch of the tone at a
        settled volume and duck stays that until the call ends, the tone falls silent, or
        the phrase said over it ends or another starts: its blocks are planned in one go
        (`_plan_tone_run`), each the block `plan_block` would plan. Silence and an
        instruction alone go as `steady_frames` says; anything else (a duck or volume on
        the move, a clip starting or fading) one block.
        """
        tone = self.tone
        if (
            limit > block
            and self._ring_r == self._ring_w
            and self._fading is None
            and self._vol == self.volume
            and self._tvol == self.tone_volume
            and not tone.is_silent()
        ):
            active = self._active
            n = 0
            if active is None:
                if not self._pending and self._duck == 1.0:  # the tone alone
                    n = self._plan_tone_run(block, limit, limit, None)
            elif self._cancel_seen == self._cancel_req and self._duck == self.duck_gain:
                # a phrase over the (ducked) tone, until it ends or the next one starts
                n = self._plan_tone_run(block, limit, self._phrase_room(active), active)
            if n:
                return n
        n = self.steady_frames(block, limit) if limit > block else limit  # (one block: all of it, whatever it is)
        self.plan_block(n)
        return n

    def _plan_tone_run(self, block: int, limit: int, room: int, active: _Voice | None) -> int:
        """`plan_block` for the card's blocks up to `limit` that fit whole in `room` frames,
        the tone sounding at settled gains and `active` (if any) said over it all along;
        returns the frames planned (0: not even one block fits).

        What `plan_block` does per block, done per stretch: the tone's figures block by
        block (`ToneSynth.plan_run`), the settled gains `_ramp_gains` would return, the
        phrase's run grown once by the stretch (`_plan_clip` joins a clip's consecutive
        runs into one anyway)."""
        if limit <= room:
            full, rest = divmod(limit, block)
            sizes = [block] * full
            if rest:
                sizes.append(rest)
        else:
            sizes = [block] * (max(room, 0) // block)
        figures = self.tone.plan_run(sizes) if sizes else []
        if not figures:
            return 0
        frames = sum(sizes[: len(figures)])
        vol = self._vol
        speaking = active is not None
        if active is not None:
            g = self._duck * vol * self._tvol  # `_ramp_gains` with the duck down and all settled
            self._plan_clip(self._planned_frames, active.item.samples, active.pos, frames)
            active.pos += frames
            if active.pos >= active.item.samples.shape[0]:
                self._active = None
        else:
            g = vol * self._tvol  # `_ramp_gains` when all is settled
            self._cancel_seen = self._cancel_req  # as `plan_block`: nothing said or queued
        # (`figures` may stop short of `sizes`: where the tone falls silent)
        self._planned.extend([(n, fig, g, g, speaking, vol, vol) for n, fig in zip(sizes, figures, strict=False)])
        self._frame += frames
        self._planned_frames += frames
        return frames

    def planned_frames(self) -> int:
        """Frames planned by `plan_block` whose samples `render_planned` has not made yet."""
        return self._planned_frames

    def render_planned(self, out: np.ndarray) -> None:
        """Make the samples of every block planned so far into `out` (float64, exactly
        `planned_frames()` long), as `render` would have made them block by block."""
        planned, runs = self._planned, self._runs
        self._planned, self._runs, self._run_of, self._planned_frames = [], [], {}, 0
        self._silent_entry = self._speech_entry = -1
        total = out.shape[0]
        if not planned:
            return
        lengths = np.fromiter((b[0] for b in planned), np.int64, len(planned))
        gains = np.array([(b[2], b[3]) for b in planned])
        self.tone.render_planned(out, lengths, [b[1] for b in planned], gains)
        if runs:
            sp = np.zeros(total)
            fade = self._fade
            for offset, samples, src, length, fade_pos in runs:
                clip = samples[src : src + length].astype(np.float64)
                if samples.dtype.kind in "iu":
                    clip *= PCM_SCALE
                if fade_pos >= 0:
                    clip *= fade[fade_pos : fade_pos + length]
                sp[offset : offset + length] += clip
            # The volume, the mix and the clipping where speech sounds (as `render` does
            # them for a block that speaks), a stretch of such blocks at a time.
            pos, start, vol = 0, -1, 0.0
            for n, _, _, _, spoke, v0, v1 in planned:
                if start >= 0 and not (spoke and v0 == v1 == vol):
                    _mix_speech(out, sp, start, pos, vol)
                    start = -1
                if spoke and v0 == v1:
                    if start < 0:
                        start, vol = pos, v0
                elif spoke:  # the volume moves within the block: its ramp, as `ramp_into`
                    ramp = np.arange(1, n + 1) * ((v1 - v0) / n)
                    ramp += v0
                    _mix_speech(out, sp, pos, pos + n, ramp)
                pos += n
            if start >= 0:
                _mix_speech(out, sp, start, pos, vol)
        for start in range(0, total, self.max_block):
            self._tap_write(out[start:], min(self.max_block, total - start))


def _mix_speech(out: np.ndarray, sp: np.ndarray, start: int, stop: int, vol: float | np.ndarray) -> None:
    """`out[start:stop]` += speech at `vol`, clipped to full scale (the mixing step of `Mixer.render`)."""
    s = sp[start:stop]
    s *= vol
    o = out[start:stop]
    o += s
    np.minimum(o, 1.0, out=o)
    np.maximum(o, -1.0, out=o)


class WavSink:
    """Pulls the mixer into a 16-bit mono WAV file, in session time, sample-exact.

    `render_until(t)` writes every sample up to session time `t` (frame round(t·rate)).
    The tone does not depend on block boundaries and clips start on their exact frame,
    so rendering in blocks of up to `block_size` gives what the speaker's callbacks
    (`audio.block_size`, 128 samples) would play (only the corners of duck/volume ramps may differ by a block).
    """

    def __init__(self, path: str | Path, mixer: Mixer, block_size: int = 1024, *, deferred: bool = False) -> None:
        self.path = Path(path)
        self.mixer = mixer
        self.block_size = min(int(block_size), mixer.max_block)
        # Deferred: the mixer plans each block as time passes and makes the samples a second
        # at a time (`Mixer.plan_block`); the same bytes, without a numpy call per block.
        self.deferred = deferred
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wav = wave.open(str(self.path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(mixer.sample_rate)
        # Buffer a second of samples between writes: fewer syscalls, same bytes.
        self._buf = np.zeros(mixer.sample_rate, dtype=np.float64)
        self._pcm = np.zeros(mixer.sample_rate, dtype=np.int16)
        self._fill = 0
        self.frames_written = 0
        self._closed = False

    def render_until_frame(self, frame: int) -> None:
        block, size = self.block_size, self._buf.shape[0]
        plan, render = self.mixer.plan_run, self.mixer.render
        deferred = self.deferred
        while self.frames_written < frame:
            fill = self._fill
            if deferred:
                # What goes on unchanged until the control side acts (between two calls):
                # silence, an instruction alone, the tone alone; the card's blocks of it
                # are planned in one go.
                n = plan(block, min(frame - self.frames_written, size - fill))
            else:
                n = min(block, frame - self.frames_written, size - fill)
                render(self._buf[fill : fill + n])
            self._fill = fill + n
            self.frames_written += n
            if self._fill == size:
                self._flush()

    def render_until(self, t: float) -> None:
        self.render_until_frame(frames_for(t, self.mixer.sample_rate))

    def _flush(self) -> None:
        if self.deferred:
            self.mixer.render_planned(self._buf[: self._fill])
        if self._fill:
            np.multiply(self._buf[: self._fill], 32767.0, out=self._buf[: self._fill])
            np.rint(self._buf[: self._fill], out=self._buf[: self._fill])
            self._pcm[: self._fill] = self._buf[: self._fill]
            self._wav.writeframes(self._pcm[: self._fill].tobytes())
            self._fill = 0

    def close(self) -> None:
        if self._closed:
            return
        self._flush()
        self._wav.close()
        self._closed = True

    def __enter__(self) -> WavSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PortAudioStream(Protocol):
    """What we use of a sounddevice `OutputStream`/`InputStream` (sounddevice is untyped)."""

    @property
    def active(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class DeviceOutput:
    """The mixer on a sound card through a sounddevice stream whose callback is PortAudio's own.

    Without a usable device the appliance keeps running in silence: the fault is logged
    once, the device retried every `retry_s` seconds, and speech dropped meanwhile so
    nothing piles up. Underruns are counted in the callback and logged from a
    supervisor thread, never from the audio thread.

    The stream is sounddevice's `_StreamBase` (its base class for custom streams, as
    python-rtmixer uses it) given a cffi function pointer (`portaudio_callback`), so
    PortAudio calls `_callback` with its own arguments: no wrapper builds a buffer
    object, a flags object and an array around every callback. The mixer fills the
    card's float32 buffer through a flat array view, made again only when PortAudio hands
    over a different buffer (it reuses one as a rule).
    """

    STREAM = "portaudio"  # what the stream's callback is (bench/device_rig.py's stand-in card follows it)

    def __init__(
        self,
        mixer: Mixer,
        device: str | int | None = None,
        block_size: int = 128,
        *,
        retry_s: float = 3.0,
        latency: str | float = "low",
        rescan: bool = False,
    ) -> None:
        self.mixer = mixer
        self.device = device
        self.block_size = int(block_size)
        self.retry_s = retry_s
        self.latency = latency
        # PortAudio lists devices once, at start-up: a card (or sound server) that appears
        # later is only found after re-initialising it, which also ends every other
        # PortAudio stream in this process (the microphone's). Hence opt-in.
        self.rescan = rescan
        self.underruns = 0
        self.callbacks = 0
        self.open_attempts = 0
        self.output_latency_s: float | None = None
        self.last_error: str | None = None
        self._stream: PortAudioStream | None = None
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread: threading.Thread | None = None
        self._c_callback: Any = None  # the cffi function pointer PortAudio calls (made once)
        self._view: np.ndarray | None = None  # the card's buffer as float32 samples
        self._view_of: Any = None  # the buffer pointer it views
        mixer.prepare(self.block_size)
        mixer.running = False

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    def start(self) -> DeviceOutput:
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="audio-out", daemon=True)
        self._thread.start()
        return self

    def wait_open(self, timeout: float) -> bool:
        return self._opened.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close()

    def portaudio_callback(self) -> Any:
        """`_callback` as the C function PortAudio calls (`PaStreamCallback`), made once.
        An exception in it aborts the stream (as sounddevice's own wrapper does); the
        supervisor then reopens it."""
        if self._c_callback is None:
            self._c_callback = _portaudio_ffi().callback("PaStreamCallback", self._callback, error=PA_ABORT)
        return self._c_callback

    def _callback(self, iptr, optr, frames, time_info, status, userdata) -> int:  # noqa: ANN001
        """PortAudio's stream callback: fill `frames` float32 samples at `optr`."""
        if status & PA_OUTPUT_UNDERFLOW:
            self.underruns += 1
        self.callbacks += 1
        out = self._view
        if optr != self._view_of or out is None or out.shape[0] != frames:  # cdata pointers compare by address
            out = self._view = np.frombuffer(_portaudio_ffi().buffer(optr, 4 * frames), dtype=np.float32)
            self._view_of = optr
        self.mixer.render(out)
        return PA_CONTINUE

    def _open(self) -> bool:
        self.open_attempts += 1
        try:
            import sounddevice as sd  # PortAudio missing is just another absent device

            stream = sd._StreamBase(  # the base class sounddevice offers for custom streams
                kind="output",
                samplerate=self.mixer.sample_rate,
                blocksize=self.block_size,
                device=self.device,
                channels=1,
                dtype="float32",
                latency=self.latency,
                callback=self.portaudio_callback(),
                wrap_callback=None,
            )
            stream.start()
        except Exception as exc:  # noqa: BLE001 - any failure means "no device yet"
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.warning(
                    "audio output %r unavailable (%s); continuing silently, retrying every %g s",
                    self.device,
                    message,
                    self.retry_s,
                )
            self.last_error = message
            return False
        self._stream = stream
        self.output_latency_s = float(stream.latency)
        self.mixer.cancel_speech()  # anything queued while silent is stale
        self.mixer.running = True
        self._opened.set()
        log.info(
            "audio output open on %r: %d Hz, block %d, latency %.1f ms",
            self.device,
            self.mixer.sample_rate,
            self.block_size,
            self.output_latency_s * 1e3,
        )
        self.last_error = None
        return True

    def _close(self) -> None:
        self.mixer.running = False
        self._opened.clear()
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("closing audio output: %s", exc)
        self._view = self._view_of = None  # the stream's buffers are gone with it

    def _supervise(self) -> None:
        logged_underruns = 0
        while not self._stop.is_set():
            if self._stream is None and not self._open():
                self._stop.wait(self.retry_s)
                if self.rescan and not self._stop.is_set():
                    rescan_devices()
                continue
            # one read: stop() on another thread may set _stream to None meanwhile
            stream = self._stream
            if stream is not None and not stream.active:
                log.warning("audio output stopped unexpectedly; reopening")
                self._close()
                continue
            if self.underruns != logged_underruns:
                log.warning("audio output: %d underrun(s) so far", self.underruns)
                logged_underruns = self.underruns
            self._stop.wait(1.0)


# PortAudio's callback ABI (portaudio.h): what `DeviceOutput.portaudio_callback` is made of.
PA_CONTINUE, PA_ABORT = 0, 2  # PaStreamCallbackResult
PA_OUTPUT_UNDERFLOW = 0x4  # PaStreamCallbackFlags
_PORTAUDIO_CDEF = """
typedef struct PaStreamCallbackTimeInfo {
    double inputBufferAdcTime;
    double currentTime;
    double outputBufferDacTime;
} PaStreamCallbackTimeInfo;
typedef unsigned long PaStreamCallbackFlags;
typedef int PaStreamCallback(const void *input, void *output, unsigned long frameCount,
                             const PaStreamCallbackTimeInfo *timeInfo, PaStreamCallbackFlags statusFlags,
                             void *userData);
"""
_ffi: Any = None


def _portaudio_ffi() -> Any:
    """A cffi FFI that knows PortAudio's callback type (sounddevice casts its pointer)."""
    global _ffi
    if _ffi is None:
        import cffi  # type: ignore[import-untyped]  # sounddevice's own dependency

        ffi = cffi.FFI()
        ffi.cdef(_PORTAUDIO_CDEF)
        _ffi = ffi
    return _ffi


def rescan_devices() -> None:
    """Make PortAudio list the sound devices again (closes all of its open streams)."""
    try:
        import sounddevice as sd

        sd._terminate()  # sounddevice's documented way to refresh the device list
        sd._initialize()
    except Exception as exc:  # noqa: BLE001 - still no device: the next retry says so
        log.debug("rescanning audio devices: %s", exc)


def frames_for(t: float, sample_rate: int) -> int:
    """Session time to a frame index, rounded to the nearest sample."""
    return int(math.floor(t * sample_rate + 0.5))
