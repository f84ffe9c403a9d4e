"""Speech recognizer engines behind one small interface: Vosk (the device's) and pocketsphinx.

Each engine recognizes a closed grammar of command phrases plus a garbage path (Vosk's
`[unk]` where the model has it, and filler words) and streams partial and final results.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
UNK = "[unk]"


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (library or model missing); the message says why."""


@dataclass(frozen=True)
class WordHit:
    """One recognized word: text, confidence 0..1 and, when known, its timing in the stream."""

    word: str
    confidence: float
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Evidence:
    """A second look at an utterance the engine took for a command (pocketsphinx).

    The same audio is decoded twice more: by the garbage path alone (any run of filler
    words) and by a free phone loop. `margin` is how much better, per 10 ms frame, the
    command explains the sound than the best run of other words (log units of the
    decoder); `phones` is how many phones the phone loop heard, against the `expected`
    number of the command's own pronunciation: a command word inside a longer sentence
    leaves many more."""

    margin: float
    phones: int
    expected: int
    phone_margin: float = 0.0
    """How much better, per frame, the command explains the sound than the free phone
    loop does (usually below zero: the loop can follow any sound); a word that only sounds
    like the command falls further below."""

    @property
    def extra_phones(self) -> int:
        return self.phones - self.expected


@dataclass(frozen=True)
class Hypothesis:
    """What the engine heard so far (`final=False`) or for a finished utterance."""

    text: str
    words: tuple[WordHit, ...] = ()
    final: bool = False
    evidence: Evidence | None = None
    """Set by engines that check a command a second time (pocketsphinx)."""

    @property
    def confidence(self) -> float:
        """The weakest word's confidence: one doubtful word makes the phrase doubtful."""
        return min((w.confidence for w in self.words), default=0.0)


EMPTY = Hypothesis("")


def normalize(text: str) -> str:
    """Lower case, single spaces, pocketsphinx's alternative-pronunciation marks `(2)` removed."""
    text = re.sub(r"\(\d+\)", "", text.lower())
    return " ".join(text.split())


def _grammar_dict(full: Path, words: set[str], out: Path) -> Path:
    """The lines of pronouncing dictionary `full` for `words` (every pronunciation), into `out`."""
    with open(full, encoding="utf-8", errors="replace") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            head = line.split(None, 1)[0] if line.strip() else ""
            if normalize(head) in words:
                dst.write(line)
    return out


class RecognizerEngine(Protocol):
    """A streaming recognizer of 16 kHz mono int16 audio against a closed vocabulary."""

    name: str
    has_confidence: bool
    """False when the engine's confidences carry no information (then 1.0 is reported)."""

    def feed(self, pcm: np.ndarray) -> Hypothesis:
        """Take the next block; a final hypothesis when the engine's own end-pointer fired,
        else the current partial one."""

    def finish(self) -> Hypothesis:
        """Force the end of the current utterance and return its final hypothesis."""

    def reset(self) -> None:
        """Forget the current utterance."""

    def known_words(self, words: Sequence[str]) -> list[str]:
        """The subset of `words` the engine's model can recognize."""


def _as_bytes(pcm: np.ndarray) -> bytes:
    if pcm.dtype != np.int16:
        pcm = np.clip(np.asarray(pcm, dtype=np.float64) * 32767.0, -32768, 32767).astype(np.int16)
    return pcm.tobytes()


# --- Vosk ------------------------------------------------------------------------------


def vosk_library_problem(exc: OSError) -> str:
    """What a technician reads when libvosk.so does not load, and what to install."""
    text = str(exc)
    missing = re.search(r"(lib[\w+.-]+?)\.so(?:\.\d+)*: cannot open shared object", text)
    if missing:
        package = {"libatomic": "libatomic1"}.get(missing.group(1), missing.group(1))
        return (f"the vosk library does not load ({missing.group(0)}): "
                f"install {package} (sudo apt install {package})")
    return f"the vosk library does not load ({text}): reinstall vosk (install.sh)"


class VoskEngine:
    """Vosk `KaldiRecognizer` restricted to the command phrases, with a garbage path.

    Phrases with words missing from the model are left out (logged once), because Vosk
    silently drops them otherwise. Models without `[unk]` (the Korean test model) get
    their garbage path from filler words only.
    """

    name = "vosk"
    has_confidence = True

    def __init__(self, model_dir: str | Path, phrases: Sequence[str], fillers: Sequence[str] = ()) -> None:
        try:
            import vosk
        except ImportError as exc:  # pragma: no cover - the venv always has it
            raise EngineUnavailable(f"vosk is not installed ({exc})") from None
        except OSError as exc:  # libvosk.so is there but cannot load (a runtime library missing)
            raise EngineUnavailable(vosk_library_problem(exc)) from None
        model_dir = Path(model_dir)
        if not (model_dir / "am").is_dir() and not (model_dir / "final.mdl").exists():
            raise EngineUnavailable(f"no Vosk model in {model_dir}")
        vosk.SetLogLevel(-1)
        try:
            self._model = vosk.Model(str(model_dir))
        except Exception as exc:  # vosk raises a bare Exception on a bad model
            raise EngineUnavailable(f"Vosk model {model_dir} does not load: {exc}") from None
        self._vosk = vosk
        self.phrases = [p for p in (normalize(p) for p in phrases) if self._all_known(p)]
        dropped = sorted(set(map(normalize, phrases)) - set(self.phrases))
        if dropped:
            log.warning("Vosk model %s lacks words of %s; those phrases are not recognized", model_dir, dropped)
        if not self.phrases:
            raise EngineUnavailable(f"Vosk model {model_dir} knows none of the command phrases")
        self.fillers = [f for f in (normalize(f) for f in fillers) if self._all_known(f) and f not in self.phrases]
        self.has_unk = self._model.vosk_model_find_word(UNK) >= 0
        grammar = self.phrases + self.fillers + ([UNK] if self.has_unk else [])
        # ensure_ascii=False: Vosk matches the grammar's UTF-8 words byte for byte.
        self._grammar = json.dumps(grammar, ensure_ascii=False)
        self._rec = self._new_recognizer()
        self._fed_s = 0.0

    def _all_known(self, phrase: str) -> bool:
        return all(self._model.vosk_model_find_word(w) >= 0 for w in phrase.split())

    def _new_recognizer(self):
        rec = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE, self._grammar)
        rec.SetWords(True)
        return rec

    def known_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if self._all_known(normalize(w))]

    @staticmethod
    def _hits(items: list[dict]) -> tuple[WordHit, ...]:
        return tuple(WordHit(str(w["word"]), float(w.get("conf", 1.0)), w.get("start"), w.get("end")) for w in items)

    def feed(self, pcm: np.ndarray) -> Hypothesis:
        data = _as_bytes(pcm)
        self._fed_s += len(data) / 2 / SAMPLE_RATE
        if self._rec.AcceptWaveform(data):
            return self._final(json.loads(self._rec.Result()))
        res = json.loads(self._rec.PartialResult())
        return Hypothesis(normalize(res.get("partial", "")), self._hits(res.get("partial_result", [])))

    def _final(self, res: dict) -> Hypothesis:
        return Hypothesis(normalize(res.get("text", "")), self._hits(res.get("result", [])), final=True)

    def finish(self) -> Hypothesis:
        # FinalResult() ends the utterance and resets the decoder for the next one.
        return self._final(json.loads(self._rec.FinalResult()))

    def reset(self) -> None:
        self._rec.Reset()


# --- pocketsphinx ----------------------------------------------------------------------

SPEECH_CMN = "59.8,-1.69,5.48,13.1,-0.83,2.62,-3.44,-7.92,-4.60,-3.33,4.60,-1.64,3.08"


class PocketsphinxEngine:
    """pocketsphinx (CMU Sphinx) with a JSGF grammar: commands, or any run of filler words.

    Light enough for a Pi Zero 2 W (~9 MB per decoder: no n-gram language model, only the
    grammar's words of the dictionary). It gives no usable word confidence (reported as 1.0, `has_confidence =
    False`): rejection rests on the filler garbage path, the exact phrase match and the
    second look (`Evidence`). Fillers carry a low grammar weight so they only win where no
    command fits.

    `warps`: the same audio is also decoded with the frequency axis warped by these factors
    (vocal tract length normalisation by search): a voice higher or lower than the model's
    speakers (a small woman, a deep man) is heard as one of the model's, and the warp whose
    decoding scores best wins. Each extra warp is a decoder of its own, fed only while
    someone speaks.
    """

    name = "pocketsphinx"
    has_confidence = False

    def __init__(
        self,
        phrases: Sequence[str],
        fillers: Sequence[str] = (),
        model_dir: str | Path | None = None,
        filler_weight: float = 0.5,
        extra_config: dict | None = None,
        verify: bool = True,
        warps: Sequence[float] = (1.0,),
    ) -> None:
        try:
            from pocketsphinx import get_model_path
        except ImportError as exc:  # pragma: no cover
            raise EngineUnavailable(f"pocketsphinx is not installed ({exc})") from None
        # No bestpath lattice: with filler loops it costs seconds per utterance, and its word
        # posteriors were no use as confidences (correct words often scored 0.0).
        kwargs: dict = {"samprate": SAMPLE_RATE, "bestpath": False, "loglevel": "FATAL", **(extra_config or {})}
        # Only grammars are searched (the commands, the fillers, the phone loop): the model's
        # n-gram language model (63 MB resident for en-us) is never loaded.
        kwargs.setdefault("lm", None)
        if model_dir is None:
            # The shipped en-us model starts its cepstral mean for a quieter input than a
            # microphone gain set for speech at about -20 dBFS; a cold mean turned the first
            # commands into others ("pause" -> "faster"). Measured here after eight sentences.
            kwargs["cmninit"] = SPEECH_CMN
        else:
            model_dir = Path(model_dir)
            if not model_dir.is_dir():
                raise EngineUnavailable(f"no pocketsphinx model in {model_dir}")
            kwargs["hmm"] = str(model_dir)
            dicts = sorted(model_dir.glob("*.dict"))
            if dicts:
                kwargs["dict"] = str(dicts[0])
        # Only the grammar's words from the pronouncing dictionary (the whole of cmudict is
        # about 20 MB resident): a word the dictionary lacks is still refused below.
        full_dict = Path(kwargs.get("dict") or Path(get_model_path("en-us")) / "cmudict-en-us.dict")
        wanted = {w for p in (*phrases, *fillers) for w in normalize(p).split()}
        self.warps = tuple(dict.fromkeys([1.0, *warps]))  # the unwarped decoder first
        with tempfile.TemporaryDirectory(prefix="pocketsphinx-") as tmp:
            if "dict" not in (extra_config or {}) and full_dict.is_file():
                kwargs["dict"] = str(_grammar_dict(full_dict, wanted, Path(tmp) / "grammar.dict"))
            self._decs = [self._new_decoder(kwargs, w) for w in self.warps]
        self._dec = self._decs[0]
        self.phrases = [p for p in (normalize(p) for p in phrases) if self._all_known(p)]
        dropped = sorted(set(map(normalize, phrases)) - set(self.phrases))
        if dropped:
            log.warning("pocketsphinx dictionary lacks words of %s; those phrases are not recognized", dropped)
        if not self.phrases:
            raise EngineUnavailable("pocketsphinx knows none of the command phrases")
        self.fillers = [f for f in (normalize(f) for f in fillers) if self._all_known(f) and f not in self.phrases]
        self.has_unk = False
        cmd = " | ".join(self.phrases)
        rules = [f"<cmd> = {cmd} ;"]
        if self.fillers:
            rules.append(f"<fill> = {' | '.join(self.fillers)} ;")
            body = f"/1/ <cmd> | /{filler_weight}/ <fill>+"
        else:
            body = "<cmd>"
        jsgf = "#JSGF V1.0;\ngrammar commands;\npublic <utt> = " + body + " ;\n" + "\n".join(rules) + "\n"
        self._verify = False
        phone_lm: Path | None = None
        if verify and self.fillers:
            found = sorted((Path(model_dir) if model_dir else Path(get_model_path("en-us"))).glob("*phone*.lm.bin"))
            if not found:
                log.warning("no phone language model beside the pocketsphinx model: commands are not checked twice")
            else:
                phone_lm = found[0]
                self._verify = True
        for dec in self._decs:
            dec.add_jsgf_string("commands", jsgf)
            if phone_lm is not None:
                fill = " | ".join(self.fillers)
                dec.add_jsgf_string(
                    "garbage", f"#JSGF V1.0;\ngrammar garbage;\npublic <utt> = <fill>+ ;\n<fill> = {fill} ;\n"
                )
                dec.add_allphone_file("phones", str(phone_lm))
            dec.activate_search("commands")
        self._logmath = self._dec.get_logmath()
        self._expected = {p: self._phone_count(p) for p in self.phrases}
        self._in_utt = False
        self._audio: list[bytes] = []
        self._cmn_at_start = [""] * len(self._decs)

    @staticmethod
    def _new_decoder(kwargs: dict, warp: float):
        from pocketsphinx import Decoder

        if warp != 1.0:
            kwargs = {**kwargs, "warp_type": "inverse_linear", "warp_params": f"{warp:g}"}
        try:
            dec = Decoder(**kwargs)
        except Exception as exc:
            raise EngineUnavailable(f"pocketsphinx does not start: {exc}") from None
        return dec

    def _phone_count(self, phrase: str) -> int:
        return sum(len((self._dec.lookup_word(w) or "").split()) for w in phrase.split())

    def _all_known(self, phrase: str) -> bool:
        return all(self._dec.lookup_word(w) is not None for w in phrase.split())

    def known_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if self._all_known(normalize(w))]

    def _words(self) -> tuple[WordHit, ...]:
        frame_s = 0.01
        hits = []
        for seg in self._dec.seg():
            word = normalize(seg.word)
            if word.startswith("<") or word.startswith("[") or word.startswith("++"):
                continue  # silence and noise tokens are not words
            hits.append(WordHit(word, 1.0, seg.start_frame * frame_s, seg.end_frame * frame_s))
        return tuple(hits)

    def feed(self, pcm: np.ndarray) -> Hypothesis:
        data = _as_bytes(pcm)
        if not self._in_utt:
            self._cmn_at_start = [dec.get_cmn() for dec in self._decs]
            self._audio = []
            for dec in self._decs:
                dec.start_utt()
            self._in_utt = True
        if self._verify:
            self._audio.append(data)
        for dec in self._decs:
            dec.process_raw(data, False, False)
        hyp = self._decs[0].hyp()
        # Partial segmentations are cheap without the lattice; the warps are compared at the end.
        return Hypothesis(normalize(hyp.hypstr) if hyp else "")

    def finish(self) -> Hypothesis:
        if not self._in_utt:
            return Hypothesis("", final=True)
        best = None
        for i, dec in enumerate(self._decs):
            dec.end_utt()
            hyp = dec.hyp()
            if hyp is not None and (best is None or hyp.score > best[1].score):
                best = (i, hyp)
        self._in_utt = False
        if best is None:
            self._audio = []
            return Hypothesis("", final=True)
        i, hyp = best
        self._dec = self._decs[i]
        text = normalize(hyp.hypstr)
        words = self._words()  # before the second look replaces the segmentation
        evidence = None
        if self._verify and text in self._expected:
            evidence = self._second_look(text, self._logmath.log(hyp.score), self._cmn_at_start[i])
        self._audio = []
        self._dec = self._decs[0]
        return Hypothesis(text, words, final=True, evidence=evidence)

    def _decode_again(self, search: str, audio: bytes, cmn: str):
        self._dec.set_cmn(cmn)  # as the utterance found it
        self._dec.activate_search(search)
        self._dec.start_utt()
        self._dec.process_raw(audio, False, True)
        self._dec.end_utt()
        return self._dec.hyp()

    def _second_look(self, text: str, score: float, cmn: str) -> Evidence:
        """The same audio by the garbage path alone and by a phone loop (see `Evidence`)."""
        frames = max(self._dec.n_frames(), 1)
        after = self._dec.get_cmn()  # what this utterance taught the cepstral mean: kept
        audio = b"".join(self._audio)
        try:
            garbage = self._decode_again("garbage", audio, cmn)
            garbage_score = self._logmath.log(garbage.score) if garbage is not None else score - 1e6
            loop = self._decode_again("phones", audio, cmn)
            loop_score = self._logmath.log(loop.score) if loop is not None else score
            heard = [s.word for s in self._dec.seg() if s.word != "SIL" and not s.word.startswith("+")]
        finally:
            self._dec.set_cmn(after)
            self._dec.activate_search("commands")
        return Evidence(
            (score - garbage_score) / frames, len(heard), self._expected[text], (score - loop_score) / frames
        )

    def reset(self) -> None:
        if self._in_utt:
            for dec in self._decs:
                dec.end_utt()
            self._in_utt = False
        self._audio = []
