"""Is a voice pack fit to speak to patients? Coverage of the catalogue, clipping, loudness,
silence around the speech, and recordings whose length does not fit their sentence.

`check_pack` reads the folder and returns a `PackReport`; `appliance voice check` prints it.
`tidy_take` is what `appliance voice record` does to a take before it keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.config import ConfigError
from appliance.voice import loudness
from appliance.voice.phrases import Catalogue
from appliance.voice.voicepack import PackError, PackInfo, Recording, VoicePack

CHARS_PER_SECOND = 13.0  # a calm speaker (and espeak-ng at 150 wpm) says about 13 characters a second
LENGTH_RATIO = (0.45, 2.2)  # speech this much shorter or longer than the text suggests: another sentence?
LENGTH_SLACK_S = 0.6  # short phrases ("één") vary most; this much either way is always fine
CLIPPED_RUN = 3  # this many samples in a row at full scale is clipping
TOO_QUIET_DBFS = -45.0  # levelling this up would lift the room noise with it
SILENCE_NOTE_S = 1.0  # more leading or trailing silence than this is noted (the device trims it)
KEEP_SILENCE_S = 0.1  # a kept take has this much room either side of the speech


@dataclass(frozen=True)
class RecordingCheck:
    """What one recording measured and what is wrong with it (`problems` make it unusable)."""

    key: str
    duration_s: float
    speech_s: float
    lead_s: float
    trail_s: float
    level_dbfs: float
    expected_s: float
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class PackReport:
    directory: Path
    info: PackInfo | None
    catalogue_keys: set[str] = field(default_factory=set)
    checks: dict[str, RecordingCheck] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # WAVs whose name is no catalogue key
    pack_problems: list[str] = field(default_factory=list)  # voice.toml and the like

    @property
    def missing(self) -> list[str]:
        return sorted(self.catalogue_keys - set(self.checks))

    @property
    def unusable(self) -> list[str]:
        """Keys whose recording must not be spoken (and WAVs no phrase will ever use)."""
        return sorted([k for k, c in self.checks.items() if c.problems] + self.unknown)

    @property
    def usable(self) -> bool:
        return not self.pack_problems and not self.unusable

    def level_spread_db(self) -> tuple[float, float]:
        levels = [c.level_dbfs for c in self.checks.values() if c.level_dbfs > -100]
        return (min(levels), max(levels)) if levels else (0.0, 0.0)


def expected_seconds(text: str) -> float:
    """How long a calm speaker takes for `text`."""
    return len(text) / CHARS_PER_SECOND


def check_recording(rec: Recording, text: str) -> RecordingCheck:
    x, rate = rec.samples, rec.sample_rate
    problems: list[str] = []
    notes: list[str] = []
    start, end = loudness.speech_bounds(x, rate)
    speech_s = (end - start) / rate
    level = loudness.active_level_db(x[start:end], rate) if end > start else -120.0
    expected = expected_seconds(text)
    full = np.abs(x) >= loudness.CLIP_LEVEL
    if full.any():
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], full.astype(np.int8), [0])))))[::2]
        if runs.size and runs.max() >= CLIPPED_RUN:
            problems.append(f"clipped ({int(full.sum())} samples at full scale): record it less loud")
    if end <= start or level < -90:
        problems.append("silent")
    elif level < TOO_QUIET_DBFS:
        problems.append(f"too quiet ({level:.0f} dBFS): record it closer to the microphone")
    lo, hi = LENGTH_RATIO
    if end > start and not (lo * expected - LENGTH_SLACK_S <= speech_s <= hi * expected + LENGTH_SLACK_S):
        problems.append(f"{speech_s:.1f} s of speech where the sentence takes about {expected:.1f} s: "
                        "is it this sentence?")
    lead, trail = start / rate, (x.shape[0] - end) / rate
    if lead > SILENCE_NOTE_S or trail > SILENCE_NOTE_S:
        notes.append(f"{lead:.1f} s silence before, {trail:.1f} s after (trimmed when spoken)")
    if rec.channels != 1:
        notes.append(f"{rec.channels} channels: only the first is spoken")
    return RecordingCheck(rec.key, rec.duration_s, speech_s, lead, trail, level, expected,
                          tuple(problems), tuple(notes))


def check_pack(directory: str | Path) -> PackReport:
    directory = Path(directory)
    try:
        pack = VoicePack.load(directory)
    except ConfigError as exc:
        return PackReport(directory, None, pack_problems=[str(exc)])
    catalogue = Catalogue.load(pack.language)
    report = PackReport(directory, pack.info, catalogue_keys=catalogue.keys())
    for key in sorted(pack.keys()):
        if not catalogue.has(key):
            report.unknown.append(key)
            continue
        try:
            rec = pack.recording(key)
        except PackError as exc:
            report.checks[key] = RecordingCheck(key, 0.0, 0.0, 0.0, 0.0, -120.0, 0.0, (str(exc),))
            continue
        report.checks[key] = check_recording(rec, catalogue.text(key))
    for key, offset in pack.info.keyword_offsets.items():
        if key in report.checks and offset > report.checks[key].duration_s:
            report.pack_problems.append(f"voice.toml: keywords.{key} = {offset}: after the end of {key}.wav "
                                        f"({report.checks[key].duration_s:.2f} s)")
        elif not catalogue.has(key):
            report.pack_problems.append(f"voice.toml: keywords.{key} = {offset}: no such phrase")
    return report


def tidy_take(x: np.ndarray, rate: int) -> np.ndarray:
    """A take as kept: room silence cut to a tenth of a second either side, levelled."""
    start, end = loudness.speech_bounds(x, rate)
    if end <= start:
        return x.astype(np.float32)
    pad = int(KEEP_SILENCE_S * rate)
    return loudness.normalise(x[max(0, start - pad): min(x.shape[0], end + pad)], rate)
