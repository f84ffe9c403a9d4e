"""Power cuts in CI: a few SIGKILLs of a real-time `appliance run` session (bench: 200).

Each kill is checked: `PRAGMA integrity_check` is ok and every repetition the coach had
announced as completed is in the database; the next start marks the killed session as
interrupted and carries on.
"""

from __future__ import annotations

import importlib.util
import random
import sqlite3
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("power_cut", REPO / "bench" / "power_cut.py")
power_cut = importlib.util.module_from_spec(spec)
sys.modules["power_cut"] = power_cut  # dataclasses look their module up
spec.loader.exec_module(power_cut)


def test_sigkill_at_chosen_moments_loses_no_announced_repetition(tmp_path):
    # Two appliances at once (the machine has two cores), two cuts each: one right after
    # an announced repetition, one around the next commit, then one early in start-up.
    plans = {"a": ["on_rep", "uniform"], "b": ["near_rep"]}
    results: list = []
    lock = threading.Lock()

    def lane(name: str) -> None:
        rng = random.Random(name)
        state = tmp_path / name
        state.mkdir()
        for strategy in plans[name]:
            # "uniform" here: a cut during start-up and the welcome (first 3 s)
            r = power_cut.cut(state, strategy, rng, uniform_max_s=3.0)
            with lock:
                results.append((name, r))

    threads = [threading.Thread(target=lane, args=(n,)) for n in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) == 3
    for name, r in results:
        assert r.exit_code == -9, (name, r)
        assert r.integrity == "ok", (name, r)
        assert r.lost == [], (name, r)
    # The cuts timed on announcements really happened with repetitions on record.
    assert all(r.announced >= 1 for _, r in results if r.when in ("on_rep", "near_rep"))

    # Lane a was cut twice: the second start found the first session cut off mid-way.
    con = sqlite3.connect(tmp_path / "a" / "appliance.db")
    statuses = [s for (s,) in con.execute("SELECT status FROM sessions ORDER BY id")]
    con.close()
    assert statuses[0] == "interrupted"
