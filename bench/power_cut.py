"""Power cuts: SIGKILL a real-time `appliance run --simulated` session at random moments.

After every cut: `PRAGMA integrity_check` must say ok, and every repetition the coach
announced as completed (a `rep` line in the event stream, written after the store's
sink has seen it) must be in the database. Prints

    cuts=200 lost_completed_reps=0 integrity_failures=0

Usage: .venv/bin/python bench/power_cut.py [--cuts 200] [--lanes 4] [--seed 1]
Each lane is one state directory that lives through its share of the cuts, so the
recovery after a cut (WAL replay, interrupted sessions) is itself exercised.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRAMME = REPO / "tests" / "data" / "short_programme.toml"
RUN_SNIPPET = "import sys; from appliance.cli import main; sys.exit(main())"
FIRST_REP_S = 25.0  # generous bound for the first repetition after start (about 14 s)
REP_EVERY_S = 4.0  # the short programme's repetition period


@dataclass
class CutResult:
    when: str  # how the moment was chosen
    after_s: float  # seconds between start and SIGKILL
    announced: int  # repetitions the coach had announced when it died
    lost: list[tuple] = field(default_factory=list)
    integrity: str = "ok"
    exit_code: int | None = None


def child_command(state_dir: Path, events: Path) -> list[str]:
    return [
        sys.executable, "-c", RUN_SNIPPET, "run", "--simulated", "--no-audio",
        "--state-dir", str(state_dir), "--programme", str(PROGRAMME), "--auto-start",
        "--calibration", "5,40", "--events", str(events),
    ]


def announced_reps(events: Path) -> list[tuple]:
    """(exercise, rep, t_start, t_end) of every complete `rep` line; a torn last line is ignored."""
    reps = []
    if not events.exists():
        return reps
    for line in events.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("kind") == "rep":
            reps.append((e["exercise"], e["rep"], round(e["t_start"], 3), round(e["t_end"], 3)))
    return reps


def stored_reps(db: Path, after_session: int) -> tuple[str, set[tuple]]:
    """(integrity_check result, reps of sessions newer than `after_session`)."""
    if not db.exists():
        return "ok", set()
    con = sqlite3.connect(db)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = con.execute(
            "SELECT exercise, rep, t_start, t_end FROM repetitions WHERE session_id > ?",
            (after_session,),
        ).fetchall()
    finally:
        con.close()
    return integrity, {(e, r, round(a, 3), round(b, 3)) for e, r, a, b in rows}


def last_session(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COALESCE(MAX(id), 0) FROM sessions").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0
    finally:
        con.close()


def wait_for_reps(events: Path, count: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if len(announced_reps(events)) >= count:
            return True
        time.sleep(0.002)
    return False


def cut(state_dir: Path, strategy: str, rng: random.Random,
        uniform_max_s: float = FIRST_REP_S) -> CutResult:
    """Start the appliance in `state_dir`, SIGKILL it at a moment chosen by `strategy`."""
    events = state_dir.parent / f"{state_dir.name}-events.jsonl"
    events.unlink(missing_ok=True)
    db = state_dir / "appliance.db"
    before = last_session(db)
    log = open(state_dir.parent / f"{state_dir.name}-stderr.log", "ab")  # noqa: SIM115
    start = time.monotonic()
    child = subprocess.Popen(child_command(state_dir, events), stdout=subprocess.DEVNULL,
                             stderr=log, stdin=subprocess.DEVNULL)
    try:
        if strategy == "uniform":
            time.sleep(rng.uniform(0.2, uniform_max_s))
        elif strategy == "on_rep":  # right after an announcement: the commit just happened
            wait_for_reps(events, rng.randint(1, 2), start + FIRST_REP_S + REP_EVERY_S)
            time.sleep(rng.uniform(0.0, 0.005))
        else:  # "near_rep": around the next commit, a period after the first announcement
            wait_for_reps(events, 1, start + FIRST_REP_S)
            time.sleep(REP_EVERY_S + rng.uniform(-0.15, 0.15))
        after = time.monotonic() - start
        child.send_signal(signal.SIGKILL)
        code = child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    announced = announced_reps(events)
    integrity, stored = stored_reps(db, before)
    lost = [r for r in announced if r not in stored]
    return CutResult(strategy, round(after, 3), len(announced), lost, integrity, code)


def lane(state_dir: Path, strategies: list[str], seed: int, results: list[CutResult],
         lock: threading.Lock) -> None:
    rng = random.Random(seed)
    state_dir.mkdir(parents=True, exist_ok=True)
    for strategy in strategies:
        result = cut(state_dir, strategy, rng)
        with lock:
            results.append(result)
            if result.lost or result.integrity != "ok":
                print(f"  FAILURE {result}", file=sys.stderr, flush=True)


def run_cuts(cuts: int, lanes: int, seed: int, work: Path) -> list[CutResult]:
    rng = random.Random(seed)
    order = ["uniform", "on_rep", "near_rep"]
    plan = [order[i % 3] for i in range(cuts)]
    rng.shuffle(plan)
    results: list[CutResult] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=lane, args=(work / f"lane{i}", plan[i::lanes], seed + i, results, lock))
        for i in range(lanes)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results: list[CutResult]) -> str:
    lost = sum(len(r.lost) for r in results)
    bad = sum(r.integrity != "ok" for r in results)
    return f"cuts={len(results)} lost_completed_reps={lost} integrity_failures={bad}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", type=int, default=200)
    parser.add_argument("--lanes", type=int, default=4, help="appliances cut in parallel")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="power-cut-"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t = time.monotonic()
    results = run_cuts(args.cuts, args.lanes, args.seed, work)
    reps = sum(r.announced for r in results)
    by = {s: sum(r.when == s for r in results) for s in ("uniform", "on_rep", "near_rep")}
    print(f"announced_reps_checked={reps} strategies={by} seconds={time.monotonic() - t:.0f} "
          f"work={work}")
    print(summary(results))
    return 0 if all(not r.lost and r.integrity == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
