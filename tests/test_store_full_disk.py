"""A full state directory: every completed repetition is still stored (issue 13, item 7).

Before the reserve file, 0 of 6 repetitions were stored at 0 KiB free and 2 of 6 at 40 KiB.
A real (tiny) file system is used, since only a real one can be full: see small_fs.py.
"""

from __future__ import annotations

import pytest
import small_fs

pytestmark = pytest.mark.skipif(small_fs.unavailable() is not None, reason=f"{small_fs.unavailable()}")

SIX_REPETITIONS = '''
import sqlite3
from datetime import UTC, datetime
from appliance.store import Store

mount(1024)
when = datetime(2026, 1, 1, tzinfo=UTC)
store = Store(MP / "appliance.db", reserve_bytes=256 * 1024)
reserve = (MP / "appliance.db.reserve").stat().st_size
if RESTART:
    store.close()
free = fill_disk(LEAVE_KIB)
if RESTART:  # the service starts again on a disk that is already full
    store = Store(MP / "appliance.db", reserve_bytes=256 * 1024)
sid = store.start_session(when, "leaflet", "nl", "GNT-2026-0042")
ex = store.start_exercise(sid, "ex1", 1, when)
for rep in range(1, 7):
    for i in range(300):
        store.sample(sid, rep * 10 + i / 30, 30.0 + i * 0.01, 50.0)
    store.event(sid, rep * 10.0, "phase", {"phase": "hold", "start": rep * 10.0, "end": rep * 10.0 + 5})
    store.add_repetition(sid, ex, "ex1", rep, "complete", when, rep * 10.0, rep * 10 + 9.0, 60.0,
                         {"peak_pct": 60.0 + rep})
store.end_session(sid, "done", when)
disk_full = store.disk_full
store.close()
db = sqlite3.connect(MP / "appliance.db")
reps = [r[0] for r in db.execute("SELECT rep FROM repetitions ORDER BY id")]
status = db.execute("SELECT status FROM sessions").fetchone()[0]
report(free=free, reserve=reserve, reps=reps, status=status, disk_full=disk_full,
       samples_dropped=store.samples_dropped, reserve_left=(MP / "appliance.db.reserve").exists())
'''


@pytest.mark.parametrize(("leave_kib", "restart"), [(0, False), (40, False), (0, True)],
                         ids=["0 KiB free", "40 KiB free", "restart at 0 KiB free"])
def test_on_a_full_state_directory_all_six_repetitions_are_stored_and_the_store_says_disk_full(
        tmp_path, leave_kib, restart):
    code = f"LEAVE_KIB = {leave_kib}\nRESTART = {restart}\n" + SIX_REPETITIONS
    seen = small_fs.run(tmp_path / "state", code)
    assert seen["reserve"] == 256 * 1024  # set aside while there was room
    assert seen["free"] <= (leave_kib + 4) * 1024  # the disk really was full
    assert seen["reps"] == [1, 2, 3, 4, 5, 6], seen
    assert seen["status"] == "done"
    assert seen["disk_full"] is True and seen["samples_dropped"] > 0
    assert seen["reserve_left"] is False  # released for the repetitions, not restored while full


def test_the_reserve_comes_back_and_samples_are_kept_again_when_space_is_freed(tmp_path):
    code = '''
import sqlite3
from datetime import UTC, datetime
from appliance.store import Store

mount(2048)
when = datetime(2026, 1, 1, tzinfo=UTC)
store = Store(MP / "appliance.db", reserve_bytes=256 * 1024)
sid = store.start_session(when, "leaflet", "nl")
ex = store.start_exercise(sid, "ex1", 1, when)
fill_disk(0)
store.sample(sid, 1.0, 30.0, 50.0)
store.add_repetition(sid, ex, "ex1", 1, "complete", when, 0.0, 9.0, 60.0, {})
full_then = store.disk_full
(MP / "filler").unlink()  # the clinic made room
store.add_repetition(sid, ex, "ex1", 2, "complete", when, 10.0, 19.0, 60.0, {})
store.sample(sid, 20.0, 31.0, 51.0)
store.add_repetition(sid, ex, "ex1", 3, "complete", when, 20.0, 29.0, 60.0, {})
report(full_then=full_then, full_now=store.disk_full, reserve=(MP / "appliance.db.reserve").stat().st_size,
       samples=store.db.execute("SELECT count(*) FROM samples").fetchone()[0])
'''
    seen = small_fs.run(tmp_path / "state", code)
    assert seen["full_then"] is True and seen["full_now"] is False
    assert seen["reserve"] == 256 * 1024 and seen["samples"] == 1
