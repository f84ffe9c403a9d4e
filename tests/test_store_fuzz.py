"""A fuzz run over damaged databases (issue 13): truncated at random offsets, flipped bytes,
a table replaced by one of a wrong schema, a garbage header, a directory in its place.

Each is either opened (and then stores a repetition) or refused with StoreDamaged, as
`diagnose` said beforehand; `salvage` never raises and, after a truncation, returns every
repetition a lookup by id can read and none that was not stored; the clinic's status and
export never raise, and an export from a damaged file holds the salvaged repetitions.
bench/store_fuzz.py runs the same checks for longer and prints figures.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("store_fuzz", REPO / "bench" / "store_fuzz.py")
store_fuzz = importlib.util.module_from_spec(spec)
sys.modules["store_fuzz"] = store_fuzz  # dataclasses look their module up
spec.loader.exec_module(store_fuzz)

TABLES = ["sessions", "exercises", "repetitions", "events", "samples", "meta"]

damages = st.one_of(
    st.builds(store_fuzz.Damage, kind=st.just("truncate"), at=st.floats(0.0, 1.0)),
    st.builds(store_fuzz.Damage, kind=st.just("flip"), at=st.floats(0.0, 1.0), flips=st.integers(1, 64),
              seed=st.integers(0, 2**30)),
    st.builds(store_fuzz.Damage, kind=st.just("wrong_schema"), table=st.sampled_from(TABLES)),
    st.builds(store_fuzz.Damage, kind=st.just("garbage_header"), seed=st.integers(0, 2**30)),
    st.builds(store_fuzz.Damage, kind=st.just("directory")),
)


@cache
def reference() -> tuple[Path, Path, dict]:
    """One real database for every example (built once; each example damages a copy)."""
    where = Path(tempfile.mkdtemp(prefix="store-fuzz-"))
    state = store_fuzz.reference_state(where, sessions=4, reps=8, samples_per_rep=30)
    return where, state, store_fuzz.repetitions_of(store_fuzz.db_path(state))


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(damage=damages)
def test_a_damaged_database_is_opened_or_refused_never_a_traceback_and_what_is_readable_is_exported(damage):
    where, state, original = reference()
    logging.disable(logging.WARNING)
    try:
        result = store_fuzz.check(state, original, damage, where)
    finally:
        logging.disable(logging.NOTSET)
    assert result.problems == [], (damage, result.problems)
    if damage.kind in ("garbage_header", "directory", "wrong_schema"):
        assert not result.opened and result.reason
