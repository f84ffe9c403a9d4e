"""Shared fixtures: whole simulated sessions are cached per module where tests only read them."""

import pytest

from appliance.simulation.session import simulate


@pytest.fixture(scope="session")
def average_session(tmp_path_factory):
    """The whole leaflet programme, average patient, Dutch, seed 1, written to disk."""
    out = tmp_path_factory.mktemp("average")
    return simulate(out_dir=out, lang="nl", patient="average", seed=1, programme="leaflet")


def pytest_collection_modifyitems(items):
    """Real-time audio through a private PulseAudio shares two cores with everything else:
    a test that lost its real-time slot is run again (at most twice), never loosened."""
    for item in items:
        if item.get_closest_marker("pulse"):
            item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=2))


@pytest.fixture(autouse=True)
def _stop_handlers_are_left_as_found():
    """A test (or the device code it runs) that installs a SIGINT/SIGTERM handler takes it
    away again: a handler left in the worker changes what every later test's Ctrl-C or
    stop does (the stim exit handlers chained to a closed line, once per session)."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    left = [signal.Signals(s).name for s, h in before.items() if signal.getsignal(s) is not h]
    assert not left, f"{', '.join(left)} handler left installed by this test"
