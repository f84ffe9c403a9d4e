"""What the synthesizer's voice sounds like across a catalogue: speaking rate and loudness.

Renders every phrase of a catalogue the device's way (`prepare_speech`: PhraseBank, the
configured rate, the pyttsx3 worker with the espeak-ng command line behind it) into a
fresh cache and measures, with its own yardstick (not the device's code):

- words per minute as heard, for long instructions (≥ 8 words, no breath-timed keyword):
  words / (first to last sound, in minutes); median and range;
- loudness: active speech level of every clip (mean power of the 20 ms frames within
  25 dB of the loudest, dBFS); spread = loudest - quietest, and the 5-95 % range; and,
  as a second yardstick, the plain RMS from first to last sound (pauses included).

    python bench/speech.py --lang nl
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.config import AudioConfig
from appliance.voice.output import prepare_speech
from appliance.voice.phrases import Catalogue

LONG_WORDS = 8


def level_db(x: np.ndarray, rate: int) -> float:
    n = int(0.02 * rate)
    frames = x[: x.size // n * n].astype(np.float64).reshape(-1, n)
    db = 10 * np.log10(np.maximum((frames**2).mean(axis=1), 1e-12))
    loud = db[db > db.max() - 25.0]
    return float(10 * np.log10(np.mean(10 ** (loud / 10))))


def rms_db(x: np.ndarray) -> float:
    mag = np.abs(x)
    loud = np.flatnonzero(mag > 0.02 * mag.max())
    part = x[loud[0]: loud[-1] + 1].astype(np.float64)
    return float(10 * np.log10(np.mean(part**2)))


def sounding_seconds(x: np.ndarray, rate: int) -> float:
    mag = np.abs(x)
    loud = np.flatnonzero(mag > 0.02 * mag.max())
    return (loud[-1] - loud[0] + 1) / rate if loud.size else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", default="nl", choices=("nl", "en"))
    p.add_argument("--cache", type=Path, default=None, help="speech cache (default: a fresh temporary one)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cat = Catalogue.load(args.lang)
    cfg = AudioConfig()
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as tmp:
        t0 = time.monotonic()
        bank = prepare_speech(args.lang, cfg, cache_dir=args.cache or Path(tmp))
        render_s = time.monotonic() - t0
        wpm, levels, plain = {}, {}, []
        for key in sorted(cat.keys()):
            clip = bank.clip(key)
            levels[key] = level_db(clip.samples, clip.sample_rate)
            plain.append(rms_db(clip.samples))
            words = len(re.findall(r"\w+", cat.text(key)))
            if words >= LONG_WORDS and "^" not in cat.raw(key):
                wpm[key] = 60.0 * words / sounding_seconds(clip.samples, clip.sample_rate)
    w = np.array(list(wpm.values()))
    lv = np.array(list(levels.values()))
    slow, fast = min(wpm, key=wpm.get), max(wpm, key=wpm.get)
    quiet, loud = min(levels, key=levels.get), max(levels, key=levels.get)
    print(f"catalogue={args.lang} phrases={len(levels)} rendered_in_s={render_s:.0f}")
    print(f"long_instructions={w.size} wpm_median={np.median(w):.0f} wpm_range={w.min():.0f}-{w.max():.0f} "
          f"wpm_p5_p95={np.percentile(w, 5):.0f}-{np.percentile(w, 95):.0f} (slowest {slow}, fastest {fast})")
    print(f"loudness_dbfs_median={np.median(lv):.1f} spread_db={lv.max() - lv.min():.1f} "
          f"p5_p95_db={np.percentile(lv, 95) - np.percentile(lv, 5):.1f} (quietest {quiet}, loudest {loud})")
    rms = np.array(plain)
    print(f"plain_rms_spread_db={rms.max() - rms.min():.1f} plain_rms_p5_p95_db="
          f"{np.percentile(rms, 95) - np.percentile(rms, 5):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
