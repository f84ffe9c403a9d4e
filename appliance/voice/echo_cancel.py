"""Cancels the device's own sound in the microphone, using exactly what the mixer rendered.

The mixer keeps its rendered output (`Mixer.output_reference`). The canceller pulls it,
resamples it to the listener's 16 kHz, finds the bulk delay between that reference and
the microphone by cross-correlation (GCC-PHAT^0.7, re-checked every second while the
reference sounds) and subtracts the leak with a short block-NLMS adaptive filter (time
domain, two small matrix products per 5 ms) that follows the gliding tone's path. Unlike
the notch, it leaves the low speech band alone: it removes only what correlates with the
reference. Measured: a gliding tone 37+ dB down, ~20 dB through a short room; a prompt
only ~13 dB (the filter is tuned to the tone), which is why the listener judges the
device's own sentences uncancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, TypeGuard

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class ReferenceSource(Protocol):
    """What the mixer offers (implemented by `voice.audio.Mixer`)."""

    sample_rate: int

    def output_frame(self) -> int: ...

    def output_reference(self, start_frame: int, stop_frame: int) -> np.ndarray | None: ...


def has_reference(monitor: object) -> TypeGuard[ReferenceSource]:
    """True if `monitor` can hand over its rendered output (a `Mixer`)."""
    return callable(getattr(monitor, "output_reference", None)) and callable(getattr(monitor, "output_frame", None))


@dataclass(frozen=True)
class EchoCancelSettings:
    block: int = 80
    """Samples per filter update (5 ms): divides the listener's 800-sample blocks, so the
    canceller adds no delay. Smaller tracks a gliding tone better and costs more."""
    taps: int = 64
    """Filter length (4 ms at 16 kHz): the error of the bulk delay plus the loudspeaker and
    microphone. Short on purpose: a gliding tone's path is re-learnt as the pitch moves,
    and a short filter does that fast; a room's echo of a tone is, at any moment, one gain
    and phase, which a short filter can take."""
    pre_taps: int = 32
    """Taps before the estimated bulk delay, so an estimate a few samples late still cancels."""
    mu: float = 0.6
    """NLMS step (0..2): 1 removes all of the last block's error that the reference explains."""
    max_delay_s: float = 1.0
    """Longest loudspeaker-to-microphone delay searched (output + input buffering + room)."""
    window_s: float = 1.0
    """Microphone history correlated with the reference for each delay estimate."""
    reestimate_s: float = 1.0
    """How often the delay is checked again (only while the reference sounds)."""
    min_peak_ratio: float = 6.0
    """A delay estimate counts when its correlation peak stands this far above the mean."""
    tolerance: int = 16
    """A new delay this close to the current one is absorbed by the filter, not adopted."""
    silence: float = 1e-4
    """Reference RMS below this (-80 dBFS) is silence: nothing to learn, nothing to find."""


class _Resampler:
    """Mixer rate -> 16 kHz, streaming: a windowed-sinc low-pass at the source rate, then
    4-point cubic (Lagrange) interpolation at exact rational positions (integer arithmetic,
    so it never drifts). Any fixed delay/colouring it adds is learnt by the echo filter."""

    TAPS = 63

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src = int(src_rate)
        self.dst = int(dst_rate)
        self.identity = self.src == self.dst
        cutoff = min(0.45 * self.dst, 0.5 * self.src) / self.src  # cycles per source sample
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(self.TAPS)
        self._h = h / h.sum()
        self._in_tail = np.zeros(self.TAPS - 1)  # raw source samples before the next chunk
        # Filtered source samples, _filtered[0] being index _f0; index -1 is the zero history
        # the first cubic needs. (The low-pass delays by TAPS//2 source samples: learnt.)
        self._filtered = np.zeros(1)
        self._f0 = -1
        self._next_out = 0  # next output index to produce

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Source samples in (consecutive), as many 16 kHz samples out as they allow."""
        if self.identity:
            return chunk.astype(np.float64, copy=True)
        data = np.concatenate([self._in_tail, chunk])
        filtered = np.convolve(data, self._h, mode="valid")
        self._in_tail = data[-(self.TAPS - 1) :]
        self._filtered = np.concatenate([self._filtered, filtered])
        top = self._f0 + len(self._filtered) - 3  # cubic at idx needs idx+2 available
        # Output k sits at source position k*src/dst: produce every k with floor(...) <= top.
        k_stop = ((top + 1) * self.dst + self.src - 1) // self.src
        k = np.arange(self._next_out, max(k_stop, self._next_out))
        if k.size == 0:
            return np.zeros(0)
        num = k * self.src
        idx = num // self.dst
        t = (num - idx * self.dst) / self.dst
        i = idx - self._f0
        f = self._filtered
        ym1, y0, y1, y2 = f[i - 1], f[i], f[i + 1], f[i + 2]
        out = (
            ym1 * (-t * (t - 1) * (t - 2) / 6)
            + y0 * ((t + 1) * (t - 1) * (t - 2) / 2)
            + y1 * (-(t + 1) * t * (t - 2) / 2)
            + y2 * ((t + 1) * t * (t - 1) / 6)
        )
        self._next_out = int(k[-1]) + 1
        keep_from = max(0, (self._next_out * self.src) // self.dst - 1 - self._f0)
        self._filtered = self._filtered[keep_from:]
        self._f0 += keep_from
        return out


class _History:
    """The last `size` samples of a stream, addressed by absolute sample index."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(size)
        self.end = 0  # absolute index one past the newest sample

    def append(self, x: np.ndarray) -> None:
        size = self.buf.shape[0]
        n = len(x)
        if n >= size:
            self.buf[:] = x[-size:]
            self.buf = np.roll(self.buf, self.end + n)
        else:
            a = self.end % size
            first = min(n, size - a)
            self.buf[a : a + first] = x[:first]
            self.buf[: n - first] = x[first:]
        self.end += n

    def get(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop); zeros for what is older than kept or not yet written."""
        size = self.buf.shape[0]
        out = np.zeros(stop - start)
        lo, hi = max(start, self.end - size, 0), min(stop, self.end)
        if lo < hi:
            idx = np.arange(lo, hi) % size
            out[lo - start : hi - start] = self.buf[idx]
        return out


class EchoCanceller:
    """Microphone blocks in, the same blocks minus the device's own sound out (float32).

    `delay` is the bulk offset D between the streams: microphone sample m is heard from
    16 kHz reference sample m + D (None until found). Until then, and whenever the
    reference is silent, blocks pass unchanged.
    """

    def __init__(
        self, source: ReferenceSource, settings: EchoCancelSettings | None = None, sample_rate: int = SAMPLE_RATE
    ) -> None:
        self.source = source
        self.settings = s = settings or EchoCancelSettings()
        self.sample_rate = int(sample_rate)
        self._resampler = _Resampler(int(source.sample_rate), self.sample_rate)
        self._src_next: int | None = None  # next mixer frame to pull
        keep = int((s.max_delay_s + s.window_s + 0.5) * self.sample_rate)
        self._ref = _History(keep)
        self._ref_start = 0  # 16 kHz reference index of mixer frame 0 (after a gap: shifted)
        self._mic = _History(int(s.window_s * self.sample_rate) + s.block)
        self._mic_n = 0
        self.delay: int | None = None
        self._candidate: int | None = None
        self._since_estimate = 0
        self._pending = np.zeros(0)
        self._held = np.zeros(0)
        self._w = np.zeros(s.taps)  # w[j]: gain of reference sample m + D + pre_taps - j
        self.blocks_adapted = 0
        self.delay_changes = 0

    # -- the reference ------------------------------------------------------------------------
    def _pull_reference(self) -> None:
        end = int(self.source.output_frame())
        chunk = None
        if self._src_next is not None and end > self._src_next:
            chunk = self.source.output_reference(self._src_next, end)
            if chunk is None:
                log.warning("echo canceller fell behind the mixer's output; reference restarted")
        if chunk is None and (self._src_next is None or end > self._src_next):
            # (Re)start with what the mixer still holds, as far back as a delay can reach.
            rate = int(self.source.sample_rate)
            self._src_next = max(0, end - int(self.settings.max_delay_s * rate) - 1)
            self._resampler = _Resampler(rate, self.sample_rate)
            # 16 kHz reference index == mixer frame * 16k / rate, so D keeps its meaning.
            base = (self._src_next * self.sample_rate) // rate
            if base != self._ref.end:
                self._ref.buf[:] = 0.0
                self._ref.end = base
            chunk = self.source.output_reference(self._src_next, end)
            if chunk is None:
                return
        if chunk is None:
            return
        self._ref.append(self._resampler.push(chunk))
        self._src_next = end

    # -- delay --------------------------------------------------------------------------------
    def estimate_delay(self) -> tuple[int, float] | None:
        """(D, peak ratio) from the last `window_s` of microphone against the reference."""
        s = self.settings
        w = int(s.window_s * self.sample_rate)
        m_end = self._mic_n
        if m_end < w // 2:
            return None
        w = min(w, m_end)
        max_lag = int(s.max_delay_s * self.sample_rate)
        # Microphone sample m_end-1 was rendered at most max_lag before the newest reference.
        d_hi = self._ref.end - m_end
        d_lo = d_hi - max_lag
        mic = self._mic.get(m_end - w, m_end)
        ref = self._ref.get(m_end - w + d_lo, m_end + d_hi)
        if np.sqrt(np.mean(ref**2)) < s.silence or not mic.any():
            return None
        nfft = 1 << int(np.ceil(np.log2(len(ref) + w)))
        ref_f = np.fft.rfft(ref, nfft)
        cross = ref_f * np.conj(np.fft.rfft(mic, nfft))
        # Mostly whitened (PHAT^0.7: a sharp peak, even for a gliding tone), and only where
        # the reference has energy: elsewhere the phase is the room's noise. Full PHAT
        # lets the weakest of those bins bury the peak.
        ref_p = ref_f.real**2 + ref_f.imag**2
        cross *= (ref_p > 1e-4 * ref_p.max()) / (np.abs(cross) + 1e-20) ** 0.7
        corr = np.fft.irfft(cross, nfft)[: max_lag + 1]
        k = int(np.argmax(corr))
        ratio = float(corr[k] / (np.mean(np.abs(corr)) + 1e-12))
        return d_lo + k, ratio

    def _check_delay(self) -> None:
        s = self.settings
        found = self.estimate_delay()
        if found is None:
            return
        d, ratio = found
        if ratio < s.min_peak_ratio:
            return
        if self.delay is not None and abs(d - self.delay) <= s.tolerance:
            self._candidate = None
            return
        # Adopt a changed delay only when two estimates in a row agree on it.
        if self.delay is None or (self._candidate is not None and abs(d - self._candidate) <= s.tolerance // 4):
            log.info("echo canceller: bulk delay %s -> %d samples (peak ratio %.1f)", self.delay, d, ratio)
            if self.delay is not None:
                self.delay_changes += 1
            self.delay = d
            self._candidate = None
            self._w[:] = 0.0
        else:
            self._candidate = d

    # -- cancelling ---------------------------------------------------------------------------
    def process(self, block: np.ndarray) -> np.ndarray:
        """Remove the device's sound from `block` (float, 16 kHz); same length, no delay."""
        if block.dtype == np.int16:
            block = block / 32768.0
        block = np.asarray(block, dtype=np.float64)
        self._pull_reference()
        self._mic.append(block)
        self._mic_n += len(block)
        self._since_estimate += len(block)
        if self.delay is None or self._since_estimate >= self.settings.reestimate_s * self.sample_rate:
            self._since_estimate = 0
            self._check_delay()
        b = self.settings.block
        data = np.concatenate([self._pending, block]) if self._pending.size else block
        out = np.empty(len(block))
        # Whole filter blocks are cancelled; a tail shorter than a block waits for the next
        # call, so the output lags by at most one block when blocks are not multiples of it.
        n_whole = (len(data) // b) * b
        done = np.empty(n_whole)
        m0 = self._mic_n - len(data)
        for i in range(0, n_whole, b):
            done[i : i + b] = self._block(data[i : i + b], m0 + i)
        self._pending = data[n_whole:].copy()
        # Output the newest len(block) samples available: processed ones (delayed by the
        # pending count when blocks do not divide evenly).
        avail = np.concatenate([self._held, done]) if self._held.size else done
        if len(avail) >= len(block):
            out = avail[: len(block)]
            self._held = avail[len(block) :]
        else:  # first call with a ragged block: pad with silence (once)
            out = np.concatenate([np.zeros(len(block) - len(avail)), avail])
            self._held = np.zeros(0)
        return out.astype(np.float32)

    def _block(self, d: np.ndarray, m0: int) -> np.ndarray:
        """One block of microphone samples d (starting at stream index m0) minus the echo.

        Block NLMS in the time domain: the rows of X are the reference as each microphone
        sample saw it (a strided view, no copy); two matrix-vector products per block.
        """
        s = self.settings
        if self.delay is None:
            return d
        b, taps = len(d), s.taps
        r0 = m0 + self.delay + s.pre_taps  # x[m] = ref[m + D + pre]
        seg = self._ref.get(r0 - taps + 1, r0 + b)
        rows = np.lib.stride_tricks.sliding_window_view(seg, taps)[:, ::-1]
        e = d - rows @ self._w
        energy = float(np.einsum("ij,ij->", rows, rows))
        if energy < (s.silence**2) * taps * b:
            return e  # nothing playing: nothing to learn
        # No double-talk freeze: the filter is short and follows the gliding tone, so it
        # must keep adapting while the patient speaks (freezing it then cost the room
        # bench 20 points of accuracy). Speech barely moves it: the update only keeps
        # what of the error correlates with the reference, i.e. the tone's band.
        self._w += (s.mu / energy) * (rows.T @ e)
        self.blocks_adapted += 1
        return e


class RecordedReference:
    """A recording of the device's own output (`session.wav`) as the canceller's reference,
    kept in step with a recorded microphone: `appliance listen --wav MIC --reference OUT`.

    Both recordings start at the same moment. As on the device, the reference is available
    `ahead_s` before the microphone hears it (the output buffer); the canceller finds the
    rest of the delay itself. As a `PlaybackMonitor` it reports nothing: a recording does not
    say what was tone and what was speech, so the canceller alone removes the device's sound.
    """

    def __init__(self, samples: np.ndarray, sample_rate: int, ahead_s: float = 0.05) -> None:
        self.samples = np.asarray(samples, dtype=np.float64)
        self.sample_rate = int(sample_rate)
        self.ahead_s = ahead_s
        self.t = 0.0
        """Seconds of microphone heard so far (set before each block)."""

    def playback_state(self) -> tuple[float | None, float, bool, str | None]:
        return (None, 0.0, False, None)

    def output_frame(self) -> int:
        return min(len(self.samples), int((self.t + self.ahead_s) * self.sample_rate))

    def output_reference(self, start_frame: int, stop_frame: int) -> np.ndarray | None:
        out = np.zeros(stop_frame - start_frame)
        lo, hi = max(start_frame, 0), min(stop_frame, len(self.samples))
        if lo < hi:
            out[lo - start_frame : hi - start_frame] = self.samples[lo:hi]
        return out
