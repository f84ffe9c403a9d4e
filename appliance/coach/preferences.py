"""What the patient chose for herself, remembered from one session to the next.

The voice's volume ("luider"/"zachter") and the tone's own volume ("toon luider"/"toon
zachter") are `setting` events in the store; the next session starts where the last one
left them. The store holds one patient's lending (a new patient starts with a wiped one).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Protocol

log = logging.getLogger(__name__)

REMEMBERED = ("volume", "tone_volume")


class Queryable(Protocol):
    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]: ...


def remembered_settings(store: Queryable | None) -> dict[str, float]:
    """The last value of each remembered setting in the store's events (none: empty)."""
    found: dict[str, float] = {}
    if store is None:
        return found
    try:
        rows = store.query("SELECT data FROM events WHERE kind = 'setting' ORDER BY id DESC LIMIT 500")
    except sqlite3.Error as exc:
        log.warning("cannot read the remembered settings: %s", exc)
        return found
    for row in rows:
        try:
            data = json.loads(row["data"])
            name, value = data.get("setting"), float(data.get("value"))
        except (TypeError, ValueError, KeyError):
            continue
        if name in REMEMBERED and name not in found and 0.0 <= value <= 1.0:
            found[name] = value
    return found
