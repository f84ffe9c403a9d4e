"""Typed configuration from TOML: the device's settings, validated field by field.

Every refusal names the file, the dotted key and the offending value, so a clinician
or installer can fix it without reading code. `load_dataclass` is shared by the
device configuration, the programme and the prescription loaders.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")
DEFAULT_STATE_DIR = Path("/var/lib/appliance")
MAX_TOML_BYTES = 1024 * 1024  # configurations, programmes and prescriptions are a few KiB


class ConfigError(ValueError):
    """A configuration value that cannot be used; names file, key and value.

    `shown` replaces the value in the message when the value itself must not be
    written anywhere (a patient code: refusals reach the journal, outside the wipe's
    reach); `value` still holds it for the caller.
    """

    def __init__(self, file: str | Path, key: str, value: Any, reason: str, shown: str | None = None) -> None:
        self.file = str(file)
        self.key = key
        self.value = value
        self.reason = reason
        if shown is None and isinstance(value, bool):
            shown = str(value).lower()  # as the file has it: true/false, not Python's True/False
        self.shown = shown
        if key == "(file)":  # the file itself: "FILE: file not found", not "FILE: (file) = 'FILE': ..."
            message = f"{self.file}: {reason}"
        elif key == "(syntax)":
            message = f"{self.file}: {reason} ({value})"
        else:
            message = f"{self.file}: {key} = {repr(value) if shown is None else shown}: {reason}"
        super().__init__(message)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors and absence into `ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", str(path), "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "(file)", str(path), "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(path, "(file)", str(path), f"cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_TOML_BYTES:
        raise ConfigError(path, "(file)", str(path), f"is larger than {MAX_TOML_BYTES // 1024} KiB; "
                          "not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "(file)", str(path), f"is not UTF-8 text (byte {exc.start}); "
                          "not a TOML file") from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", str(exc), "not valid TOML") from None
    except RecursionError:
        raise ConfigError(path, "(syntax)", str(path), "nested too deeply to be a TOML file") from None


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


def check_number(file: str | Path, key: str, value: Any, whole: bool = False) -> float | int:
    """`value` as a finite number, or `ConfigError`: refuses text, true/false, nan and infinity.

    Every number the device reads goes through here (via `check_range` or
    `load_dataclass`): NaN passes every `<`/`>` comparison, so a range check alone
    lets it through.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(file, key, value, "must be a whole number" if whole else "must be a number")
    if whole and not isinstance(value, int):
        raise ConfigError(file, key, value, "must be a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(file, key, value, "must be a finite number (not nan or inf)")
    return value


def check_range(file: str | Path, key: str, value: Any, lo: float | None, hi: float | None) -> None:
    """Refuse `value` unless it is a finite number within [lo, hi] (either bound may be None)."""
    check_number(file, key, value)
    if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
        if lo is None:
            raise ConfigError(file, key, value, f"must be at most {hi}")
        if hi is None:
            raise ConfigError(file, key, value, f"must be at least {lo}")
        raise ConfigError(file, key, value, f"must be between {lo} and {hi}")


def _either(reasons: list[str]) -> str:
    """One reason from a union's: "must be text or a table", not "must be text or must be a table"."""
    if all(r.startswith("must be ") for r in reasons):
        return "must be " + " or ".join(r.removeprefix("must be ") for r in reasons)
    return " or ".join(reasons)


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
                if exc.key != key:  # a part of it was wrong (an item, a key of a table): say that
                    raise
                errors.append(exc.reason)
        raise ConfigError(file, key, value, _either(errors))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(file, f"{key}.{k}", inner, v) for k, v in value.items()}
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
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
        return float(check_number(file, key, value))
    if tp is int:
        return check_number(file, key, value, whole=True)
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
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, int | float) and not isinstance(item, bool):
                    check_range(file, f"{full}[{i}]", item, meta.get("min"), meta.get("max"))
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
    block_size: int = bounded(128, 16, 4096)  # 5.8 ms at 22050 Hz: see bench/latency.py, bench/cpu.py
    tone_rest_hz: float = bounded(220.0, 50.0, 2000.0)
    tone_target_hz: float = bounded(880.0, 100.0, 4000.0)
    tone_always_on: bool = False
    volume: float = bounded(0.8, 0.0, 1.0)
    speech_rate_wpm: int = bounded(150, 80, 260)


@dataclass(frozen=True)
class SpeechConfig:
    """Whose voice the patient hears: a clinic's recorded voice pack, else the synthesizer.

    `voice_pack` is a pack folder (it serves the language its voice.toml names) or a
    table of one folder per language (`{ nl = "...", en = "..." }`); relative paths are
    taken from the configuration file's folder.
    """

    voice_pack: str | dict[str, str] | None = None
    instruction_wpm: int = bounded(140, 100, 200)  # measured rate of long instructions


@dataclass(frozen=True)
class SensorConfig:
    source: str = choice("simulated", "simulated", "adc")
    chip: str = choice("MCP3008", "MCP3008", "MCP3208")
    channel: int = bounded(0, 0, 7)
    abdominal_channel: int | None = bounded(None, 0, 7)
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
    button_pin: int | None = bounded(17, 0, 27)
    led_pin: int | None = bounded(27, 0, 27)
    stim_pin: int = bounded(22, 0, 27)


@dataclass(frozen=True)
class DeviceConfig:
    """Everything about this unit that is not about the patient."""

    language: str = choice("nl", "nl", "en")
    audio: AudioConfig = field(default_factory=AudioConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    source: str = "(defaults)"


# --- Pins (BCM numbers) -------------------------------------------------------------------

# docs/stimulation.md: GPIO 0-8 come out of reset with pull-ups (the line would float
# high through boot), 7-11 are SPI0 (the probe's ADC), 2/3 I2C, 14/15 the UART.
FORBIDDEN_STIM_PINS: dict[int, str] = {
    **{p: "has a pull-up at reset (GPIO 0-8), so the line could float high through boot" for p in range(0, 9)},
    **{p: "is an SPI0 pin (GPIO 7-11, the probe's ADC)" for p in (9, 10, 11)},
    14: "is the UART's TX pin (GPIO 14/15)",
    15: "is the UART's RX pin (GPIO 14/15)",
}
# SPI bus pins: (MISO, MOSI, SCLK) and the chip-select pin per spi_device.
SPI_BUS_PINS: dict[int, tuple[int, int, int]] = {0: (9, 10, 11), 1: (19, 20, 21)}
SPI_CS_PINS: dict[int, tuple[int, ...]] = {0: (8, 7), 1: (18, 17, 16)}
# Longest audio block: the feedback tone must follow the squeeze within tens of ms.
MAX_BLOCK_SECONDS = 0.1


def spi_pins(sensor: SensorConfig) -> dict[int, str]:
    """The BCM pins the ADC's SPI bus uses, each with what it is (empty unless source = "adc")."""
    if sensor.source != "adc":
        return {}
    miso, mosi, sclk = SPI_BUS_PINS[sensor.spi_port]
    cs = SPI_CS_PINS[sensor.spi_port][sensor.spi_device]
    bus = f"SPI{sensor.spi_port}"
    return {miso: f"{bus} MISO (the ADC)", mosi: f"{bus} MOSI (the ADC)", sclk: f"{bus} SCLK (the ADC)",
            cs: f"{bus} chip select {sensor.spi_device} (sensor.spi_device)"}


def voice_pack_dirs(speech: SpeechConfig, file: str | Path) -> dict[str, Path]:
    """The voice pack folder per language that `[speech] voice_pack` names, each checked.

    Refuses (naming file, key and value) a folder without a readable voice.toml, and a
    pack named for one language whose voice.toml says another.
    """
    from appliance.voice.voicepack import LANGUAGES, read_info

    raw = speech.voice_pack
    if raw is None:
        return {}
    base = Path(file).parent if str(file) != "(defaults)" else Path.cwd()
    named: dict[str | None, tuple[str, Any]] = {}
    if isinstance(raw, str):
        named[None] = ("speech.voice_pack", raw)
    else:
        for lang, folder in raw.items():
            key = f"speech.voice_pack.{lang}"
            if lang not in LANGUAGES:
                raise ConfigError(file, key, folder, f"is not a language (known: {', '.join(LANGUAGES)})")
            if not isinstance(folder, str):
                raise ConfigError(file, key, folder, "must be the path of a voice pack folder")
            named[lang] = (key, folder)
    packs: dict[str, Path] = {}
    for wanted, (key, folder) in named.items():
        path = Path(folder).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.is_dir():
            raise ConfigError(file, key, folder, "is not a folder (a voice pack is a folder with voice.toml)")
        try:
            info = read_info(path)
        except ConfigError as exc:
            raise ConfigError(file, key, folder, f"is not a usable voice pack: {exc}") from None
        if wanted is not None and info.language != wanted:
            raise ConfigError(file, key, folder, f"is a {info.language!r} voice pack (its voice.toml says so)")
        packs[info.language] = path
    return packs


def check_device_config(cfg: DeviceConfig, file: str | Path) -> None:
    """Refuse combinations of keys that each pass alone: pin clashes, silent tones, sluggish audio.

    Called by `load_device_config`; every refusal names file, key and value.
    """
    audio, sensor, controls = cfg.audio, cfg.sensor, cfg.controls
    voice_pack_dirs(cfg.speech, file)
    if not audio.tone_rest_hz < audio.tone_target_hz:
        raise ConfigError(file, "audio.tone_rest_hz", audio.tone_rest_hz,
                          f"must be below audio.tone_target_hz ({audio.tone_target_hz:g}): the tone rises "
                          "with the squeeze")
    nyquist = audio.sample_rate / 2
    if not audio.tone_target_hz < nyquist:
        raise ConfigError(file, "audio.tone_target_hz", audio.tone_target_hz,
                          f"must be below half of audio.sample_rate ({nyquist:g} Hz), or it cannot be played")
    if audio.block_size / audio.sample_rate > MAX_BLOCK_SECONDS:
        raise ConfigError(file, "audio.block_size", audio.block_size,
                          f"is {1000 * audio.block_size / audio.sample_rate:.0f} ms at audio.sample_rate = "
                          f"{audio.sample_rate}; at most {1000 * MAX_BLOCK_SECONDS:.0f} ms, or the tone lags "
                          "the squeeze")
    if sensor.abdominal_channel is not None and sensor.abdominal_channel == sensor.channel:
        raise ConfigError(file, "sensor.abdominal_channel", sensor.abdominal_channel,
                          "is also sensor.channel; the abdominal sensor needs a channel of its own")
    stim = controls.stim_pin
    if stim in FORBIDDEN_STIM_PINS:
        raise ConfigError(file, "controls.stim_pin", stim,
                          f"GPIO{stim} {FORBIDDEN_STIM_PINS[stim]}; see docs/stimulation.md (default 22)")
    used: dict[int, str] = {}
    for pin, what in spi_pins(sensor).items():
        used[pin] = f"sensor.spi_port/spi_device: {what}"
    for key in ("stim_pin", "button_pin", "led_pin"):
        pin = getattr(controls, key)
        if pin is None:
            continue
        if pin in used:
            raise ConfigError(file, f"controls.{key}", pin, f"GPIO{pin} is already {used[pin]}; each pin has one use")
        used[pin] = f"controls.{key}"


def parse_device_config(data: dict[str, Any], file: str | Path) -> DeviceConfig:
    """The configuration from a TOML table (as read from `file`), field and cross checks done."""
    cfg = load_dataclass(DeviceConfig, {k: v for k, v in data.items() if k != "source"}, file)
    if "source" in data:
        raise ConfigError(file, "source", data["source"], "is not a configuration key (known: "
                          "audio, controls, language, sensor, speech, voice)")
    check_device_config(cfg, file)
    return dataclasses.replace(cfg, source=str(file))


def load_device_config(path: str | Path | None) -> DeviceConfig:
    """Load the device configuration; `None` means built-in defaults."""
    if path is None:
        return DeviceConfig()
    return parse_device_config(read_toml(path), path)


def numbers(obj: Any, prefix: str = "") -> Iterable[tuple[str, float, float | None, float | None]]:
    """Every number field of a configuration dataclass: (dotted key, value, min, max)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            yield from numbers(value, key)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield key, value, f.metadata.get("min"), f.metadata.get("max")
