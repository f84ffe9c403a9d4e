"""Generated configurations and prescriptions through the device: each is refused in one
sentence, or a short session runs to its end on the device's path with the stimulation
line never high outside a work phase and low at the end (issue 13's property)."""

from __future__ import annotations

import math
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from test_config_properties import TODAY, assert_one_sentence, device_config_tables, prescription_tables

from appliance.config import ConfigError, parse_device_config
from appliance.device.appliance import Appliance, RunOptions
from appliance.device.edges import SimulatedEdges, SimulatedPatient
from appliance.events import Event, Feedback
from appliance.patient.prescription import parse_prescription

SESSION_S = 240.0
SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
DAY = TODAY if TODAY.weekday() != 0 else TODAY - timedelta(days=1)  # not a Monday: no PERFECT that day


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else
                             (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def to_toml(table: dict, prefix: str = "") -> str:
    """A TOML document for a generated table (tomllib reads; the standard library has no writer).
    TOML has no null: a None value is left out, as a clinician's file would."""
    table = {k: v for k, v in table.items() if v is not None}
    plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and plain else []
    lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in plain.items()]
    for k, v in table.items():
        if isinstance(v, dict):
            lines.append(to_toml(v, f"{prefix}.{toml_value(k)}" if prefix else toml_value(k)))
    return "\n".join(lines)


class LineWatch:
    """In every session: on each control tick the stim line is high only inside a work phase."""

    def __init__(self, edges: SimulatedEdges) -> None:
        self.edges = edges
        self.on_at: float | None = None
        self.ons = 0
        self.violations: list[str] = []

    def emit(self, event: Event) -> None:
        if event.kind == "stim":
            if event.data.get("state") == "on":
                self.on_at = event.t
                self.ons += 1
            elif event.data.get("state") in ("off", "interrupted", "finished", "begin", "end"):
                self.on_at = None

    def feedback(self, fb: Feedback) -> None:
        high = any(line.is_active for line in self.edges.stim_lines)
        if high and self.on_at is None:
            self.violations.append(f"line high at {fb.t:.2f} s outside a work phase")
        elif high and self.on_at is not None and fb.t - self.on_at > 12.5:  # hard limit 12 s + a tick
            self.violations.append(f"line high {fb.t - self.on_at:.2f} s into a work phase")


def run_device(tmp: Path, config: Path | None = None) -> tuple[Appliance, LineWatch]:
    edges = SimulatedEdges(SimulatedPatient("average", seed=1), start_after_ready=True)
    edges.clock.set_wall(datetime.combine(DAY, time(9, 0), UTC))
    watch = LineWatch(edges)
    edges.extra_sinks.append(watch)
    options = RunOptions(config_path=config, state_dir=tmp / "state", audio=False, sessions=1,
                         max_session_s=SESSION_S, serve_until=SESSION_S + 120.0)
    device = Appliance(options, edges)
    device.main()
    return device, watch


@settings(max_examples=8, deadline=None, suppress_health_check=SLOW)
@given(table=device_config_tables())
def test_a_configuration_is_refused_in_one_sentence_or_runs_a_session_on_the_device(tmp_path_factory, table):
    tmp = tmp_path_factory.mktemp("cfg")
    path = tmp / "appliance.toml"
    text = to_toml(table) + "\n"
    path.write_text(text)
    table = tomllib.loads(text)  # what the device will read
    try:
        parse_device_config(table, str(path))
    except ConfigError as err:
        assert_one_sentence(err, str(path))
        device, _ = run_device(tmp, path)
        assert device.health.needs_clinic and not device.records  # refused: it says so, trains nothing
        return
    device, watch = run_device(tmp, path)
    assert device.records, device.health.needs_clinic
    assert device.records[0].session.finished or device.records[0].session.session_time() >= SESSION_S - 1
    assert not watch.violations


@settings(max_examples=10, deadline=None, suppress_health_check=SLOW)
@given(table=prescription_tables())
def test_a_prescription_is_refused_in_one_sentence_or_trains_with_the_line_low_outside_work(tmp_path_factory, table):
    tmp = tmp_path_factory.mktemp("rx")
    state = tmp / "state"
    state.mkdir()
    path = state / "prescription.toml"
    text = to_toml(table) + "\n"
    path.write_text(text)
    table = tomllib.loads(text)
    try:
        parse_prescription(table, str(path), today=TODAY)
    except ConfigError as err:
        assert_one_sentence(err, str(path))
        device, _ = run_device(tmp)
        assert device.health.needs_clinic and not device.records
        return
    device, watch = run_device(tmp)
    assert device.records, device.health.needs_clinic
    assert not watch.violations, watch.violations
    assert not any(line.is_active for line in device.edges.stim_lines)


def test_a_stim_prescription_keeps_the_line_inside_its_work_phases(tmp_path):
    """The property's positive case, made certain: stimulation prescribed and reached."""
    from test_device_path import STIM_RX

    state = tmp_path / "state"
    state.mkdir()
    (state / "prescription.toml").write_text(STIM_RX.replace("checked_on = 2026-05-01",
                                                             f"checked_on = {TODAY.isoformat()}"))
    device, watch = run_device(tmp_path)
    assert device.records and watch.ons == 3 and not watch.violations
    assert device.edges.stim_lines and not any(line.is_active for line in device.edges.stim_lines)
