"""The clinic's USB stick: the only interface the clinic needs, since the device has no screen.

At install the device is paired with the clinic's key (only its SHA-256 is kept). A stick
that carries that key and a `prescription.toml` enrolls the patient; one with the key and
no prescription receives the export; a stick without the key gets nothing and changes
nothing. Mounting is systemd/udev's job (systemd/appliance-stick@.service); this module
only sees a directory, so a plain folder stands in for the stick in tests.

Nothing on the stick is trusted: no symlink on it is followed, files are read with a size
bound, and an export appears on it only complete (written to a hidden folder, checked,
then renamed into place), or not at all.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import stat
import tempfile
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
MAX_KEY_BYTES = 4096
MAX_PRESCRIPTION_BYTES = 64 * 1024  # a prescription is a page of TOML; never read more than this
PARTIAL_PREFIX = ".partial-"  # an export being written; renamed into place only when complete


class StickAction(Enum):
    ENROLLED = "enrolled"
    EXPORTED = "exported"
    REFUSED = "refused"  # a clinic stick whose request cannot be done (other patient, bad file)
    FAILED = "failed"  # the export could not be written to the stick (full, read-only): nothing left on it
    IGNORED = "ignored"  # not our clinic's stick


@dataclass(frozen=True)
class StickOutcome:
    action: StickAction
    phrase: str | None  # what the device says (catalogue key)
    detail: str  # for the log and the CLI; never the patient code


def _digest(key_text: str) -> str:
    # A key file saved by a Windows editor starts with a byte-order mark: not part of the key.
    return hashlib.sha256(key_text.lstrip("\ufeff").strip().encode()).hexdigest()


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


class StickFileError(Exception):
    """A file on the stick that is not to be read: a symlink, not a regular file, too large."""


def read_stick_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file on the stick, at most `limit`; never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StickFileError(f"{path.name} is a symbolic link (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StickFileError(f"{path.name} is not a regular file")
        if st.st_size > limit:
            raise StickFileError(f"{path.name} is larger than {limit // 1024} KiB ({st.st_size} bytes)")
        data = os.read(fd, limit + 1)
        if len(data) > limit:  # grew while read
            raise StickFileError(f"{path.name} is larger than {limit // 1024} KiB")
        return data
    finally:
        os.close(fd)


def carries_clinic_key(stick: Path, state_dir: Path) -> bool:
    paired = Path(state_dir) / CLINIC_KEY_FILE
    if not paired.exists():
        return False
    try:
        key = read_stick_file(Path(stick) / STICK_KEY_FILE, MAX_KEY_BYTES).decode("utf-8")
        return hmac.compare_digest(_digest(key), paired.read_text().strip())
    except (OSError, UnicodeDecodeError, StickFileError):
        return False


def _present(path: Path) -> os.stat_result | None:
    """lstat, or None when nothing is there (a dangling symlink is there)."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _enroll_from_stick(stick: Path, state_dir: Path, now: datetime | None) -> StickOutcome:
    rx_file = stick / PRESCRIPTION_FILE
    try:
        data = read_stick_file(rx_file, MAX_PRESCRIPTION_BYTES)
    except StickFileError as exc:
        return StickOutcome(StickAction.REFUSED, "clinic.stick_invalid", f"{PRESCRIPTION_FILE}: {exc}")
    # Validated and installed from a private copy: what is checked is what is installed.
    with tempfile.TemporaryDirectory(prefix="appliance-stick-") as tmp:
        copy = Path(tmp) / PRESCRIPTION_FILE
        copy.write_bytes(data)
        try:
            enroll(state_dir, copy, now)
        except ConfigError as exc:
            return StickOutcome(StickAction.REFUSED, "clinic.stick_invalid", f"{exc.key}: {exc.reason}")
        except RecursionError:
            return StickOutcome(StickAction.REFUSED, "clinic.stick_invalid", "(syntax): nested too deeply")
        except ClinicRefusal:
            return StickOutcome(StickAction.REFUSED, "clinic.enroll_refused", "another patient's data is on the device")
    return StickOutcome(StickAction.ENROLLED, "clinic.enrolled", "prescription installed")


def _copy_to_stick(src: Path, dst: Path) -> None:
    """Copy one file onto the stick (never over anything, never through a link), synced and size-checked."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with src.open("rb") as fh:
            while block := fh.read(1 << 16):
                view = memoryview(block)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
        os.fsync(fd)
        written, expected = os.fstat(fd).st_size, src.stat().st_size
    finally:
        os.close(fd)
    if written != expected:
        raise OSError(errno.EIO, f"{dst.name} has {written} of {expected} bytes on the stick")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # vfat may refuse a directory fsync; the files themselves are synced
    finally:
        os.close(fd)


def _remove_partial(path: Path) -> None:
    try:
        shutil.rmtree(path)  # rmtree does not follow symlinks inside the folder
    except OSError as exc:
        log.error("cannot remove the incomplete export %s from the stick: %s", path, exc)


def _export_to_stick(stick: Path, state_dir: Path, now: datetime | None) -> StickOutcome:
    export_dir = stick / STICK_EXPORT_DIR
    there = _present(export_dir)
    if there is not None and not stat.S_ISDIR(there.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(there.st_mode) else "a file, not a folder"
        return StickOutcome(StickAction.REFUSED, "clinic.export_failed", f"{STICK_EXPORT_DIR} on the stick is {kind}")
    with tempfile.TemporaryDirectory(prefix="appliance-export-") as local:
        try:
            files = export(state_dir, Path(local), now)
        except ClinicRefusal:
            return StickOutcome(StickAction.REFUSED, "clinic.nothing_to_export", "no enrolled patient or no sessions")
        except OSError as exc:  # the device's own disk, not the stick: nothing was written to the stick
            log.error("the export could not be prepared on the device: %s", exc)
            return StickOutcome(StickAction.FAILED, "clinic.export_failed",
                                f"export not prepared on the device ({exc.strerror or exc}); the stick is unchanged")
        folder = files[0].parent
        partial: Path | None = None
        try:
            if there is None:
                os.mkdir(export_dir, 0o700)
            partial = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=export_dir))
            for f in files:
                _copy_to_stick(f, partial / f.name)
            _fsync_dir(partial)
            final = export_dir / folder.name
            n = 1
            while _present(final) is not None:  # an earlier export in the same minute stays
                n += 1
                final = export_dir / f"{folder.name}-{n}"
            os.rename(partial, final)
            partial = None
            _fsync_dir(export_dir)
        except OSError as exc:
            if partial is not None:
                _remove_partial(partial)
            reason = {errno.ENOSPC: "the stick is full", errno.EROFS: "the stick is read-only",
                      errno.EACCES: "the stick cannot be written"}.get(exc.errno or 0, exc.strerror or str(exc))
            log.error("export to the stick failed: %s (%s)", reason, exc)
            return StickOutcome(StickAction.FAILED, "clinic.export_failed",
                                f"export not written: {reason}; nothing incomplete was left on the stick")
    return StickOutcome(StickAction.EXPORTED, "clinic.exported", f"{len(files)} files written")


def handle_stick(stick: Path, state_dir: Path, now: datetime | None = None) -> StickOutcome:
    """Do what a plugged-in stick asks, if it is the clinic's. Never raises for a bad stick."""
    stick, state_dir = Path(stick), Path(state_dir)
    if not carries_clinic_key(stick, state_dir):
        log.info("stick without the clinic key: ignored")
        return StickOutcome(StickAction.IGNORED, "clinic.stick_unknown", "no matching clinic key")
    enrolling = False
    try:
        enrolling = _present(stick / PRESCRIPTION_FILE) is not None
        return _enroll_from_stick(stick, state_dir, now) if enrolling else _export_to_stick(stick, state_dir, now)
    except OSError as exc:  # the stick was pulled, the device's own disk failed, ...
        log.error("stick not handled: %s", exc)
        return StickOutcome(StickAction.FAILED, "clinic.stick_invalid" if enrolling else "clinic.export_failed",
                            f"not handled: {exc.strerror or exc}")
