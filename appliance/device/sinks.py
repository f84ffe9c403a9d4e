"""Sinks the device adds to every session: the JSON event log and the guarded store.

The guarded store keeps SQLite errors away from the coach: a full disk and a broken
file are counted so the supervisor can say which one it is.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import threading
from datetime import datetime
from typing import Any, TextIO

from appliance.events import Event, Feedback
from appliance.store import StoreSink

log = logging.getLogger(__name__)


class EventWriter:
    """Every event as a JSON line, flushed at once: what a power-cut test reads."""

    def __init__(self, target: str | TextIO) -> None:
        if isinstance(target, str):
            self._fh = sys.stdout if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
            self._own = target != "-"
        else:
            self._fh, self._own = target, False
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = json.dumps({"wall": datetime.now().astimezone().isoformat(), **event.as_json()},
                          ensure_ascii=False, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def feedback(self, fb: Feedback) -> None:
        return None

    def close(self) -> None:
        if self._own:
            self._fh.close()


class GuardedStoreSink:
    """The store's sink, plus what a full disk needs: samples stop, repetitions go on.

    SQLite errors are logged and swallowed here so the coach never sees them. A full
    disk ("database or disk is full") is counted in `disk_full`, anything else (a schema
    that does not match, a broken file) in `errors`: the service says the disk is full
    for the first and that the device needs the clinic for the second.
    """

    def __init__(self, inner: StoreSink) -> None:
        self.inner = inner
        self.disk_full = 0
        self.errors = 0
        self.last_error = ""

    @property
    def session_id(self) -> int | None:
        return self.inner.session_id

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        if "full" in str(exc).lower():
            self.disk_full += 1
        else:
            self.errors += 1
        self.last_error = f"storing {what} failed: {exc}"
        log.error("%s", self.last_error)

    def emit(self, event: Event) -> None:
        try:
            # Metrics computed from numpy samples arrive as numpy scalars, which json (the
            # store's event log) refuses; plain values keep the repetition.
            self.inner.emit(Event(float(event.t), event.kind, plain(event.data)))
        except sqlite3.Error as exc:
            self._failed(event.kind, exc)

    def feedback(self, fb: Feedback) -> None:
        try:
            self.inner.feedback(fb)
        except sqlite3.Error as exc:
            self._failed("a sample", exc)


def plain(value: Any) -> Any:
    """numpy scalars (np.bool_, np.float64) to Python values, recursively."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value
