"""The synthesizer's pronunciation lexicon: words espeak-ng says wrong, given as its phonemes.

`phrases/lexicon-<voice>.toml` maps a word to espeak-ng phoneme input; `Lexicon.apply`
puts `[[phonemes]]` in place of the word (whole words, any case) before rendering.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from appliance.config import ConfigError, read_toml

LEXICON_DIR = Path(__file__).parent / "phrases"


@dataclass(frozen=True)
class Lexicon:
    words: dict[str, str]  # lower-case word -> espeak-ng phonemes
    source: Path | None = None

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        data = read_toml(path)
        table = data.get("words", {})
        if set(data) - {"words"} or not isinstance(table, dict):
            raise ConfigError(path, "(file)", str(path), "a lexicon holds one [words] table")
        words: dict[str, str] = {}
        for word, phonemes in table.items():
            if not isinstance(phonemes, str) or not phonemes.strip() or "[" in phonemes or "]" in phonemes:
                raise ConfigError(path, f"words.{word}", phonemes, "must be espeak-ng phonemes, without [[ ]]")
            if not re.fullmatch(r"\w+", word):
                raise ConfigError(path, f"words.{word}", phonemes, "the key must be one word")
            words[word.lower()] = phonemes
        return cls(words, path)

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        if not self.words:
            return None
        alternatives = "|".join(sorted((re.escape(w) for w in self.words), key=len, reverse=True))
        return re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.IGNORECASE)

    def apply(self, text: str) -> str:
        """`text` with every lexicon word replaced by `[[its phonemes]]`."""
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(lambda m: f"[[{self.words[m.group(1).lower()]}]]", text)


EMPTY = Lexicon({})


@functools.lru_cache(maxsize=8)
def lexicon_for(voice: str, directory: Path = LEXICON_DIR) -> Lexicon:
    """The lexicon of an espeak-ng voice ("nl", "en", "nl+f2" uses nl's), or an empty one."""
    path = directory / f"lexicon-{voice.split('+')[0]}.toml"
    return Lexicon.load(path) if path.exists() else EMPTY
