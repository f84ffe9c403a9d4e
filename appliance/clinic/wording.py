"""The report's words in the clinic's language: `report-<lang>.toml` beside this module.

Clinician-facing text (labels, the summary's sentences, exercise names as in the leaflet)
lives in those catalogues; what the device said to the patient is shown as the patient
heard it, from the phrase catalogues (appliance/voice/phrases). Never an internal key.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, read_toml

WORDING_DIR = Path(__file__).parent
REPORT_LANGUAGES = ("nl", "en")


def _flatten(table: dict, prefix: str, out: dict[str, Any]) -> None:
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            _flatten(value, full, out)
        else:
            out[full] = value


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@dataclass(frozen=True)
class Wording:
    """One language's report text, by dotted key (`exercise.ex1`, `summary.mvc`...)."""

    lang: str
    texts: dict[str, Any]
    source: Path

    @classmethod
    def load(cls, lang: str, directory: Path = WORDING_DIR) -> Wording:
        return _load(lang, directory)

    def keys(self) -> set[str]:
        return set(self.texts)

    def __call__(self, key: str, **values: Any) -> str:
        try:
            text = self.texts[key]
        except KeyError:
            raise KeyError(f"{self.source}: no text {key!r}") from None
        return str(text).format(**values) if values else str(text)

    def has(self, key: str) -> bool:
        return key in self.texts

    def num(self, value: float | None, digits: int = 1) -> str:
        """A number as the clinic writes it (a decimal comma in Dutch)."""
        if value is None:
            return "–"
        return f"{value:.{digits}f}".replace(".", str(self.texts["meta.decimal"]))

    def pct(self, value: float | None) -> str:
        return "–" if value is None else f"{value:.0f}"

    def day(self, d: date, weekday: bool = False, year: bool = True) -> str:
        month = self.texts["meta.months"][d.month - 1]
        text = f"{d.day} {month}" + (f" {d.year}" if year else "")
        return f"{self.texts['meta.weekdays'][d.weekday()]} {text}" if weekday else text

    def weekday(self, index: int) -> str:
        return str(self.texts["meta.weekdays"][index])

    def exercise(self, exercise_id: str) -> str:
        """The exercise as the leaflet names it; an exercise no catalogue knows keeps its id."""
        return self(f"exercise.{exercise_id}") if self.has(f"exercise.{exercise_id}") else exercise_id

    def band(self, band: str | None) -> str:
        return self(f"band.{band}") if band and self.has(f"band.{band}") else "–"

    def programme(self, programme: str) -> str:
        return self(f"programme.{programme}") if self.has(f"programme.{programme}") else programme


@cache
def _load(lang: str, directory: Path) -> Wording:
    if lang not in REPORT_LANGUAGES:
        raise ConfigError(directory / f"report-{lang}.toml", "(language)", lang,
                          f"the report is written in {' or '.join(REPORT_LANGUAGES)}")
    path = directory / f"report-{lang}.toml"
    texts: dict[str, Any] = {}
    _flatten(read_toml(path), "", texts)
    return Wording(lang, texts, path)


@cache
def spoken(lang: str, phrase_key: str) -> str:
    """What the patient heard for a phrase key, in the session's language."""
    from appliance.voice.phrases import Catalogue

    try:
        cat = Catalogue.load(lang)
    except ConfigError:
        cat = Catalogue.load("nl")
    return cat.text(phrase_key) if cat.has(phrase_key) else ""
