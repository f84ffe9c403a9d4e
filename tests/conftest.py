"""Shared fixtures: whole simulated sessions are cached per module where tests only read them."""

import pytest

from appliance.simulation import simulate


@pytest.fixture(scope="session")
def average_session(tmp_path_factory):
    """The whole leaflet programme, average patient, Dutch, seed 1, written to disk."""
    out = tmp_path_factory.mktemp("average")
    return simulate(out_dir=out, lang="nl", patient="average", seed=1)
