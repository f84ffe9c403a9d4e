"""Properties of the relay protocol (appliance/stim/relay.py), over any sequence of commands.

For any sequence of on/off/feed/garbage/silence: the line is never high longer than the
lease past the last renewal, never past the on-time, never after an "off", garbage or
end-of-file, and a lapsed lease is not revived by a late feed. First on the decision
alone (`Lease`, exact times), then on the relay's real loop (`serve` on a pipe, real
time, a tolerance for the scheduler).
"""

from __future__ import annotations

import math
import os
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.stim.limits import HARD_LIMITS
from appliance.stim.relay import Lease, serve

TICK = 1 / 1024  # dyadic times: sums are exact in binary floating point

on_seconds = st.one_of(
    st.integers(1, 12 * 1024).map(lambda n: n * TICK),  # valid up to 10.2 s, some beyond
    st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e9]),
)
op = st.one_of(
    st.tuples(st.just("on"), on_seconds),
    st.tuples(st.just("feed"), st.none()),
    st.tuples(st.just("off"), st.none()),
    st.tuples(st.just("garbage"), st.sampled_from([b"", b"on", b"on x", b"feed 1", b"\xff", b"ON 1"])),
)
# a silence of 0-0.5 s, then an op; whether the relay's loop looked at the line just before
step = st.tuples(st.integers(0, 512).map(lambda n: n * TICK), op, st.booleans())


def expected_high(history: list[tuple[float, str, object]], t: float, lease_s: float) -> bool:
    """The specification, written independently of `Lease`: may the line be high at t?"""
    last_on = None
    for i, (when, kind, arg) in enumerate(history):
        if when > t:
            break
        if kind == "on" and 0 < arg <= HARD_LIMITS.max_on_seconds:
            last_on = i
        elif kind in ("on", "off", "garbage"):
            last_on = None
    if last_on is None:
        return False
    t_on, _, seconds = history[last_on]
    if not t < t_on + seconds:
        return False
    renewals = [t_on] + [w for w, k, _ in history[last_on + 1:] if k == "feed" and w <= t] + [t]
    return all(b < a + lease_s for a, b in zip(renewals, renewals[1:], strict=False))


def apply(lease: Lease, now: float, kind: str, arg: object) -> None:
    if kind == "on":
        lease.command(now, f"on {arg!r}".encode())
    elif kind == "garbage":
        lease.command(now, arg)
    else:
        lease.command(now, kind.encode())


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(step, max_size=40), lease_s=st.sampled_from([0.125, 0.1875]),
       probes=st.lists(st.integers(0, 768).map(lambda n: n * TICK), max_size=6))
def test_the_lease_is_high_exactly_when_the_specification_allows(steps, lease_s, probes) -> None:
    lease = Lease(lease_s)
    now = 0.0
    history: list[tuple[float, str, object]] = []
    for silence, (kind, arg), look in steps:
        # the relay's loop looks at the line at arbitrary moments of a silence, or not at all
        for p in sorted(probes):
            if p < silence and look:
                assert lease.high(now + p) == expected_high(history, now + p, lease_s)
        now += silence
        if look:
            assert lease.high(now) == expected_high(history, now, lease_s)
        apply(lease, now, kind, arg)
        history.append((now, kind, arg))
        high = lease.high(now)
        assert high == expected_high(history, now, lease_s)
        if kind in ("off", "garbage"):
            assert not high  # never high after an off or anything not understood
        renewals = [w for w, k, _ in history if k in ("on", "feed")]
        if high:  # never high longer than the lease past the last renewal
            assert renewals and now - renewals[-1] < lease_s
            deadline = lease.deadline()
            assert deadline is not None and deadline <= renewals[-1] + lease_s
    # silence after everything: low at the latest one lease after the last renewal
    assert not lease.high(now + lease_s)


# --- the real loop: serve() on a pipe, in real time -------------------------------------------

TOLERANCE_S = 0.06  # the scheduler of a shared 2-core machine

real_op = st.one_of(
    st.tuples(st.just("on"), st.sampled_from([0.1, 0.3, 1.0, math.nan, 20.0])),
    st.tuples(st.just("feed"), st.none()),
    st.tuples(st.just("feeds"), st.integers(1, 40)),  # a healthy loop: a feed every 5 ms
    st.tuples(st.just("off"), st.none()),
    st.tuples(st.just("garbage"), st.just(b"x" * 100)),
)
real_step = st.tuples(st.sampled_from([0.0, 0.05, 0.15, 0.25, 0.35]), real_op)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(real_step, min_size=1, max_size=6))
def test_the_relay_loop_never_holds_the_line_past_its_lease_off_or_end_of_file(steps) -> None:
    lease_s = HARD_LIMITS.watchdog_seconds
    read_end, write_end = os.pipe()
    changes: list[tuple[float, bool]] = []

    def set_pin(high: bool) -> None:
        if not changes or changes[-1][1] != high:
            changes.append((time.monotonic(), high))

    relay = threading.Thread(target=serve, args=(read_end, set_pin, Lease(lease_s)), daemon=True)
    relay.start()
    sent: list[tuple[float, str]] = []  # (time, kind) of renewals and of drops asked for

    def send(kind: str, data: bytes) -> None:
        sent.append((time.monotonic(), kind))
        os.write(write_end, data)

    try:
        for silence, (kind, arg) in steps:
            time.sleep(silence)
            if kind == "on":
                send("on" if 0 < arg <= HARD_LIMITS.max_on_seconds else "off", f"on {arg}\n".encode())
            elif kind == "feeds":
                for _ in range(arg):
                    send("feed", b"feed\n")
                    time.sleep(0.005)
            elif kind == "garbage":
                send("off", arg + b"\n")
            else:
                send(kind, f"{kind}\n".encode())
        time.sleep(0.05)
    finally:
        eof_at = time.monotonic()
        os.close(write_end)
        relay.join(2.0)
        os.close(read_end)
    assert not relay.is_alive()
    assert changes[-1][1] is False  # low after end-of-file
    ends = [t for t, high in changes if not high] + [math.inf]
    for up, high in changes:
        if not high:
            continue
        down = min(t for t in ends if t > up)
        before = [(t, k) for t, k in sent if t <= down]
        # The rise follows an on: the latest one sent by then is at most the tolerance before
        # it. (An "on" that renews the line while it is high is no rise; the assertion used
        # to take the last on before the line went down, and so failed on such a renewal.)
        causes = [t for t, k in sent if k == "on" and t <= up + TOLERANCE_S]
        assert causes and up - causes[-1] <= TOLERANCE_S, "high without an on"
        renewals = [t for t, k in before if k in ("on", "feed")]
        assert down - renewals[-1] <= lease_s + TOLERANCE_S, "held past the lease"
        drops = [t for t, k in sent if k == "off" and up < t] + [eof_at]
        assert down <= drops[0] + TOLERANCE_S, "held after off or end-of-file"
