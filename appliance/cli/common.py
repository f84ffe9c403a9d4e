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
