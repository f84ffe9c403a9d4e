"""Properties over generated device configurations and prescriptions (hypothesis).

Each generated table, valid or hostile (nan, inf, negative, huge, wrong types, clashing
pins, far dates, control characters), is either refused with one `ConfigError` whose
sentence names the file, the key and the value, or loads into an object whose every
number is finite and within its documented range.

The strategies `device_config_tables()` and `prescription_tables()` are meant to be
reused (`from test_config_properties import device_config_tables`), e.g. to run a short
simulated session on every configuration that loads.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config import (
    FORBIDDEN_STIM_PINS,
    AudioConfig,
    ConfigError,
    ControlsConfig,
    DeviceConfig,
    SensorConfig,
    VoiceConfig,
    numbers,
    parse_device_config,
    spi_pins,
)
from appliance.patient.prescription import CODE_PATTERN, EARLIEST_DATE, parse_prescription, visible

FILE = "/etc/appliance/appliance.toml"
RX_FILE = "/var/lib/appliance/prescription.toml"
TODAY = date(2026, 3, 2)

HOSTILE_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -1, -1e300, 1e300, 2**63 - 1, -(2**63), 0, 0.0])
HOSTILE_OTHER = st.one_of(st.booleans(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _hostile() -> st.SearchStrategy:
    return st.one_of(HOSTILE_NUMBERS, HOSTILE_OTHER, st.floats(allow_nan=True, allow_infinity=True),
                     st.integers(min_value=-(2**63), max_value=2**63 - 1))


def _value_for(field, default):
    """A plausible value for one dataclass field (often valid), or a hostile one."""
    lo, hi = field.metadata.get("min"), field.metadata.get("max")
    choices = field.metadata.get("choices")
    if choices:
        good = st.sampled_from(list(choices))
    elif isinstance(default, bool):
        good = st.booleans()
    elif isinstance(default, int):
        low, high = int(lo if lo is not None else 0), int(hi if hi is not None else 64)
        good = st.integers(min_value=low - 2, max_value=high + 2)
    elif isinstance(default, float):
        low, high = (lo if lo is not None else 0.0), (hi if hi is not None else 1e4)
        good = st.floats(min_value=low * 0.9 - 1, max_value=high * 1.1, allow_nan=False)
    else:
        good = st.one_of(st.none(), st.text(max_size=8)) if default is None else st.text(max_size=8)
    return mostly(good)


def mostly(good: st.SearchStrategy, weight: int = 12) -> st.SearchStrategy:
    """`good` most of the time, a hostile value now and then (so whole tables often load)."""
    return st.sampled_from([True] * weight + [False]).flatmap(lambda ok: good if ok else _hostile())


def _table(cls) -> st.SearchStrategy:
    import dataclasses

    fields = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in ("button_pin", "led_pin", "abdominal_channel"):
            hi = 7 if f.name == "abdominal_channel" else 27
            fields[f.name] = mostly(st.integers(min_value=-2, max_value=hi + 3), 6)
        elif f.name == "stim_pin":
            fields[f.name] = mostly(st.one_of(st.integers(min_value=-1, max_value=30),
                                              st.sampled_from([22, 23, 24, 25])), 6)
        elif f.name == "model_dir":
            fields[f.name] = mostly(st.text(max_size=10))
        else:
            fields[f.name] = _value_for(f, default)
    return st.fixed_dictionaries({}, optional=fields)


def device_config_tables() -> st.SearchStrategy[dict]:
    """Device configuration tables as TOML would give them: valid, hostile and in between."""
    sections = {"audio": _table(AudioConfig), "sensor": _table(SensorConfig),
                "voice": _table(VoiceConfig), "controls": _table(ControlsConfig)}
    top = {name: mostly(s) for name, s in sections.items()}
    top["language"] = mostly(st.sampled_from(["nl", "en"]))
    base = st.fixed_dictionaries({}, optional=top)
    typo = st.dictionaries(st.sampled_from(["volumes", "Audio", "stim", "source"]), _hostile(), max_size=1)
    return st.one_of(base, base, base, st.builds(lambda a, b: {**a, **b}, base, typo))


def assert_one_sentence(err: ConfigError, file: str) -> None:
    text = str(err)
    assert err.file == file and text.startswith(file + ": ")
    assert err.key
    if not err.key.startswith("("):  # "(file)", "(syntax)": the file itself, named first
        assert err.key in text
        shown = repr(err.value) if err.shown is None else err.shown
        assert shown in text
    assert err.reason and "\n" not in err.reason and "Traceback" not in text


def assert_sane(cfg: DeviceConfig) -> None:
    for key, value, lo, hi in numbers(cfg):
        assert math.isfinite(value), key
        assert lo is None or value >= lo, (key, value)
        assert hi is None or value <= hi, (key, value)
    a, c = cfg.audio, cfg.controls
    assert a.tone_rest_hz < a.tone_target_hz < a.sample_rate / 2
    assert c.stim_pin not in FORBIDDEN_STIM_PINS
    pins = [p for p in (c.stim_pin, c.button_pin, c.led_pin) if p is not None] + list(spi_pins(cfg.sensor))
    assert len(pins) == len(set(pins)), pins
    assert cfg.source == FILE


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(device_config_tables())
def test_every_configuration_is_refused_in_one_sentence_or_loads_sane(table):
    try:
        cfg = parse_device_config(table, FILE)
    except ConfigError as err:
        assert_one_sentence(err, FILE)
        return
    assert_sane(cfg)


# --- Prescriptions -----------------------------------------------------------------------

def _dates() -> st.SearchStrategy:
    near = st.dates(min_value=TODAY - timedelta(days=200), max_value=TODAY + timedelta(days=30))
    far = st.one_of(st.dates(min_value=date(1900, 1, 1), max_value=date(9999, 12, 31)),
                    st.sampled_from([date(9999, 12, 31), date(1, 1, 1)]), _hostile())
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: near if ok else far)


_BAD_CODES = st.one_of(
    st.sampled_from(["GNT-0042", "GNT-2026-0042", "GNT-0042\n", " GNT-0042", "GNT\u200b-0042", "JANSSENS",
                     "GNT-0042\x00", "A1"]), st.text(max_size=30), _hostile())
CODES = st.sampled_from([True] * 5 + [False]).flatmap(
    lambda ok: st.from_regex(CODE_PATTERN, fullmatch=True) if ok else _BAD_CODES)
EXERCISES = ("awareness", "ex1", "ex2", "ex3", "ex4", "ex5", "ex6", "ex7", "ex8")


def _override() -> st.SearchStrategy:
    num = st.one_of(st.integers(min_value=-5, max_value=700), st.floats(min_value=-5, max_value=700), HOSTILE_NUMBERS)
    return st.fixed_dictionaries({}, optional={
        "repetitions": num, "rest_between_reps_s": num, "target_pct_mvc": num, "hold_seconds": num,
        "hold_breaths": num, "move_seconds": num, "enabled": st.one_of(st.booleans(), st.booleans(), _hostile())})


def prescription_tables() -> st.SearchStrategy[dict]:
    """Prescription tables (what tomllib gives for prescription.toml), valid and hostile."""
    patient = st.fixed_dictionaries({"code": CODES}, optional={
        "language": mostly(st.sampled_from(["nl", "en"]), 6),
        "programme": mostly(st.sampled_from(["leaflet"] * 8 + ["postop", "../../etc/passwd", "leaflet.toml",
                                                                "/tmp/x.toml", "nope"]), 8),
        "surgery_date": _dates(), "catheter_removal_date": _dates()})
    breathing = st.fixed_dictionaries({}, optional={
        "inhale_s": st.one_of(st.floats(min_value=0, max_value=20), HOSTILE_NUMBERS),
        "exhale_s": st.one_of(st.floats(min_value=0, max_value=20), HOSTILE_NUMBERS)})
    progression = st.fixed_dictionaries({}, optional={
        "step_pct": st.one_of(st.floats(min_value=-1, max_value=30), HOSTILE_NUMBERS),
        "met_fraction": st.one_of(st.floats(min_value=0, max_value=1.5), HOSTILE_NUMBERS),
        "perfect_weekday": st.one_of(st.integers(min_value=-1, max_value=8), HOSTILE_NUMBERS)})
    reminders = st.fixed_dictionaries({}, optional={
        "snooze_minutes": st.one_of(st.floats(min_value=0, max_value=200), HOSTILE_NUMBERS),
        "short_set": st.lists(st.sampled_from(EXERCISES), max_size=2)})
    exercise = st.dictionaries(st.sampled_from(EXERCISES), _override(), max_size=9)
    all_off = st.just({e: {"enabled": False} for e in EXERCISES})
    stim = st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "work_seconds": st.one_of(st.floats(min_value=0, max_value=12), HOSTILE_NUMBERS),
        "session_minutes": st.one_of(st.floats(min_value=0, max_value=40), HOSTILE_NUMBERS),
        "checked_by": st.one_of(st.sampled_from(["dr. A. Jansen", "\u200b", " ", "\u200b\u2060"]), st.text(max_size=4)),
        "checked_on": _dates(),
        "surgery_or_birth_date": _dates(),
        "contraindications": st.just({k: "no" for k in _contraindications()})})
    return st.fixed_dictionaries({"patient": patient}, optional={
        "breathing": breathing, "progression": progression, "reminders": reminders,
        "exercise": st.one_of(exercise, exercise, all_off), "stim": stim})


def _contraindications():
    from appliance.stim import CONTRAINDICATIONS

    return CONTRAINDICATIONS


def _rx_numbers(rx):
    yield from numbers(rx.breathing, "breathing")
    yield from numbers(rx.reminders, "reminders")
    yield from numbers(rx.progression, "progression")
    for ex_id, ov in rx.exercises.items():
        for key, value, lo, hi in numbers(ov, f"exercise.{ex_id}"):
            if value is not None:
                yield key, value, lo, hi


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prescription_tables())
def test_every_prescription_is_refused_in_one_sentence_or_loads_sane(table):
    try:
        rx = parse_prescription(table, RX_FILE, today=TODAY)
    except ConfigError as err:
        assert_one_sentence(err, RX_FILE)
        code = table["patient"].get("code")
        if isinstance(code, str) and len(code) >= 4:
            assert code not in str(err)  # refusals reach the journal, outside the wipe's reach
        return
    from appliance.patient.prescription import plan_for_day, prescribed_programme

    for key, value, lo, hi in _rx_numbers(rx):
        assert math.isfinite(value), key
        assert (lo is None or value >= lo) and (hi is None or value <= hi), (key, value)
    assert CODE_PATTERN.fullmatch(rx.code) and rx.code == rx.code.strip()
    latest = TODAY.replace(year=TODAY.year + 2)
    for d in (rx.surgery_date, rx.catheter_removal_date, rx.stim.surgery_or_birth_date):
        assert d is None or EARLIEST_DATE <= d <= latest
    assert rx.stim.checked_on is None or rx.stim.checked_on <= TODAY + timedelta(days=1)
    if rx.stim.enabled:
        assert visible(rx.stim.checked_by)
    assert rx.programme in ("leaflet", "postop")
    # What the service computes at every session start neither overflows nor finds nothing to do.
    assert prescribed_programme(rx).exercises
    for day in (TODAY, TODAY + timedelta(weeks=7), TODAY + timedelta(weeks=13)):
        assert plan_for_day(rx, day).programme.exercises
    assert rx.unlock_date is None or rx.stim_allowed_from is not None
