"""Fuzz the device's database: truncations, flipped bytes, wrong schemas, garbage.

For every damaged copy of a real database (sessions, exercises, repetitions, events and
samples written by `Store`, in an enrolled state directory):

- `Store(path)` opens and stores a repetition, or raises `StoreDamaged`; never anything else;
- `diagnose(path)` agrees with it (read-only, before the open);
- `salvage(path)` never raises, invents no repetition after a truncation, and returns every
  repetition that a lookup by id can still read;
- the clinic's `status()` and `export()` never raise (export may refuse: nothing readable),
  and an export from a damaged file holds exactly the salvaged repetitions.

    .venv/bin/python bench/store_fuzz.py --cases 2000 --seed 1

tests/test_store_fuzz.py runs the same checks on a bounded number of hypothesis examples.
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.clinic.enrolment import ClinicRefusal, db_path, enroll, export, status  # noqa: E402
from appliance.salvage import salvage  # noqa: E402
from appliance.store import Store, StoreDamaged, diagnose  # noqa: E402

CODE = "GNT-2026-0042"
WHEN = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
REP_KEY = ("session_id", "exercise", "rep", "status", "peak_pct", "t_start")


def reference_state(where: Path, sessions: int = 5, reps: int = 8, samples_per_rep: int = 30) -> Path:
    """An enrolled state directory whose database the device wrote; closed cleanly (no WAL)."""
    state = where / "reference"
    rx = where / "rx.toml"
    text = (REPO / "examples" / "prescription.toml").read_text()
    rx.write_text("\n".join(line for line in text.splitlines()
                            if not line.startswith(("surgery_date", "catheter_removal"))) + "\n")
    enroll(state, rx)
    store = Store(db_path(state), reserve_bytes=0)
    for s in range(sessions):
        day = WHEN + timedelta(days=s)
        sid = store.start_session(day, "leaflet", "nl", CODE)
        store.set_calibration(sid, 2.0, 41.3 + s, "3")
        ex = store.start_exercise(sid, "ex1", 1, day)
        for r in range(1, reps + 1):
            for i in range(samples_per_rep):
                store.sample(sid, r * 10 + i / 10, 20.0 + i * 0.37, 50.0 + i * 0.1)
            store.event(sid, r * 10.0, "phase", {"phase": "hold", "start": r * 10.0, "end": r * 10 + 5.0})
            store.add_repetition(sid, ex, "ex1", r, "complete", day, r * 10.0, r * 10 + 9.0, 60.0,
                                 {"peak_pct": 50.0 + r + s / 10, "peak_cmh2o": 20.5, "held_s": 5.0,
                                  "hold_asked_s": 5.0, "steadiness_pct": 3.25})
        store.end_exercise(ex, "finished", day)
        store.end_session(sid, "done", day)
    store.close()
    return state


def repetitions_of(path: Path) -> dict[int, tuple]:
    db = sqlite3.connect(path)
    try:
        return {r[0]: tuple(r[1:]) for r in db.execute(f"SELECT id, {', '.join(REP_KEY)} FROM repetitions")}
    finally:
        db.close()


# --- damage -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Damage:
    kind: str  # truncate, flip, wrong_schema, garbage_header, directory
    at: float = 0.0  # where, as a fraction of the file
    flips: int = 1
    seed: int = 0
    table: str = "repetitions"

    def apply(self, path: Path) -> None:
        size = path.stat().st_size
        if self.kind == "truncate":
            with path.open("r+b") as fh:
                fh.truncate(int(self.at * size))
        elif self.kind == "flip":
            rng = random.Random(self.seed)
            data = bytearray(path.read_bytes())
            centre = int(self.at * size)
            for _ in range(self.flips):
                i = min(size - 1, max(0, centre + rng.randint(-2048, 2048)))
                data[i] ^= rng.randint(1, 255)
            path.write_bytes(bytes(data))
        elif self.kind == "wrong_schema":
            db = sqlite3.connect(path)
            db.execute(f'DROP TABLE "{self.table}"')
            db.execute(f'CREATE TABLE "{self.table}" (id INTEGER PRIMARY KEY, session_id TEXT, '
                       'something BLOB NOT NULL)')
            db.execute(f'INSERT INTO "{self.table}" VALUES (1, \'x\', x\'00\')')
            db.commit()
            db.close()
        elif self.kind == "garbage_header":
            with path.open("r+b") as fh:
                fh.write(random.Random(self.seed).randbytes(100))
        elif self.kind == "directory":
            path.unlink()
            path.mkdir()
        else:
            raise ValueError(self.kind)


# --- checks -----------------------------------------------------------------------------------

@dataclass
class Result:
    damage: Damage
    opened: bool = False
    reason: str | None = None
    salvaged: int = 0
    readable: int | None = None  # by lookups by id, after a truncation
    exported: int | None = None
    problems: list[str] = field(default_factory=list)


def readable_by_id(path: Path, ids: list[int], where: Path) -> set[tuple]:
    """The repetitions a lookup by id can read from a truncated file (padded to its claimed size)."""
    from appliance.salvage import _pad_truncated

    copy = where / "lookup.db"
    shutil.copyfile(path, copy)
    _pad_truncated(copy)
    found = set()
    try:
        db = sqlite3.connect(copy)
    except sqlite3.Error:
        return found
    try:
        for rowid in ids:
            try:
                row = db.execute(f"SELECT {', '.join(REP_KEY)} FROM repetitions WHERE id=?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row:
                found.add(tuple(row))
    finally:
        db.close()
    return found


def check(reference: Path, original: dict[int, tuple], damage: Damage, work: Path) -> Result:
    """Damage a copy of `reference` and hold the store, salvage, status and export to their word."""
    result = Result(damage)
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(reference, state)
    path = db_path(state)
    damage.apply(path)
    try:
        verdict = diagnose(path)
    except Exception as exc:  # noqa: BLE001 - the fuzz reports whatever escapes
        result.problems.append(f"diagnose raised {exc!r}")
        verdict = None
    try:
        found = salvage(path)
    except Exception as exc:  # noqa: BLE001
        result.problems.append(f"salvage raised {exc!r}")
        found = None
    if found is not None:
        got = {tuple(r[k] for k in REP_KEY) for r in found.repetitions}
        result.salvaged = len(got)
        if damage.kind == "truncate":
            if not got <= set(original.values()):
                result.problems.append("salvage invented repetitions after a truncation")
            if path.is_file():
                # Intact ones only: a lookup can also return a half-zeroed row, which salvage rightly drops.
                readable = readable_by_id(path, sorted(original), work) & set(original.values())
                result.readable = len(readable)
                if not readable <= got:
                    result.problems.append(f"salvage missed {len(readable - got)} readable repetitions")
    try:
        st = status(state)
        st.lines()
        # Status may find more than diagnose (a text that is no longer UTF-8), never less.
        if verdict is not None and st.database_damaged is None:
            result.problems.append("status did not say what diagnose found")
    except Exception as exc:  # noqa: BLE001
        result.problems.append(f"status raised {exc!r}")
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        files = export(state, out, now=WHEN, with_report=False)
        reps_csv = next(f for f in files if f.name == "repetitions.csv")
        with reps_csv.open(newline="") as fh:
            result.exported = max(0, sum(1 for _ in csv.reader(fh)) - 1)  # a damaged text may hold a newline
        if verdict is not None and found is not None and result.exported != len(found.repetitions):
            result.problems.append(f"export wrote {result.exported} of {len(found.repetitions)} salvaged repetitions")
    except ClinicRefusal:
        pass
    except Exception as exc:  # noqa: BLE001
        result.problems.append(f"export raised {exc!r}")
    try:
        store = Store(path, reserve_bytes=0)
    except StoreDamaged as exc:
        result.reason = exc.reason
        if verdict is None:
            result.problems.append(f"Store refused what diagnose passed: {exc.reason}")
    except Exception as exc:  # noqa: BLE001
        result.problems.append(f"Store raised {exc!r} instead of StoreDamaged")
    else:
        result.opened = True
        if verdict is not None:
            result.problems.append(f"Store opened what diagnose refused: {verdict.reason}")
        try:
            sid = store.start_session(WHEN, "leaflet", "nl", CODE)
            ex = store.start_exercise(sid, "ex1", 1, WHEN)
            store.add_repetition(sid, ex, "ex1", 1, "complete", WHEN, 0.0, 9.0, 60.0, {"peak_pct": 61.0})
            store.end_session(sid, "done", WHEN)
            store.close()
        except Exception as exc:  # noqa: BLE001
            result.problems.append(f"Store opened but could not store a repetition: {exc!r}")
    return result


def random_damage(rng: random.Random) -> Damage:
    kind = rng.choices(["truncate", "flip", "wrong_schema", "garbage_header", "directory"], [40, 45, 8, 5, 2])[0]
    table = rng.choice(["sessions", "exercises", "repetitions", "events", "samples", "meta"])
    return Damage(kind, at=rng.random(), flips=rng.choice([1, 1, 2, 8, 64]), seed=rng.randrange(1 << 30),
                  table=table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # every damaged export logs a warning; the figures say it all
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="store-fuzz-") as tmp:
        tmp_path = Path(tmp)
        reference = reference_state(tmp_path)
        original = repetitions_of(db_path(reference))
        t0 = time.perf_counter()
        by_kind: Counter = Counter()
        outcomes: Counter = Counter()
        salvaged_share: dict[str, list[float]] = {}
        failures = []
        for _ in range(args.cases):
            damage = random_damage(rng)
            r = check(reference, original, damage, tmp_path)
            by_kind[damage.kind] += 1
            outcomes[(damage.kind, "opened" if r.opened else "StoreDamaged")] += 1
            salvaged_share.setdefault(damage.kind, []).append(r.salvaged / len(original))
            if r.readable is not None and r.readable:
                salvaged_share.setdefault("truncate: salvaged/readable", []).append(r.salvaged / r.readable)
            if r.problems:
                failures.append(r)
        elapsed = time.perf_counter() - t0
    print(f"{args.cases} damaged databases ({len(original)} repetitions each) in {elapsed:.1f} s, seed {args.seed}")
    for (kind, outcome), n in sorted(outcomes.items()):
        print(f"  {kind:15s} {outcome:13s} {n:5d}")
    for kind, shares in sorted(salvaged_share.items()):
        print(f"  {kind:28s} repetitions salvaged: mean {100 * sum(shares) / len(shares):5.1f} %")
    print(f"failures: {len(failures)}")
    for r in failures[:20]:
        print(f"  {r.damage}: {'; '.join(r.problems)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
