"""What the patient hears, from `appliance simulate --out DIR` (session.wav and timeline.jsonl).

    python bench/listening.py DIR [DIR2]

For each DIR: prompts said, the speech level (the mix while a phrase plays, minus the
ducked tone), the tone's level alone during the holds (median of 50 ms windows 0.3 s
clear of speech), the ducked tone (that level times
the mixer's duck gain), speech over the ducked tone in dB, the longest stretch without a
word while exercising (between an exercise's start and its end) and the longest stretch
of no sound at all. With DIR2: how many prompts differ between the two sessions (a
sequence diff of the phrase keys) and a few examples.
"""

from __future__ import annotations

import difflib
import json
import sys
import wave
from pathlib import Path

import numpy as np

from appliance.voice.audio import Mixer


def load(out: Path) -> tuple[list[dict], np.ndarray, int]:
    events = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines() if line.strip()]
    # session.wav starts before the session (the ready phrase, the wait for "start"): the
    # timeline's session times are moved onto the WAV by the offset `appliance simulate` notes.
    offset = next((float(e["session_starts_at_s"]) for e in events if e["kind"] == "wav"), 0.0)
    for e in events:
        for key in ("at", "start", "end"):
            if key in e:
                e[key] += offset
    with wave.open(str(out / "session.wav"), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    return events, x, rate


def db(power: float) -> float:
    return float(10.0 * np.log10(max(power, 1e-12)))


def mask(n: int, rate: int, spans: list[tuple[float, float]]) -> np.ndarray:
    m = np.zeros(n, bool)
    for a, b in spans:
        m[max(0, int(a * rate)):max(0, min(n, int(b * rate)))] = True
    return m


def exercising_spans(events: list[dict]) -> list[tuple[float, float]]:
    spans, start = [], None
    for e in events:
        if e["kind"] == "exercise" and e.get("state") == "started":
            start = e["t"]
        elif e["kind"] == "exercise" and e.get("state") in ("finished", "skipped") and start is not None:
            spans.append((start, e["t"]))
            start = None
    return spans


def longest_gap(spans: list[tuple[float, float]], within: list[tuple[float, float]]) -> tuple[float, float]:
    """The longest stretch inside `within` not covered by `spans`: (seconds, where)."""
    best = (0.0, 0.0)
    for a, b in within:
        t = a
        for s, e in sorted(spans):
            if e <= t or s >= b:
                continue
            if s > t and s - t > best[0]:
                best = (s - t, t)
            t = max(t, e)
        if b - t > best[0]:
            best = (b - t, t)
    return float(best[0]), float(best[1])


def figures(out: Path) -> dict:
    events, x, rate = load(out)
    says = [e for e in events if e["kind"] == "say"]
    speech = [(e["at"], e["at"] + e["duration_s"]) for e in says]
    holds = [(e["start"], e["end"]) for e in events if e["kind"] == "phase" and e["phase"] in ("hold", "move")]
    sp = mask(len(x), rate, speech)
    hd = mask(len(x), rate, holds)
    # The tone alone: in holds, 0.3 s clear of any speech (its duck ramps, a clip's tail),
    # as the median of 50 ms windows (robust to what is left of the ramps).
    near = mask(len(x), rate, [(a - 0.3, b + 0.3) for a, b in speech])
    alone = hd & ~near
    w = int(0.05 * rate)
    n = len(x) // w
    ok = alone[: n * w].reshape(n, w).all(axis=1)
    windows = np.mean(x[: n * w].reshape(n, w)[ok] ** 2, axis=1)
    tone_p = float(np.median(windows)) if len(windows) else 0.0
    duck = Mixer(rate).duck_gain
    ducked_p = tone_p * duck**2
    mix_p = float(np.mean(x[sp & hd] ** 2)) if np.any(sp & hd) else float(np.mean(x[sp] ** 2))
    speech_p = max(mix_p - ducked_p, 1e-12)
    ex = exercising_spans(events)
    word_gap = longest_gap(speech, ex)
    win = int(0.05 * rate)
    n = len(x) // win
    loud = np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1)) > 10 ** (-60 / 20)
    sound = [(i * 0.05, (i + 1) * 0.05) for i in np.nonzero(loud)[0]]
    silence = longest_gap(_merge(sound), ex)
    return dict(prompts=len(says), speech_dbfs=round(db(speech_p), 1), tone_in_holds_dbfs=round(db(tone_p), 1),
                ducked_tone_dbfs=round(db(ducked_p), 1),
                speech_over_ducked_tone_db=round(db(speech_p) - db(ducked_p), 1),
                longest_without_a_word_s=round(word_gap[0], 1), at_s=round(word_gap[1], 1),
                longest_silence_s=round(silence[0], 1), silence_at_s=round(silence[1], 1),
                keys=[e["phrase"] for e in says])


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in spans:
        if out and a <= out[-1][1] + 1e-9:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__)
        return 2
    results = [figures(Path(a)) for a in argv]
    for a, r in zip(argv, results, strict=True):
        print(a, {k: v for k, v in r.items() if k != "keys"})
    if len(results) == 2:
        a, b = results[0]["keys"], results[1]["keys"]
        sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
        ops = [op for op in sm.get_opcodes() if op[0] != "equal"]
        print("prompts differing:", sum(max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in ops))
        for op, i1, i2, j1, j2 in ops[:8]:
            print(f"  {op}: {a[i1:i2][:4]} -> {b[j1:j2][:4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
