"""How loud a phrase sounds, and making every phrase equally loud: for the synthesizer's
clips and a clinic's recordings alike (plain numpy, float samples in -1..1).

The level is the mean power of the frames that carry speech (a simplified active speech
level, ITU-T P.56's idea): pauses between sentences do not make a long phrase quieter.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02
ACTIVE_RANGE_DB = 25.0  # frames within this of the loudest frame count as speech
SILENT_DBFS = -70.0  # frames below this never count (hiss, a recording's room tone)
TARGET_DBFS = -19.0  # every phrase's active level: the median of espeak-ng's clips at peak 0.8
LIMIT_KNEE = 0.7  # above this the few loudest peaks are rounded off instead of clipped
CLIP_LEVEL = 0.999  # a sample at or above this (of full scale) in a recording is clipped


def frame_db(x: np.ndarray, rate: int, frame_s: float = FRAME_S) -> np.ndarray:
    """Power of consecutive frames in dBFS (a sine of full-scale amplitude is -3 dB)."""
    n = max(1, int(frame_s * rate))
    m = x.shape[0] // n
    if m == 0:
        return np.array([-120.0])
    frames = x[: m * n].astype(np.float64).reshape(m, n)
    power = np.mean(frames * frames, axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-12))


def active_level_db(x: np.ndarray, rate: int) -> float:
    """The phrase's loudness: mean power, in dBFS, of the frames that carry speech."""
    db = frame_db(x, rate)
    loud = db[(db > db.max() - ACTIVE_RANGE_DB) & (db > SILENT_DBFS)]
    if loud.size == 0:
        return -120.0
    return float(10.0 * np.log10(np.mean(10.0 ** (loud / 10.0))))


def normalise(x: np.ndarray, rate: int, target_db: float = TARGET_DBFS) -> np.ndarray:
    """`x` at the target active level; peaks above the knee rounded off, never clipped."""
    level = active_level_db(x, rate)
    if level <= -100.0:
        return x.astype(np.float32)
    y = x.astype(np.float64) * 10.0 ** ((target_db - level) / 20.0)
    over = np.abs(y) > LIMIT_KNEE
    if over.any():
        head = 1.0 - LIMIT_KNEE
        mag = np.abs(y[over])
        y[over] = np.sign(y[over]) * (LIMIT_KNEE + head * np.tanh((mag - LIMIT_KNEE) / head))
    return y.astype(np.float32)


def speech_bounds(x: np.ndarray, rate: int, floor_db: float = 40.0) -> tuple[int, int]:
    """First and one-past-last sample of the frames within `floor_db` of the loudest frame."""
    db = frame_db(x, rate, 0.01)
    n = max(1, int(0.01 * rate))
    loud = np.flatnonzero((db > db.max() - floor_db) & (db > SILENT_DBFS))
    if loud.size == 0:
        return 0, 0
    return int(loud[0]) * n, min(x.shape[0], (int(loud[-1]) + 1) * n)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (FFT): no aliasing from a 48 kHz recording into 22 kHz."""
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32)
    n_out = int(round(x.shape[0] * rate_out / rate_in))
    spectrum = np.fft.rfft(x.astype(np.float64))
    bins = n_out // 2 + 1
    if bins <= spectrum.shape[0]:
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - spectrum.shape[0], dtype=complex)])
    y = np.fft.irfft(spectrum, n_out) * (n_out / x.shape[0])
    return y.astype(np.float32)
