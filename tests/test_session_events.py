"""Every event kind is an EventKind, documented field by field in docs/interfaces.md."""

import json
import re
import sqlite3
from pathlib import Path

import pytest

from appliance.coach.kinds import SessionPhase
from appliance.events import Event, EventKind
from appliance.simulation.session import simulate

DOC = Path(__file__).resolve().parents[1] / "docs" / "interfaces.md"


def documented() -> dict[str, dict[str, bool]]:
    """kind -> {field: optional} from the '### `kind`' tables of docs/interfaces.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Events out of the coach"):]
    section = section[:section.index("\n## ", 1)]
    kinds: dict[str, dict[str, bool]] = {}
    current = None
    for line in section.splitlines():
        m = re.match(r"^### `(\w+)`\s*$", line)
        if m:
            current = kinds.setdefault(m.group(1), {})
            continue
        m = re.match(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|\s*$", line)
        if m and current is not None:
            current[m.group(1)] = m.group(3).strip().startswith("optional")
    return kinds


def test_every_event_kind_is_documented_with_its_fields():
    docs = documented()
    assert set(docs) == {k.value for k in EventKind}
    assert all(docs[k] for k in docs), [k for k in docs if not docs[k]]  # each has a table


def test_an_event_takes_a_kind_by_its_name_and_refuses_any_other_in_one_sentence():
    e = Event(1.0, "say", {"phrase": "cue.hold"})
    assert e.kind is EventKind.SAY and e.kind == "say"
    assert json.dumps(e.as_json()) == '{"t": 1.0, "kind": "say", "phrase": "cue.hold"}'
    with pytest.raises(ValueError, match=r"^unknown event kind 'sya' \(known: session, .*\)$"):
        Event(1.0, "sya")


def _check(kind: str, data: dict, docs: dict[str, dict[str, bool]], where: str) -> None:
    assert kind in docs, f"{where}: undocumented kind {kind}"
    fields = docs[kind]
    extra = set(data) - set(fields)
    assert not extra, f"{where}: {kind} has undocumented fields {sorted(extra)}"
    missing = {f for f, optional in fields.items() if not optional} - set(data)
    assert not missing, f"{where}: {kind} lacks {sorted(missing)}"


def test_a_simulated_session_emits_and_stores_only_documented_kinds_and_fields(tmp_path):
    docs = documented()
    result = simulate(out_dir=tmp_path, seed=1, max_seconds=300)
    events = result.log.events
    assert {"session", "phase", "say", "rep", "calibration", "exercise", "command"} <= {e.kind for e in events}
    for e in events:
        assert isinstance(e.kind, EventKind)
        _check(e.kind, e.data, docs, "emitted")
        if e.kind == "phase":
            SessionPhase(e.data["phase"])  # every phase is one of the session's phase kinds
    db = sqlite3.connect(tmp_path / "appliance.db")
    stored = db.execute("SELECT kind, data FROM events").fetchall()
    assert {"plan", "session", "rep"} <= {k for k, _ in stored}
    for kind, data in stored:
        _check(kind, json.loads(data), docs, "stored")
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    assert timeline and all(type(e["kind"]) is str and e["kind"] in docs for e in timeline)
