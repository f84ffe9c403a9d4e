"""What every sub-command shares: `--config`, `--state-dir`, and the one-sentence error."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.config import DEFAULT_STATE_DIR, DeviceConfig, load_device_config


class UserError(Exception):
    """A refusal the person at the command line can act on; printed as one sentence."""


def add_common_args(parser: argparse.ArgumentParser, state_dir_default: Path | None = None) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="device configuration TOML (default: built-in defaults; the service uses "
        "/etc/appliance/appliance.toml; see examples/appliance.toml)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=state_dir_default or DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where patient data lives (default: {state_dir_default or DEFAULT_STATE_DIR})",
    )


def device_config(args: argparse.Namespace) -> DeviceConfig:
    return load_device_config(getattr(args, "config", None))


def check_dir(path: Path, flag: str) -> None:
    """`path` as a directory to write into (made if missing), or one sentence naming `flag`."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create the directory ({exc.strerror or exc})") from None


def check_programme(name: str) -> None:
    """A shipped programme's name or a programme TOML file that loads, else one sentence."""
    from appliance.coach.programme import PROGRAMME_DIR, load_programme

    if Path(name).suffix != ".toml" and not (PROGRAMME_DIR / f"{name}.toml").exists():
        shipped = ", ".join(sorted(p.stem for p in PROGRAMME_DIR.glob("*.toml")))
        raise UserError(f"--programme {name}: no such programme (shipped: {shipped}; or give a .toml file)")
    load_programme(name)  # a ConfigError names the file, key and value
