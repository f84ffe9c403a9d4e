"""The commands the coach understands, whatever their source (voice, button, test script)."""

from __future__ import annotations

from enum import Enum


class Command(Enum):
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    NEXT = "next"
    PREVIOUS = "previous"
    REPEAT = "repeat"
    SLOWER = "slower"
    FASTER = "faster"
    LOUDER = "louder"
    SOFTER = "softer"
    STATUS = "status"
    HELP = "help"
    LATER = "later"
    QUIET = "quiet"  # tone only: no breath cues or feedback (said again: words again)
    TONE_LOUDER = "tone_louder"
    TONE_SOFTER = "tone_softer"
    WHAT_NOW = "what_now"  # the current instruction again, shortened

    @classmethod
    def parse(cls, name: str) -> Command:
        """The command called `name` (its English id); raises ValueError naming the choices."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            known = ", ".join(c.value for c in cls)
            raise ValueError(f"unknown command {name!r} (known: {known})") from None
