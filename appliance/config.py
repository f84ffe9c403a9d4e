"""Typed configuration from TOML: the device's settings, validated field by field.

Every refusal names the file, the dotted key and the offending value, so a clinician
or installer can fix it without reading code. `load_dataclass` is shared by the
device configuration, the programme and the prescription loaders.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")
DEFAULT_STATE_DIR = Path("/var/lib/appliance")


class ConfigError(ValueError):
    """A configuration value that cannot be used; names file, key and value."""

    def __init__(self, file: str | Path, key: str, value: Any, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{self.file}: {key} = {value!r}: {reason}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors and absence into `ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", str(path), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", str(exc), "not valid TOML") from None
    except OSError as exc:
        raise ConfigError(path, "(file)", str(path), f"cannot be read: {exc.strerror}") from None


def check_known_keys(table: dict[str, Any], known: Iterable[str],
                     error: Callable[[str, Any, str], Exception], what: str = "key", hint: str = "") -> None:
    """Refuse the first key of `table` not in `known`; `error(key, value, reason)` builds the exception.

    One wording for every TOML file the device reads (configuration, programmes,
    prescriptions, stimulation), so a typo reads the same wherever it is made.
    """
    known = set(known)
    for key in table:
        if key not in known:
            raise error(key, table[key], f"unknown {what} (known: {', '.join(sorted(known))}){hint}")


def check_range(file: str | Path, key: str, value: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(file, key, value, f"must be between {lo} and {hi}")


def _coerce(file: str | Path, key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(file, key, arg, value)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(file, key, value, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(file, key, value, "must be a table")
        return load_dataclass(tp, value, file, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(file, key, value, "must be a list")
        inner = args[0] if args else Any
        items = [_coerce(file, f"{key}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(file, key, value, "must be a table")
        return dict(value)
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, __import__("enum").Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise ConfigError(file, key, value, f"must be one of {allowed}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, value, "must be true or false")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(file, key, value, "must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, value, "must be a whole number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, value, "must be text")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(file, key, value, "must be a path (text)")
        return Path(value)
    return value


def load_dataclass(cls: type[T], data: dict[str, Any], file: str | Path, prefix: str = "") -> T:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and bad values.

    Field metadata may carry `min`/`max` (numbers) and `choices` (strings).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    check_known_keys(data, names,
                     lambda key, value, reason: ConfigError(file, f"{prefix}.{key}" if prefix else key, value, reason))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                full = f"{prefix}.{f.name}" if prefix else f.name
                raise ConfigError(file, full, None, "is required")
            continue
        full = f"{prefix}.{f.name}" if prefix else f.name
        value = _coerce(file, full, hints[f.name], data[f.name])
        meta = f.metadata
        if isinstance(value, int | float) and not isinstance(value, bool):
            check_range(file, full, value, meta.get("min"), meta.get("max"))
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(file, full, value, f"must be one of {', '.join(map(repr, meta['choices']))}")
        kwargs[f.name] = value
    return cls(**kwargs)


def bounded(default: Any, lo: float | None = None, hi: float | None = None, **extra: Any) -> Any:
    """A dataclass field with a default and an allowed range (checked on load)."""
    return field(default=default, metadata={"min": lo, "max": hi, **extra})


def choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


# --- The device configuration ------------------------------------------------------------

@dataclass(frozen=True)
class AudioConfig:
    output_device: str | None = None
    sample_rate: int = bounded(22050, 8000, 48000)
    block_size: int = bounded(64, 16, 4096)  # 2.9 ms at 22050 Hz: see bench/latency.py, bench/cpu.py
    tone_rest_hz: float = bounded(220.0, 50.0, 2000.0)
    tone_target_hz: float = bounded(880.0, 100.0, 4000.0)
    tone_always_on: bool = False
    volume: float = bounded(0.8, 0.0, 1.0)
    speech_rate_wpm: int = bounded(150, 80, 260)


@dataclass(frozen=True)
class SensorConfig:
    source: str = choice("simulated", "simulated", "adc")
    chip: str = choice("MCP3008", "MCP3008", "MCP3208")
    channel: int = bounded(0, 0, 7)
    abdominal_channel: int | None = None
    vref: float = bounded(3.3, 1.0, 5.5)
    spi_port: int = bounded(0, 0, 1)
    spi_device: int = bounded(0, 0, 1)
    sample_rate_hz: float = bounded(200.0, 20.0, 1000.0)
    oversample: int = bounded(4, 1, 64)
    transfer: str = choice("mpx5010", "mpx5010", "two_point")
    sensor_supply_v: float = bounded(5.0, 1.0, 5.5)
    divider_ratio: float = bounded(0.66, 0.1, 1.0)


@dataclass(frozen=True)
class VoiceConfig:
    enabled: bool = True
    engine: str = choice("vosk", "vosk", "pocketsphinx")
    model_dir: Path | None = None
    input_device: str | None = None
    min_confidence: float = bounded(0.6, 0.0, 1.0)


@dataclass(frozen=True)
class ControlsConfig:
    button_pin: int | None = 17
    led_pin: int | None = 27
    stim_pin: int = bounded(22, 0, 27)


@dataclass(frozen=True)
class DeviceConfig:
    """Everything about this unit that is not about the patient."""

    language: str = choice("nl", "nl", "en")
    audio: AudioConfig = field(default_factory=AudioConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    source: str = "(defaults)"


def load_device_config(path: str | Path | None) -> DeviceConfig:
    """Load the device configuration; `None` means built-in defaults."""
    if path is None:
        return DeviceConfig()
    data = read_toml(path)
    cfg = load_dataclass(DeviceConfig, {k: v for k, v in data.items()}, path)
    return dataclasses.replace(cfg, source=str(path))
