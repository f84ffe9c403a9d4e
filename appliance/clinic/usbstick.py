"""The clinic's USB stick: the only interface the clinic needs, since the device has no screen.

At install the device is paired with the clinic's key (only its SHA-256 is kept). A stick
that carries that key and a `prescription.toml` enrolls the patient; one with the key and
no prescription receives the export; a stick without the key gets nothing and changes
nothing. Mounting is systemd/udev's job (systemd/appliance-stick@.service); this module
only sees a directory, so a plain folder stands in for the stick in tests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from appliance.clinic.enrolment import CLINIC_KEY_FILE, ClinicRefusal, enroll, export
from appliance.config import ConfigError
from appliance.patient.prescription import PRESCRIPTION_FILE

log = logging.getLogger(__name__)

STICK_KEY_FILE = "appliance-clinic.key"  # on the stick: the clinic's secret key (hex)
STICK_EXPORT_DIR = "appliance-export"
KEY_BYTES = 32


class StickAction(Enum):
    ENROLLED = "enrolled"
    EXPORTED = "exported"
    REFUSED = "refused"  # a clinic stick whose request cannot be done (other patient, bad file)
    IGNORED = "ignored"  # not our clinic's stick


@dataclass(frozen=True)
class StickOutcome:
    action: StickAction
    phrase: str | None  # what the device says (catalogue key)
    detail: str  # for the log and the CLI; never the patient code


def _digest(key_text: str) -> str:
    return hashlib.sha256(key_text.strip().encode()).hexdigest()


def pair(state_dir: Path, stick: Path) -> str:
    """Pair the device with the clinic key on `stick` (writing a new key there if it has none)."""
    state_dir, stick = Path(state_dir), Path(stick)
    key_path = stick / STICK_KEY_FILE
    if not key_path.exists():
        key_path.write_text(secrets.token_hex(KEY_BYTES) + "\n")
        made = "a new clinic key was written to the stick; keep that stick (or copies of its key file) at the clinic"
    else:
        made = "the stick's clinic key was used"
    key = key_path.read_text()
    if len(key.strip()) < 32:
        raise ClinicRefusal(f"{key_path} holds no usable key (at least 32 characters)")
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / CLINIC_KEY_FILE
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_digest(key) + "\n")
    return f"paired: {made}; the device keeps only the key's SHA-256 in {target}"


def carries_clinic_key(stick: Path, state_dir: Path) -> bool:
    paired = Path(state_dir) / CLINIC_KEY_FILE
    key_path = Path(stick) / STICK_KEY_FILE
    if not paired.exists() or not key_path.is_file() or key_path.stat().st_size > 4096:
        return False
    try:
        return hmac.compare_digest(_digest(key_path.read_text()), paired.read_text().strip())
    except (OSError, UnicodeDecodeError):
        return False


def handle_stick(stick: Path, state_dir: Path, now: datetime | None = None) -> StickOutcome:
    """Do what a plugged-in stick asks, if it is the clinic's. Never raises for a bad stick."""
    stick, state_dir = Path(stick), Path(state_dir)
    if not carries_clinic_key(stick, state_dir):
        log.info("stick without the clinic key: ignored")
        return StickOutcome(StickAction.IGNORED, "clinic.stick_unknown", "no matching clinic key")
    rx_file = stick / PRESCRIPTION_FILE
    if rx_file.is_file():
        try:
            enroll(state_dir, rx_file, now)
        except ConfigError as exc:
            return StickOutcome(StickAction.REFUSED, "clinic.stick_invalid", f"{exc.key}: {exc.reason}")
        except ClinicRefusal:
            return StickOutcome(StickAction.REFUSED, "clinic.enroll_refused", "another patient's data is on the device")
        return StickOutcome(StickAction.ENROLLED, "clinic.enrolled", "prescription installed")
    try:
        files = export(state_dir, stick / STICK_EXPORT_DIR, now)
    except ClinicRefusal:
        return StickOutcome(StickAction.REFUSED, "clinic.nothing_to_export", "no enrolled patient or no sessions")
    for f in files:  # a stick pulled right after the phrase must still hold complete files
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    return StickOutcome(StickAction.EXPORTED, "clinic.exported", f"{len(files)} files written")
