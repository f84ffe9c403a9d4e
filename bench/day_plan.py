"""The shape of a simulated day, as a physiotherapist reads it (issue 14).

    python bench/day_plan.py TIMELINE.jsonl [--db STATE_DIR/appliance.db [--session ID ...]]

From a session's `timeline.jsonl` (`appliance simulate --out DIR`): the session's length,
per exercise its repetitions, its holds (hold and move phases at a level, in a row) and
its rests, and the longest stretch without a word (say events' `at` + `duration_s`).
With `--db` (a state directory filled by `appliance simulate --state-dir S --days N`):
every session's length by kind (main, short set, PERFECT) and day.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path


def timeline_figures(events: list[dict]) -> dict:
    end = max(e["t"] for e in events)
    says = sorted((e["at"], e["at"] + e["duration_s"], e["phrase"]) for e in events if e["kind"] == "say")
    gap, gap_at, spoken_until = 0.0, 0.0, 0.0
    for start, stop, _ in says:
        if start - spoken_until > gap:
            gap, gap_at = start - spoken_until, spoken_until
        spoken_until = max(spoken_until, stop)
    holds: dict[str, list[float]] = defaultdict(list)
    rests: dict[str, list[float]] = defaultdict(list)
    span: dict[str, list[float]] = {}
    run: tuple[str, int, float] | None = None  # (exercise, rep, seconds held in a row)
    for e in events:
        if e["kind"] != "phase" or "rep" not in e or e.get("exercise") in (None, "calibration"):
            continue
        ex, rep, dur = e["exercise"], e["rep"], e["end"] - e["start"]
        span.setdefault(ex, [e["start"], e["end"]])[1] = e["end"]
        if e["phase"] in ("hold", "move") and e["level_pct"] > 0:
            if run is not None and run[:2] == (ex, rep):
                run = (ex, rep, run[2] + dur)
            else:
                run = (ex, rep, dur)
            continue
        if run is not None:
            holds[run[0]].append(run[2])
            run = None
        if e["phase"] == "rest":
            rests[ex].append(dur)
    return {"length_s": end, "silence_s": gap, "silence_at": gap_at, "holds": holds, "rests": rests,
            "span": span, "says": len(says)}


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}-{hi:.1f}"


def session_events(db_path: Path, session_id: int) -> list[dict]:
    """A stored session's events, as the timeline has them."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return [{"t": t, "kind": kind, **json.loads(data)} for t, kind, data in
                db.execute("SELECT t, kind, data FROM events WHERE session_id = ? ORDER BY id", (session_id,))]
    finally:
        db.close()


def print_timeline(events: list[dict], name: str) -> None:
    f = timeline_figures(events)
    print(f"timeline {name}")
    print(f"session_length_min={f['length_s'] / 60:.1f} phrases={f['says']}")
    print(f"longest_silence_s={f['silence_s']:.1f} at {f['silence_at'] / 60:.0f}:{f['silence_at'] % 60:04.1f}")
    print(f"{'exercise':<10} {'minutes':>7} {'holds':>6} {'hold_s':>10} {'rest_s':>10}")
    for ex, (a, b) in f["span"].items():
        print(f"{ex:<10} {(b - a) / 60:7.1f} {len(f['holds'][ex]):6d} {_range(f['holds'][ex]):>10} "
              f"{_range(f['rests'][ex]):>10}")


def print_db(path: Path) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    kinds: dict[int, str] = {}
    for r in db.execute("SELECT session_id, data FROM events WHERE kind = 'plan'"):
        d = json.loads(r["data"])
        kinds[r["session_id"]] = "perfect" if d.get("perfect") else "short set" if d.get("short_set") else "main"
    by_kind: dict[str, list[float]] = defaultdict(list)
    for s in db.execute("SELECT id, started_utc, ended_utc, programme FROM sessions WHERE ended_utc IS NOT NULL"):
        seconds = (datetime.fromisoformat(s["ended_utc"]) - datetime.fromisoformat(s["started_utc"])).total_seconds()
        minutes = seconds / 60
        by_kind[f"{kinds.get(s['id'], '?')} ({s['programme']})"].append(minutes)
    maximal = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'say' "
                         "AND data LIKE '%\"calibrate.squeeze\"%'").fetchone()[0]
    print(f"database {path}")
    for kind, minutes in sorted(by_kind.items()):
        print(f"{kind:<22} sessions={len(minutes):3d} minutes {min(minutes):.1f}-{max(minutes):.1f} "
              f"mean {sum(minutes) / len(minutes):.1f}")
    print(f"maximal_squeeze_cues={maximal}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("timeline", type=Path, nargs="?")
    p.add_argument("--db", type=Path)
    p.add_argument("--session", type=int, action="append", default=[],
                   help="with --db: also the figures of this stored session (as for a timeline)")
    args = p.parse_args(argv)
    if args.timeline is None and args.db is None:
        p.error("give a timeline.jsonl, --db, or both")
    if args.timeline is not None:
        lines = args.timeline.read_text().splitlines()
        print_timeline([json.loads(line) for line in lines if line.strip()], str(args.timeline))
    if args.db is not None:
        print_db(args.db)
        for sid in args.session:
            print_timeline(session_events(args.db, sid), f"{args.db} session {sid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
