"""Removes the device's own feedback tone from the microphone signal before recognition.

The mixer tells us the pitch it plays; the loudspeaker-to-microphone path delays and
colours it, so each 20 ms frame searches a narrow band around the recently played
pitches, fits that sinusoid (and the cue partials) by least squares and subtracts it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class ToneRemovalSettings:
    frame: int = 640
    """Samples per fit (40 ms, half-overlapped): long enough for a notch only ~25 Hz wide,
    so little of the voice goes with the tone; short enough that a gliding pitch is
    nearly constant within it."""
    search_fraction: float = 0.06
    """Band searched either side of the played pitch (about a semitone) for path delay."""
    history_s: float = 0.5
    """Pitches played this long ago may still be arriving (output buffers, the room)."""
    partials: tuple[float, ...] = (1.0, 1.5, 3.0)
    """Frequency ratios fitted and removed: the fundamental and the cue partials the mixer
    adds at 1.5x and 3x (docs/interfaces.md). Each costs the voice a ~25 Hz notch."""
    glide_terms: bool = True
    """Also fit t*sin and t*cos: the tone's pitch and loudness change within a frame as the
    patient squeezes, and a fixed sinusoid leaves that change behind."""
    tail_s: float = 0.3
    """Keep removing this long after the tone stopped: its echo is still arriving."""


class ToneRemover:
    """A notch that follows the known pitch of the feedback tone, frame by frame.

    `process(block, tone_hz, t)` returns as many samples as it was given, delayed by one
    frame (40 ms): each tone estimate is a weighted least-squares fit over a Hann-windowed
    frame, and the estimates are overlap-added, so the subtraction has no seams.
    `tone_hz=None` means the mixer plays no tone (after `tail_s`, nothing is subtracted).
    """

    def __init__(self, settings: ToneRemovalSettings | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        self.settings = settings or ToneRemovalSettings()
        self.sample_rate = sample_rate
        frame = self.settings.frame
        if frame % 2:
            raise ValueError(f"tone removal frame must be even, got {frame}")
        self._hop = frame // 2
        self._history: deque[tuple[float, float]] = deque()
        self._n = np.arange(frame)
        # Periodic Hann: shifted by half a frame, the windows sum to exactly one.
        self._window = 0.5 - 0.5 * np.cos(2 * np.pi * self._n / frame)
        self._ramp = (self._n - frame / 2) / frame  # -0.5 .. 0.5 across the frame
        self._frame_buf = np.zeros(frame, dtype=np.float64)  # the latest frame of input
        self._estimate = np.zeros(frame, dtype=np.float64)  # overlap-added tone estimate
        self._pending = np.zeros(0, dtype=np.float64)  # input short of a whole hop
        self._out = np.zeros(frame, dtype=np.float64)  # finished output not yet returned

    @property
    def delay_samples(self) -> int:
        """Output lags input by this much: a primed frame plus the half still awaiting its
        second estimate (60 ms by default)."""
        return self.settings.frame + self._hop

    def process(self, block: np.ndarray, tone_hz: float | None, t: float) -> np.ndarray:
        """Remove the tone from `block` (samples ending at stream time `t`); delayed one frame."""
        block = np.asarray(block, dtype=np.float64)
        if tone_hz is not None and tone_hz > 0:
            self._history.append((t, float(tone_hz)))
        horizon = self.settings.history_s + self.settings.tail_s
        while self._history and self._history[0][0] < t - horizon:
            self._history.popleft()
        band = None
        if self._history:
            band = (
                min(f for _, f in self._history) * (1 - self.settings.search_fraction),
                max(f for _, f in self._history) * (1 + self.settings.search_fraction),
            )
        hop = self._hop
        data = np.concatenate([self._pending, block])
        done = []
        for start in range(0, len(data) - hop + 1, hop):
            frame = np.concatenate([self._frame_buf[hop:], data[start : start + hop]])
            if band is not None:
                self._estimate += self._window * self._fit(frame, *band)
            # The frame's first half now has both of its overlapping estimates: final.
            done.append(frame[:hop] - self._estimate[:hop])
            self._estimate = np.concatenate([self._estimate[hop:], np.zeros(hop)])
            self._frame_buf = frame
        self._pending = data[len(done) * hop :]
        self._out = np.concatenate([self._out, *done])
        result, self._out = self._out[: len(block)], self._out[len(block) :]
        return result.astype(np.float32)

    def _fit(self, seg: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """The tone in `seg`: strongest frequency in [lo, hi], fitted by weighted least squares."""
        n = len(seg)
        idx = self._n
        w = self._window
        step = max(self.sample_rate / n / 8, 0.5)
        freqs = np.arange(lo, hi + step, step)
        phases = np.outer(freqs, idx) * (2 * np.pi / self.sample_rate)
        windowed = seg * w
        # Real arithmetic: a complex matrix-vector product is ~200x slower in this BLAS.
        power = np.hypot(np.cos(phases) @ windowed, np.sin(phases) @ windowed)
        k = int(np.argmax(power))
        f = freqs[k]
        if 0 < k < len(freqs) - 1:
            a, b, c = power[k - 1], power[k], power[k + 1]
            denom = a - 2 * b + c
            if denom != 0:
                f += 0.5 * (a - c) / denom * step
        cols = []
        for ratio in self.settings.partials:
            if ratio * f >= self.sample_rate / 2 * 0.9:
                continue
            phase = 2 * np.pi * ratio * f * idx / self.sample_rate
            cols += [np.sin(phase), np.cos(phase)]
            if self.settings.glide_terms:
                cols += [self._ramp * np.sin(phase), self._ramp * np.cos(phase)]
        design = np.stack(cols, axis=1)
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(design * sw[:, None], seg * sw, rcond=None)
        return design @ coef
