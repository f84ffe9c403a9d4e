"""The clinic's side of lending the device: enroll a patient, status, export, wipe.

The device holds one patient at a time. Enrolment copies a validated prescription into
the state directory; wipe removes every trace of the patient and then proves it by a
byte scan of every file left for the patient code and the stored sample values.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from appliance.config import ConfigError
from appliance.patient.prescription import PRESCRIPTION_FILE, Prescription, load_prescription, prescription_path
from appliance.salvage import Salvaged, salvage
from appliance.store import UNREADABLE, StoreDamaged, diagnose

log = logging.getLogger(__name__)

DB_FILE = "appliance.db"
ENROLMENT_FILE = "enrolment.json"
EXPORT_DIR = "exports"
CLINIC_KEY_FILE = "clinic.key"  # appliance.clinic.usbstick: the paired clinic's key (a hash of it)
# Files that belong to the unit, not to the patient; wipe keeps them (and scans them).
# "cache" holds the rendered catalogue phrases (cache/speech): the same on every unit.
# appliance.db.reserve: appliance.store's preallocated reserve for a full disk (zeros, no patient data).
DEVICE_FILES = frozenset({CLINIC_KEY_FILE, "probe.toml", "models", "speech", "cache", "appliance.db.reserve"})
# Rendered speech, relative to the state directory: kept, except phrases that are not in
# the catalogues (those could carry patient words; see `_patient_speech`).
SPEECH_DIRS = ("speech", "cache/speech")
PRIVATE_MODE = 0o600  # patient data: the owner (the service user) only
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


class ClinicRefusal(Exception):
    """The clinic asked for something that would mix or lose patients' data."""


@dataclass(frozen=True)
class Enrolment:
    code: str
    since_utc: datetime

    def to_json(self) -> str:
        return json.dumps({"code": self.code, "since_utc": self.since_utc.isoformat()})


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / DB_FILE


def current_enrolment(state_dir: Path) -> Enrolment | None:
    path = Path(state_dir) / ENROLMENT_FILE
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
        return Enrolment(d["code"], datetime.fromisoformat(d["since_utc"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(path, "(file)", str(path), f"enrolment record unreadable ({exc}); wipe the device") from None


def current_prescription(state_dir: Path) -> Prescription | None:
    path = prescription_path(state_dir)
    return load_prescription(path) if path.exists() else None


def _sessions(state_dir: Path) -> list[dict]:
    path = db_path(state_dir)
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY id")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # no schema yet
            return []
        raise  # a row that cannot be read is not "no sessions" (status and export salvage it)
    finally:
        db.close()


def patient_files(state_dir: Path) -> list[Path]:
    """Every file in the state directory that is not the unit's own (see DEVICE_FILES)."""
    state_dir = Path(state_dir)
    if not state_dir.exists():
        return []
    out: list[Path] = []
    for entry in sorted(state_dir.iterdir()):
        if entry.name == "cache" and entry.is_dir() and not entry.is_symlink():
            # Only cache/speech is the unit's; anything else in the cache is the patient's.
            out.extend(p for p in sorted(entry.rglob("*"))
                       if (p.is_file() or p.is_symlink()) and not _in_speech_dir(state_dir, p))
            continue
        if entry.name in DEVICE_FILES:
            continue
        if entry.is_dir() and not entry.is_symlink():
            out.extend(p for p in sorted(entry.rglob("*")) if p.is_file() or p.is_symlink())
        else:
            out.append(entry)
    return out


def _in_speech_dir(state_dir: Path, path: Path) -> bool:
    rel = path.relative_to(state_dir).as_posix()
    return any(rel == d or rel.startswith(d + "/") for d in SPEECH_DIRS)


def enroll(state_dir: Path, prescription_file: Path, now: datetime | None = None) -> Enrolment:
    """Install a prescription; refuses while another patient's data is on the device.

    Enrolling the same code again replaces the prescription (a changed prescription
    during the lending period) and keeps the enrolment date.
    """
    state_dir = Path(state_dir)
    rx = load_prescription(prescription_file)  # ConfigError names file, key and value
    try:
        data = Path(prescription_file).read_bytes()  # the bytes just validated, installed as they are
    except OSError as exc:
        raise ClinicRefusal(f"{prescription_file}: cannot be read ({exc.strerror})") from None
    current = current_enrolment(state_dir)
    if current is not None and current.code != rx.code:
        raise ClinicRefusal(f"patient {current.code} is enrolled on this device since "
                            f"{current.since_utc:%Y-%m-%d}; export and wipe before enrolling {rx.code}")
    if current is None:
        if diagnose(db_path(state_dir)) is not None:
            raise ClinicRefusal(f"the database {db_path(state_dir)} is damaged and may hold another patient's "
                                "sessions; export and wipe before enrolling")
        try:
            _sessions(state_dir)
        except UNREADABLE:
            raise ClinicRefusal(f"the database {db_path(state_dir)} has rows that cannot be read and may hold "
                                "another patient's sessions; export and wipe before enrolling") from None
        others = {s["patient_code"] for s in _sessions(state_dir)} - {rx.code}
        if others or _sessions(state_dir):
            raise ClinicRefusal(f"the device holds {len(_sessions(state_dir))} sessions of an unenrolled patient; "
                                "wipe it before enrolling")
        leftovers = [p for p in patient_files(state_dir) if p.name not in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm")]
        if leftovers:
            raise ClinicRefusal(f"the device still holds patient files ({leftovers[0].name}, ...); "
                                "wipe it before enrolling")
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_private(prescription_path(state_dir), data)
    enrolment = current or Enrolment(rx.code, (now or datetime.now(UTC)).astimezone(UTC))
    _write_private(state_dir / ENROLMENT_FILE, enrolment.to_json().encode())
    log.info("patient enrolled")  # never the code: journald is outside the wipe's reach
    return enrolment


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically, readable by the state directory's owner (the service user) only.

    Run as root (`sudo appliance clinic enroll`), the file is handed to the owner and group
    of the state directory, so the service, which does not run as root, can read it.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        if os.geteuid() == 0:
            owner = path.parent.stat()
            os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
        os.fchmod(fh.fileno(), PRIVATE_MODE)  # whatever the umask
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Status:
    code: str | None
    since_utc: datetime | None
    sessions: int
    sessions_done: int
    repetitions: int
    patient_bytes: int
    last_session_utc: str | None
    database_damaged: str | None = None  # why the device cannot use its database, and what is readable

    def lines(self) -> list[str]:
        damaged = [f"DATABASE DAMAGED: {self.database_damaged}"] if self.database_damaged else []
        if self.code is None:
            head = ["no patient enrolled"]
            if self.sessions:
                head.append(f"but {self.sessions} sessions of an unenrolled patient are stored: wipe them")
            return head + damaged + [f"patient data: {self.patient_bytes / 1024:.0f} KiB"]
        return [
            f"patient: {self.code}",
            f"enrolled since: {self.since_utc:%Y-%m-%d %H:%M} UTC",
            *damaged,
            f"sessions: {self.sessions} ({self.sessions_done} completed), {self.repetitions} repetitions",
            f"last session: {self.last_session_utc or 'none yet'}",
            f"storage used by patient data: {self.patient_bytes / 1024:.0f} KiB",
        ]


def status(state_dir: Path) -> Status:
    """Who is enrolled and what is stored; a damaged database is read as far as it can be."""
    state_dir = Path(state_dir)
    enrolment = current_enrolment(state_dir)
    damage = diagnose(db_path(state_dir))
    reps = 0
    if damage is None:
        try:
            sessions = _sessions(state_dir)
            if sessions:
                db = sqlite3.connect(f"file:{db_path(state_dir)}?mode=ro", uri=True)
                try:
                    reps = db.execute("SELECT COUNT(*) FROM repetitions").fetchone()[0]
                finally:
                    db.close()
        except UNREADABLE as exc:  # pages intact, a value in them not (a flipped byte in a text)
            damage = StoreDamaged(db_path(state_dir), f"has rows that cannot be read ({exc})")
    if damage is not None:
        found = salvage(db_path(state_dir))
        sessions, reps = found.sessions, found.count("repetitions")
    size = sum(p.stat().st_size for p in patient_files(state_dir) + _patient_speech(state_dir) if p.is_file())
    return Status(
        code=enrolment.code if enrolment else None,
        since_utc=enrolment.since_utc if enrolment else None,
        sessions=len(sessions),
        sessions_done=sum(s["status"] == "done" for s in sessions),
        repetitions=reps,
        patient_bytes=size,
        last_session_utc=max(s["started_utc"] for s in sessions) if sessions else None,
        database_damaged=(f"{damage.reason}; {found.describe()} (`clinic export` writes them)"
                          if damage is not None else None),
    )


DAMAGE_NOTE_FILE = "database-damaged.txt"  # in an export made from a damaged database: what was recovered


def export(state_dir: Path, out_dir: Path, now: datetime | None = None, with_report: bool = True,
           lang: str | None = None) -> list[Path]:
    """Write the patient's data for the clinic into `out_dir/<code>-<date>/`; returns the files.

    From a damaged database the readable rows are exported (`appliance.store.salvage`) and
    DAMAGE_NOTE_FILE says in one sentence what was damaged and how much was recovered. The
    report and summary.csv are in `lang` (default: the prescription's language).
    """
    from appliance.clinic import report, tables
    from appliance.clinic.summary import summarise

    state_dir = Path(state_dir)
    enrolment = current_enrolment(state_dir)
    if enrolment is None:
        raise ClinicRefusal("no patient is enrolled on this device; nothing to export")
    damage = diagnose(db_path(state_dir))
    if damage is None:
        try:
            if not db_path(state_dir).exists() or not _sessions(state_dir):
                raise ClinicRefusal(f"patient {enrolment.code} has no stored sessions yet; nothing to export")
        except UNREADABLE as exc:  # pages intact, a value in them not (a flipped byte in a text)
            damage = StoreDamaged(db_path(state_dir), f"has rows that cannot be read ({exc})")
    found = salvage(db_path(state_dir)) if damage is not None else None
    if found is not None and not (found.sessions or found.repetitions):
        raise ClinicRefusal(f"the database {db_path(state_dir)} {damage.reason if damage else 'is damaged'}, "
                            f"and no session of patient "
                            f"{enrolment.code} could be read from it; nothing to export (the file is kept)")
    out_dir = Path(out_dir)
    if out_dir.resolve().is_relative_to(state_dir.resolve()):
        raise ClinicRefusal("export into the device's own state directory is refused (wipe would erase it)")
    now = now or datetime.now(UTC)
    target = out_dir / f"{enrolment.code}-{now:%Y%m%d-%H%M}"
    target.mkdir(parents=True, exist_ok=True)
    rx = current_prescription(state_dir)
    enrolled = enrolment.since_utc.astimezone(rx.tz).date() if rx else enrolment.since_utc.date()
    if found is None:
        try:
            summary = summarise(db_path(state_dir), enrolment.code, rx, lang, enrolled)  # read once for both
            files = tables.write_tables(db_path(state_dir), target, enrolment.code, rx, summary=summary)
            shutil.copyfile(prescription_path(state_dir), target / PRESCRIPTION_FILE)
            files.append(target / PRESCRIPTION_FILE)
            if with_report:
                files.extend(report.write_report(db_path(state_dir), target, enrolment.code, rx, summary=summary))
            return files
        except (*UNREADABLE, ValueError, KeyError, TypeError) as exc:
            # Pages intact, a value in them not (a flipped byte in a text or a timestamp): the
            # rows that fit the schema are exported as from any damaged file.
            damage = StoreDamaged(db_path(state_dir), f"has rows that cannot be read or used ({exc})")
            found = salvage(db_path(state_dir))
    reason = damage.reason if damage else "is damaged"
    return _export_salvaged(found, reason, target, enrolment.code, rx, with_report, prescription_path(state_dir), lang)


def _export_salvaged(found: Salvaged, reason: str, target: Path, code: str, rx: Prescription | None, with_report: bool,
                     rx_file: Path, lang: str | None = None) -> list[Path]:
    """The export of what a damaged database still holds; the tables come out whatever the rows are."""
    import csv
    import tempfile

    from appliance.clinic import report, tables

    note = (f"The database was damaged ({reason}); {found.describe()} from it, and this export holds "
            f"those {found.count('repetitions')} repetitions.")
    log.warning("export from a damaged database: %s", found.describe())
    with tempfile.TemporaryDirectory(prefix="appliance-export-") as tmp:
        source = found.write_database(Path(tmp) / "salvaged.db")
        try:
            files = tables.write_tables(source, target, code, rx, lang)
        except Exception as exc:  # noqa: BLE001 - damaged rows the tables cannot shape: write them raw
            log.warning("salvaged rows written as they are (%s)", exc)
            files = []
            for table, name in (("sessions", "sessions.csv"), ("repetitions", "repetitions.csv")):
                rows = found.rows.get(table, ())
                with (target / name).open("w", newline="") as fh:
                    w = csv.writer(fh)
                    if rows:
                        w.writerow(rows[0].keys())
                        w.writerows(r.values() for r in rows)
                files.append(target / name)
        if rx_file.is_file():
            shutil.copyfile(rx_file, target / PRESCRIPTION_FILE)
            files.append(target / PRESCRIPTION_FILE)
        if with_report:
            try:
                files.extend(report.write_report(source, target, code, rx, lang))
            except Exception as exc:  # noqa: BLE001 - the tables are what counts from a damaged file
                log.warning("no report from the salvaged rows: %s", exc)
                note += f" No report could be drawn from them ({type(exc).__name__})."
    (target / DAMAGE_NOTE_FILE).write_text(note + "\n", encoding="utf-8")
    files.append(target / DAMAGE_NOTE_FILE)
    return files


# --- Wipe -----------------------------------------------------------------------------------

@dataclass
class Fingerprints:
    """What a trace of the patient looks like in bytes."""

    texts: list[bytes] = field(default_factory=list)  # matched case-insensitively
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))  # stored REALs (cmH2O, %MVC)

    def describe(self) -> str:
        return (f"{len(self.texts)} text patterns (patient code) and {len(self.values)} stored sample "
                "values as 8-byte doubles in both byte orders at every offset")


@dataclass(frozen=True)
class Finding:
    path: Path
    what: str
    offset: int


@dataclass
class WipeReport:
    removed: list[Path] = field(default_factory=list)
    removed_bytes: int = 0
    kept: list[Path] = field(default_factory=list)
    checked_files: int = 0
    checked_bytes: int = 0
    fingerprints: str = ""
    db_rows_deleted: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        out = [
            f"database rows deleted with secure_delete, then VACUUM: {self.db_rows_deleted}",
            f"files overwritten and removed: {len(self.removed)} ({self.removed_bytes / 1024:.0f} KiB)",
            f"device files kept: {', '.join(sorted({p.name for p in self.kept})) or 'none'}",
            f"checked {self.checked_files} files, {self.checked_bytes} bytes (including the database's "
            f"free pages before removal) for {self.fingerprints}",
        ]
        if self.clean:
            out.append("found no trace of the patient")
        else:
            out += [f"TRACE FOUND: {f.what} in {f.path} at byte {f.offset}" for f in self.findings[:20]]
        return out


def fingerprints(state_dir: Path, extra_codes: Iterable[str] = ()) -> Fingerprints:
    """The patient code(s) and the stored sample values, read before anything is removed."""
    state_dir = Path(state_dir)
    codes = set(extra_codes)
    enrolment = current_enrolment(state_dir)
    if enrolment:
        codes.add(enrolment.code)
    values: set[float] = set()
    path = db_path(state_dir)
    if path.is_file():
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            codes |= {r[0] for r in db.execute("SELECT DISTINCT patient_code FROM sessions") if r[0]}
            for sql in ("SELECT DISTINCT cmh2o FROM samples", "SELECT DISTINCT pct FROM samples",
                        "SELECT DISTINCT peak_cmh2o FROM repetitions", "SELECT DISTINCT mvc_cmh2o FROM sessions"):
                values |= {float(r[0]) for r in db.execute(sql) if r[0] is not None}
        except UNREADABLE:  # a damaged file: what can still be read of it must not survive either
            found = salvage(path)
            codes |= {s["patient_code"] for s in found.sessions if s.get("patient_code")}
            for table, column in (("samples", "cmh2o"), ("samples", "pct"), ("repetitions", "peak_cmh2o"),
                                  ("sessions", "mvc_cmh2o")):
                values |= {float(r[column]) for r in found.rows.get(table, ()) if r.get(column) is not None}
        finally:
            db.close()
    # A whole number is stored by SQLite as an integer and is too common to be a trace.
    distinctive = np.array(sorted(v for v in values if v != round(v)), dtype=np.float64)
    return Fingerprints([c.encode() for c in sorted(codes)], distinctive)


def scan_file(path: Path, fp: Fingerprints, limit: int = 20) -> list[Finding]:
    data = path.read_bytes()
    found: list[Finding] = []
    low = data.lower()
    for text in fp.texts:
        at = low.find(text.lower())
        if at >= 0:
            found.append(Finding(path, f"patient code {text.decode()!r}", at))
    if len(fp.values) and len(data) >= 8:
        for dtype in (">f8", "<f8"):
            for shift in range(8):
                n = (len(data) - shift) // 8
                if n <= 0:
                    continue
                window = np.frombuffer(data, dtype=dtype, count=n, offset=shift)
                hits = np.flatnonzero(np.isin(window, fp.values))
                for h in hits[:limit]:
                    found.append(Finding(path, f"stored value {window[h]!r} ({dtype})", shift + 8 * int(h)))
                if len(found) >= limit:
                    return found
    return found


def scan(paths: Iterable[Path], fp: Fingerprints, report: WipeReport) -> None:
    for path in paths:
        if not path.is_file() or path.is_symlink():
            continue
        report.checked_files += 1
        report.checked_bytes += path.stat().st_size
        report.findings.extend(scan_file(path, fp))


def _clear_database(path: Path) -> int:
    """Delete every row with secure_delete on, so freed pages are zeroed, then VACUUM."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA secure_delete=ON")
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                           "AND name NOT LIKE 'sqlite_%'")]
        deleted = 0
        db.execute("BEGIN")
        for table in tables:
            deleted += db.execute(f'DELETE FROM "{table}"').rowcount  # noqa: S608 - names from the schema
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted
    finally:
        db.close()


def _shred(path: Path) -> int:
    """Overwrite a file with zeros before unlinking it; returns its size.

    On flash with wear levelling the old blocks may survive in the card's spare area;
    overwriting still keeps the data out of reach of anything reading the file system.
    """
    if path.is_symlink() or not path.is_file():
        path.unlink(missing_ok=True)
        return 0
    size = path.stat().st_size
    with path.open("r+b") as fh:
        remaining = size
        block = b"\0" * 65536
        while remaining > 0:
            n = min(remaining, len(block))
            fh.write(block[:n])
            remaining -= n
        fh.flush()
        os.fsync(fh.fileno())
    path.unlink()
    return size


def _catalogue_texts() -> set[str]:
    from appliance.voice.phrases import LANGUAGES, Catalogue
    from appliance.voice.speech import marked_text

    texts: set[str] = set()
    for lang in LANGUAGES:
        cat = Catalogue.load(lang)
        # marked_text is what SpeechRenderer stores as a cached rendering's "text"
        texts |= {cat.raw(k) for k in cat.keys()} | {cat.text(k) for k in cat.keys()}
        texts |= {marked_text(cat, k) for k in cat.keys()}
    return texts


def _patient_speech(state_dir: Path) -> list[Path]:
    """Cached speech whose text is not a catalogue phrase could carry patient words.

    The rendered catalogue phrases (the phrase cache, STATE_DIR/cache/speech) are the
    same on every unit and stay; a rendering without readable metadata, or whose text is
    not in a catalogue, goes. Leftover temporary files of an interrupted rendering go too.
    """
    known: set[str] | None = None
    out: list[Path] = []
    for rel in SPEECH_DIRS:
        speech = Path(state_dir) / rel
        if not speech.is_dir() or speech.is_symlink():
            continue
        for path in sorted(speech.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            if path.suffix == ".wav" and path.with_suffix(".json").is_file():
                continue  # decided with its metadata
            if path.suffix != ".json" or path.is_symlink():
                out.append(path)  # a WAV without metadata, a .tmp, a link: nothing vouches for it
                continue
            if known is None:
                known = _catalogue_texts()
            try:
                text = json.loads(path.read_text(encoding="utf-8")).get("text")
            except (OSError, ValueError, AttributeError):
                text = None
            if text not in known:
                out += [path, path.with_suffix(".wav")]
    return [p for p in out if p.exists() or p.is_symlink()]


def _remove_empty_dirs(state_dir: Path) -> None:
    """Remove the patient's (now empty) folders; the unit's own folders stay."""
    if not state_dir.exists():
        return
    for entry in sorted(state_dir.rglob("*"), reverse=True):
        if not entry.is_dir() or entry.is_symlink():
            continue
        parts = entry.relative_to(state_dir).parts
        if parts[0] in DEVICE_FILES and (parts[0] != "cache" or len(parts) == 1 or parts[1] == "speech"):
            continue  # the unit's folders (models, speech, cache/speech)
        try:
            entry.rmdir()
        except OSError:
            pass  # not empty: what is left is scanned and reported


def wipe(state_dir: Path) -> WipeReport:
    """Remove every trace of the patient from the state directory, then prove it by a scan."""
    state_dir = Path(state_dir)
    report = WipeReport()
    fp = fingerprints(state_dir)
    report.fingerprints = fp.describe()
    db = db_path(state_dir)
    # A damaged database cannot be cleared row by row; it is shredded whole with the other files.
    if db.is_file() and diagnose(db) is None:
        report.db_rows_deleted = _clear_database(db)
        # The database as it is now, free pages included, must already be clean.
        scan([p for p in (Path(f"{db}{s}") for s in DB_SUFFIXES) if p.exists()], fp, report)
    for path in patient_files(state_dir) + _patient_speech(state_dir):
        report.removed_bytes += _shred(path)
        report.removed.append(path)
    _remove_empty_dirs(state_dir)
    remaining = [p for p in sorted(state_dir.rglob("*"))] if state_dir.exists() else []
    report.kept = [p for p in remaining if p.is_file()]
    scan(remaining, fp, report)
    log.info("wipe finished: %d files removed, clean=%s", len(report.removed), report.clean)
    return report
