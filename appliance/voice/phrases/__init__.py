"""Phrase catalogues: every patient-facing sentence, Dutch first, English too.

`Catalogue.load(lang)` reads `phrases/<lang>.toml`; nested tables become dotted keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import ConfigError, read_toml

PHRASE_DIR = Path(__file__).parent
LANGUAGES = ("nl", "en")
KEYWORD_MARK = "^"


def _flatten(table: dict, prefix: str, out: dict[str, str], file: Path) -> None:
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            _flatten(value, full, out, file)
        elif isinstance(value, str):
            if value.count(KEYWORD_MARK) > 1:
                raise ConfigError(file, full, value, "marks more than one keyword with ^")
            out[full] = value
        else:
            raise ConfigError(file, full, value, "a phrase must be text")


@dataclass(frozen=True)
class Catalogue:
    """The phrases of one language, by dotted key."""

    lang: str
    voice: str
    phrases: dict[str, str]
    source: Path

    @classmethod
    def load(cls, lang: str, directory: Path = PHRASE_DIR) -> Catalogue:
        path = directory / f"{lang}.toml"
        if not path.exists():
            raise ConfigError(path, "(file)", lang, f"no phrase catalogue for language {lang!r}")
        data = read_toml(path)
        meta = data.pop("meta", {})
        phrases: dict[str, str] = {}
        _flatten(data, "", phrases, path)
        return cls(lang=lang, voice=str(meta.get("voice", lang)), phrases=phrases, source=path)

    def keys(self) -> set[str]:
        return set(self.phrases)

    def raw(self, key: str) -> str:
        try:
            return self.phrases[key]
        except KeyError:
            raise KeyError(f"{self.source}: no phrase {key!r}") from None

    def text(self, key: str) -> str:
        """What is spoken: the phrase without its keyword marker."""
        return self.raw(key).replace(KEYWORD_MARK, "")

    def keyword_prefix(self, key: str) -> str:
        """The words spoken before the keyword ('' when the phrase has no marker)."""
        raw = self.raw(key)
        return raw.split(KEYWORD_MARK, 1)[0] if KEYWORD_MARK in raw else ""

    def has(self, key: str) -> bool:
        return key in self.phrases


class EstimatedTiming:
    """Phrase durations estimated from text length, until rendered audio measures them.

    espeak-ng at about 150 words a minute speaks some 13 characters a second.
    """

    def __init__(self, catalogue: Catalogue, chars_per_second: float = 13.0) -> None:
        self._cat = catalogue
        self._cps = chars_per_second

    def duration(self, key: str) -> float:
        return 0.25 + len(self._cat.text(key)) / self._cps

    def keyword_offset(self, key: str) -> float:
        prefix = self._cat.keyword_prefix(key)
        return 0.1 + len(prefix) / self._cps if prefix else 0.0
